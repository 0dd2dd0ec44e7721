"""The GPU worker group of a Kubernetes job, held only while segmentation runs.

``imaxt submit --backend kubernetes --gpu-workers N`` creates the job's GPU
``DaskWorkerGroup`` with 0 replicas and tells the job runner its name and ``N``
(:data:`GROUP_ENV`, :data:`WORKERS_ENV`; :func:`imaxt_pipeline.service.k8s.job_objects`).
``imaxt process`` then installs :func:`gpu_step_scope` as the pipeline's step scope
(:data:`imaxt_pipeline.pipeline.STEP_SCOPE`): when the ``segment`` step starts the group is
scaled to ``min(N, segmentation blocks)`` (no GPU idles for want of work), and when it ends,
failed or not, back to 0, so a sample holds its GPU nodes for segmentation only.
Scaling uses the operator's scale subresource through ``kr8s`` (installed with
dask-kubernetes); the job's service account needs ``patch`` on ``daskworkergroups/scale``
(``deploy/rbac.yaml``, ServiceAccount ``imaxt-job``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import ConfigError

__all__ = ["GROUP_ENV", "NAMESPACE_ENV", "WORKERS_ENV", "gpu_step_scope", "segmentation_blocks", "step_scope_from_env"]

log = logging.getLogger(__name__)

GROUP_ENV = "IMAXT_GPU_WORKER_GROUP"  #: name of the job's GPU DaskWorkerGroup
WORKERS_ENV = "IMAXT_GPU_WORKERS"  #: most GPU workers the job may start
NAMESPACE_ENV = "IMAXT_NAMESPACE"  #: namespace of the job and its group

#: ``scale(replicas)`` of one worker group.
Scaler = Callable[[int], None]
StepScope = Callable[[str, Any, Any], contextlib.AbstractContextManager[None]]


def segmentation_blocks(ctx: Any, params: Any) -> int:
    """Blocks the segment step will cut: planes x ``ceil(H / block) * ceil(W / block)`` of its image."""
    from ..io import results

    shape = ctx.output.open_image(results.source_image(ctx.output)).shape
    per_plane = math.ceil(shape[-2] / params.block) * math.ceil(shape[-1] / params.block)
    return max(1, len(ctx.planes()) * per_plane)


def gpu_step_scope(scale: Scaler, max_workers: int) -> StepScope:
    """A pipeline step scope that holds ``min(max_workers, blocks)`` GPU workers during ``segment`` only."""

    @contextlib.contextmanager
    def scope(name: str, params: Any, ctx: Any) -> Iterator[None]:
        if name != "segment" or not getattr(params, "gpu_resource", False):
            yield
            return
        n = min(max_workers, segmentation_blocks(ctx, params))
        log.info("segment: starting %d GPU worker(s)", n)
        scale(n)
        try:
            yield
        finally:
            log.info("segment: releasing the GPU workers")
            scale(0)

    return scope


def kr8s_scaler(group: str, namespace: str) -> Scaler:  # pragma: no cover - needs a cluster
    """Scale DaskWorkerGroup ``group`` through the Kubernetes API (in-cluster credentials)."""

    def scale(replicas: int) -> None:
        from kr8s.objects import new_class

        kind = new_class(
            "DaskWorkerGroup", "kubernetes.dask.org/v1", namespaced=True, scalable=True, scalable_spec="worker.replicas"
        )
        try:
            kind.get(group, namespace=namespace).scale(replicas)
        except Exception as exc:  # kr8s raises its own ServerError/NotFoundError, or a connection error
            raise ConfigError(
                f"cannot scale DaskWorkerGroup {namespace}/{group} to {replicas}: {exc} "
                "(the job's service account needs patch on daskworkergroups/scale: deploy/rbac.yaml, imaxt-job)"
            ) from None

    return scale


def step_scope_from_env(env: Mapping[str, str] | None = None, *, scaler: Any = None) -> StepScope | None:
    """The GPU step scope the job's environment asks for (:data:`GROUP_ENV`), else ``None``.

    ``scaler(group, namespace)`` builds the scale function (default: :func:`kr8s_scaler`).
    """
    env = os.environ if env is None else env
    group = env.get(GROUP_ENV)
    if not group:
        return None
    try:
        workers = int(env.get(WORKERS_ENV, "1"))
    except ValueError:
        raise ConfigError(f"{WORKERS_ENV}={env.get(WORKERS_ENV)!r} is not a number of workers") from None
    return gpu_step_scope((scaler or kr8s_scaler)(group, env.get(NAMESPACE_ENV, "default")), workers)
