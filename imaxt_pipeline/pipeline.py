"""The runner: open stores, attach to Dask, run the steps, record provenance.

The runner is the only place that knows the whole :class:`RunConfig`: each
step gets a :class:`StepContext` (stores, client, slices, storage options)
and its own parameters. It stamps the output with the results-contract
version (``imaxt.format_version``) before any step writes.

One sample per output: the output is claimed for the raw store's sample
(:func:`~imaxt_pipeline.io.output.claim_output`) before anything is written, so an
output of another sample, one made from different raw data, one holding foreign
files or one that is (inside, around) the input is refused with one line.

Each step's provenance entry is appended when the step starts (``status:
"running"``, ``end: null``) and completed when it ends (``"finished"``, or
``"failed"`` with the error). Entries still ``"running"`` when the next run starts
belong to an attempt that was killed: that run marks them ``"interrupted"``.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .config import ClusterConfig, RunConfig
from .errors import ConfigError
from .io.export import refresh_views
from .io.output import OutputStore, claim_output
from .io.provenance import software_versions, utcnow
from .io.rawzarr import RawStore
from .io.results import check_format_version
from .steps import STEP_ORDER, StepContext, check_channel_indices, step_module

log = logging.getLogger(__name__)

#: Wraps every step: ``STEP_SCOPE.get()(name, params, ctx)`` is entered around the step's run. The
#: Kubernetes job runner sets it to hold its GPU workers for ``segment`` only (:mod:`.service.gpu`).
STEP_SCOPE: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "STEP_SCOPE", default=lambda name, params, ctx: contextlib.nullcontext()
)


@dataclass
class RunSummary:
    """What a run did: the output URL, the steps run and their wall times."""

    output_url: str
    slices: list[int]
    steps: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        timing = ", ".join(f"{k} {v:.1f}s" for k, v in self.steps.items())
        return f"processed slices {self.slices} -> {self.output_url} ({timing})"


@contextlib.contextmanager
def dask_client(cluster: ClusterConfig) -> Iterator[Any]:
    """A ``distributed.Client`` on an existing scheduler, or on a new LocalCluster."""
    from distributed import Client, LocalCluster

    if cluster.scheduler:
        try:
            connected = Client(cluster.scheduler, timeout=cluster.connect_timeout_s)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {cluster.scheduler} within {cluster.connect_timeout_s:g} s "
                f"(cluster.connect_timeout_s): {' '.join(str(exc).split())[:200]}"
            ) from None
        with connected as client:
            _set_up_workers(client)
            yield client
        return
    with (
        LocalCluster(
            n_workers=cluster.n_workers,
            threads_per_worker=cluster.threads_per_worker,
            processes=cluster.processes,
            memory_limit=cluster.memory_limit,
            # No dashboard, and its HTTP server (health, metrics) on a free port: distributed's default
            # 8787 warns "already in use" whenever two runs share a machine (two watchers, parallel tests).
            dashboard_address=":0",
            scheduler_kwargs={"dashboard": False},
        ) as lc,
        Client(lc) as client,
    ):
        _set_up_workers(client)
        yield client


def _set_up_workers(client: Any) -> None:
    # Dask's nanny starts workers with an allocator setting that made numpy-heavy tasks 2.5x slower.
    from .parallel.workers import RoomyAllocator

    client.register_plugin(RoomyAllocator())


def input_checksum(raw: RawStore) -> str:
    """One SHA-256 over the sorted per-tile checksums of the raw store."""
    table = json.dumps(raw.tile_checksums(), sort_keys=True).encode()
    return hashlib.sha256(table).hexdigest()


def run_pipeline(config: RunConfig, *, client: Any = None) -> RunSummary:
    """Run every enabled step of ``config`` on the slices it names.

    Parameters
    ----------
    config : RunConfig
        Validated configuration.
    client : distributed.Client, optional
        Use this client instead of connecting as ``config.cluster`` says.
    """
    raw = RawStore(config.input_url, config.storage_options)
    acq = raw.acquisition
    slices = sorted(set(config.slices)) if config.slices is not None else list(range(acq.slices))
    bad = [s for s in slices if not 0 <= s < acq.slices]
    if bad:
        raise ConfigError(f"slices {bad} outside 0..{acq.slices - 1} of sample {acq.sample!r}")
    check_channel_indices(acq.channels, config.steps)  # a wrong channel index fails before any step runs
    output = claim_output(
        config.output_url,
        config.storage_options,
        source=raw.location,
        sample=acq.sample,
        sample_id=raw.sample_id,
        sections=raw.section_checksums(),
        processing=slices,
    )
    check_format_version(output)
    mark_interrupted(output)
    output.update_imaxt_attrs("complete", False)
    output.update_imaxt_attrs("sample", acq.sample)
    output.update_imaxt_attrs("acquisition", acq.model_dump(mode="json"))
    checksum = input_checksum(raw)
    summary = RunSummary(output_url=output.url, slices=slices)
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(dask_client(config.cluster))
        ctx = StepContext(
            raw=raw, output=output, client=client, slices=slices, storage_options=dict(config.storage_options)
        )
        for name in STEP_ORDER:
            params = config.step(name)
            if not params.enabled:
                continue
            log.info("step %s: slices %s", name, slices)
            entry: dict[str, Any] = {
                "name": name,
                "status": "running",
                "software": software_versions(),
                "version": __version__,
                "parameters": params.model_dump(mode="json"),
                "inputs": {"raw": raw.url, "raw_sha256": checksum, "other": []},
                "outputs": [],
                "metrics": {},
                "slices": list(ctx.slices),
                "start": utcnow(),
                "end": None,
                "host": socket.gethostname(),
            }
            index = output.append_provenance(entry)
            t0 = time.perf_counter()
            try:
                with STEP_SCOPE.get()(name, params, ctx):
                    result = step_module(name).run(ctx, params)
            except Exception as exc:
                output.set_provenance(index, {**entry, "status": "failed", "end": utcnow(), "error": _one_line(exc)})
                raise
            summary.steps[name] = time.perf_counter() - t0
            extra = sorted(set(result.rewritten_slices) - set(ctx.slices))
            if extra:
                log.info("step %s rewrote slices %s: later steps redo them", name, extra)
            entry.update(
                status="finished",
                inputs={**entry["inputs"], "other": result.inputs},
                outputs=result.outputs,
                metrics=result.metrics,
                end=utcnow(),
            )
            output.set_provenance(index, entry)
            if extra:
                ctx.slices = sorted(set(ctx.slices) | set(extra))
    done = set(output.imaxt_attrs().get("slices_done", [])) | set(slices)
    output.update_imaxt_attrs("slices_done", sorted(done))
    output.update_imaxt_attrs("complete", len(done) == acq.slices)
    refresh_views(output)  # data-derived display windows; the store root opens as the cube (io.export)
    return summary


def mark_interrupted(output: OutputStore) -> list[int]:
    """Mark provenance entries of an attempt that never finished (``status: "running"``) ``"interrupted"``.

    Called when a run starts: only one run writes an output at a time, so an entry still
    running then was left by a run that was killed. Returns the indices marked.
    """
    entries = list(output.imaxt_attrs().get("provenance", []))
    marked = [i for i, e in enumerate(entries) if isinstance(e, dict) and e.get("status") == "running"]
    for i in marked:
        output.set_provenance(i, {**entries[i], "status": "interrupted"})
    if marked:
        log.warning("provenance: %d step(s) of an earlier run did not finish, marked interrupted", len(marked))
    return marked


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"
