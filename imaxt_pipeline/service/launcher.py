"""What the watcher does with a landed sample, and where it runs.

An *action* is called as ``action(job, cancel)`` and raises on failure:

* :class:`PipelineAction` (default): upload the raw sample to its raw Zarr
  store, then run the pipeline into ``<output prefix>/<sample>.zarr``, through a
  *launcher*: ``local`` (a LocalCluster in this process), ``dask`` (an
  existing scheduler) or ``kubernetes`` (a DaskJob created through the
  dask-kubernetes operator, watched until it succeeds or fails).
* :class:`CommandAction`: any command line, formatted with the job's fields
  (``{sample}``, ``{sample_url}``, ``{output_url}``, ``{raw_store_url}``,
  ``{attempt}``); a non-zero exit status is a failure.

``cancel`` is set when the watcher loses the sample's lease; a command is then
terminated, a Kubernetes job deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from ..errors import ImaxtError
from ..io.storage import resolve_storage_options
from .k8s import KubeSettings, job_objects

if TYPE_CHECKING:
    from ..config import RunConfig


class RunFailed(ImaxtError, RuntimeError):
    """A sample's run ended without success; the message says why."""


@dataclass(frozen=True)
class Job:
    """One run of one sample."""

    sample: str
    sample_url: str
    output_url: str
    raw_store_url: str
    attempt: int = 1


class Action(Protocol):
    def __call__(self, job: Job, cancel: threading.Event) -> None: ...


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGKILL when the watcher dies, so no orphan keeps running."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setsid()


class CommandAction:
    """Run a command template per sample, e.g. ``"imaxt process {sample_url} --out {output_url}"``."""

    def __init__(self, template: str, *, env: dict[str, str] | None = None) -> None:
        self.template = template
        self.env = env

    def argv(self, job: Job) -> list[str]:
        fields = {
            "sample": job.sample,
            "sample_url": job.sample_url,
            "output_url": job.output_url,
            "raw_store_url": job.raw_store_url,
            "attempt": job.attempt,
        }
        return [part.format(**fields) for part in shlex.split(self.template)]

    def __call__(self, job: Job, cancel: threading.Event) -> None:
        argv = self.argv(job)
        env = {**os.environ, **(self.env or {})}
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read() if proc.stdout else b""), daemon=True)
        reader.start()
        try:
            while proc.poll() is None:
                if cancel.wait(0.2):
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                    reader.join(5)
                    raise RunFailed(f"{job.sample}: cancelled (lease lost)")
            reader.join(5)
        finally:
            if proc.stdout is not None and not reader.is_alive():  # once read to the end, the pipe is done
                proc.stdout.close()
        if proc.returncode != 0:
            tail = b"".join(out).decode(errors="replace").strip().splitlines()[-5:]
            raise RunFailed(f"command exited with status {proc.returncode}: " + " | ".join(tail))


def load_run_config(
    config_path: str | Path | None = None, *, storage_options: Mapping[str, Any] | None = None, **overrides: Any
) -> RunConfig:
    """The run configuration of a job: the file, ``overrides``, and storage options combined.

    ``storage_options`` (from the command line or the watcher) are merged over the file's by
    :func:`~imaxt_pipeline.io.storage.resolve_storage_options`, like everywhere else.
    """
    from ..config import load_config

    config = load_config(config_path, **overrides)
    merged = resolve_storage_options(config=config.storage_options, options=storage_options)
    return config.model_copy(update={"storage_options": merged})


def process_sample(
    raw_url: str,
    raw_store_url: str,
    output_url: str,
    *,
    config_path: str | Path | None = None,
    storage_options: Mapping[str, Any] | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    client: Any = None,
) -> Any:
    """Upload ``raw_url`` to ``raw_store_url`` (resumable) and run the pipeline into ``output_url``."""
    from ..io.upload import upload
    from ..pipeline import run_pipeline

    config = load_run_config(
        config_path,
        storage_options=storage_options,
        input_url=raw_store_url,
        output_url=output_url,
        **{"cluster.scheduler": scheduler, "cluster.n_workers": n_workers},
    )
    # The config file may carry the storage options (the Kubernetes ConfigMap does).
    upload(raw_url, raw_store_url, storage_options=config.storage_options or None, progress=False)
    return run_pipeline(config, client=client)


class PipelineAction:
    """Default action: upload + pipeline, on the chosen backend.

    Parameters
    ----------
    backend : {"local", "dask", "kubernetes"}
    scheduler : str, optional
        Scheduler address for ``dask``.
    n_workers : int, optional
        LocalCluster size for ``local``.
    kube : KubeSettings, optional
        Image, namespace, workers, GPU group for ``kubernetes``.
    """

    def __init__(
        self,
        backend: str = "local",
        *,
        config_path: str | Path | None = None,
        storage_options: Mapping[str, Any] | None = None,
        scheduler: str | None = None,
        n_workers: int | None = None,
        kube: KubeSettings | None = None,
        poll_s: float = 10.0,
    ) -> None:
        if backend not in ("local", "dask", "kubernetes"):
            raise ValueError(f"backend must be local, dask or kubernetes, got {backend!r}")
        if backend == "dask" and not scheduler:
            raise ValueError("backend 'dask' needs a scheduler address")
        self.backend = backend
        self.config_path = config_path
        self.storage_options = dict(storage_options or {})
        self.scheduler = scheduler
        self.n_workers = n_workers
        self.kube = kube or KubeSettings()
        self.poll_s = poll_s

    def config_yaml(self, job: Job) -> str:
        """The run configuration shipped to Kubernetes in the ConfigMap."""
        cfg = load_run_config(
            self.config_path,
            storage_options=self.storage_options,
            input_url=job.raw_store_url,
            output_url=job.output_url,
        )
        return yaml.safe_dump(cfg.model_dump(mode="json", exclude={"cluster"}, exclude_defaults=True), sort_keys=False)

    def objects(self, job: Job) -> list[dict[str, Any]]:
        return job_objects(
            job.sample,
            self.kube,
            raw_url=job.sample_url,
            output_url=job.output_url,
            raw_store_url=job.raw_store_url,
            config_yaml=self.config_yaml(job),
        )

    def __call__(self, job: Job, cancel: threading.Event) -> None:
        if self.backend == "kubernetes":
            run_on_kubernetes(self.objects(job), cancel, poll_s=self.poll_s)
            return
        process_sample(
            job.sample_url,
            job.raw_store_url,
            job.output_url,
            config_path=self.config_path,
            storage_options=self.storage_options,
            scheduler=self.scheduler if self.backend == "dask" else None,
            n_workers=self.n_workers,
        )


def run_on_kubernetes(
    objects: list[dict[str, Any]],
    cancel: threading.Event,
    *,
    poll_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:  # pragma: no cover
    """Create the objects through the API server and wait for the DaskJob to finish.

    Needs in-cluster credentials or a kubeconfig (``kr8s`` finds either).
    """
    import dask_kubernetes.operator._objects  # noqa: F401  (registers DaskJob & co. with kr8s)
    import kr8s
    from kr8s.objects import object_from_spec

    api = kr8s.api()
    created = []
    for spec in objects:
        obj = object_from_spec(spec, api=api)
        obj.create()
        created.append(obj)
    job = next(o for o in created if o.kind == "DaskJob")
    try:
        while True:
            if cancel.is_set():
                raise RunFailed(f"{job.name}: cancelled (lease lost)")
            job.refresh()
            raw: dict[str, Any] = dict(job.raw)  # a Box (dict subclass) with untyped methods
            status = (raw.get("status") or {}).get("jobStatus")
            if status == "Successful":
                return
            if status == "Failed":
                raise RunFailed(f"DaskJob {job.name} failed (kubectl logs {job.name}-runner)")
            sleep(poll_s)
    finally:
        for obj in created:
            with contextlib.suppress(Exception):
                obj.delete()
