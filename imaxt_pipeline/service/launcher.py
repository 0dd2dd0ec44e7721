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

``cancel`` is set when the watcher loses (or can no longer renew) the sample's lease, and
the action returns only once the attempt has stopped. Commands and local/dask pipeline runs
are child processes in their own session (``start_new_session``, no ``preexec_fn``: actions run
in threads) under a small supervisor: cancelling kills and reaps the whole process group, and
the supervisor (``PR_SET_PDEATHSIG`` on Linux) takes it down when the watcher itself dies. A
Kubernetes job is deleted.

Failures are classified by :func:`~.state.is_permanent`: a configuration or input error (in
the pipeline child, by exception type; for a command, exit status 2, the ``imaxt`` CLI's
status for errors the user must fix) raises :class:`~.state.PermanentError`, which fails the
sample at once; anything else raises :class:`RunFailed` and is retried.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from ..errors import ImaxtError
from ..io.storage import resolve_storage_options
from .k8s import KubeSettings, job_objects
from .state import PermanentError, is_permanent, is_transient

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
    lease_token: int = 0
    sections: tuple[int, ...] | None = None
    """TissueCyte acquisitions still running: the section numbers landed so far (:mod:`.live`)."""
    acquisition_ended: bool = False
    """With ``sections``: the acquisition ended short of its plan; ``sections`` are all it has."""


class Action(Protocol):
    def __call__(self, job: Job, cancel: threading.Event) -> None: ...


class Cancelled(RunFailed):
    """The attempt was stopped because its lease was lost (or could not be renewed)."""


# The supervisor: leader of the attempt's process group. It forks the command (which dies with
# it: PR_SET_PDEATHSIG=SIGKILL), and on SIGTERM/SIGHUP (sent by the watcher to cancel, or by
# the kernel when the watcher thread that started it dies: PR_SET_PDEATHSIG=SIGTERM) it kills
# and reaps the command, then kills the rest of the group (grandchildren) and itself.
_SUPERVISOR = r"""
import ctypes, os, signal, sys
linux = sys.platform.startswith("linux")
libc = ctypes.CDLL(None, use_errno=True) if linux else None
child = 0
def stop(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if child:
        try:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        except OSError:
            pass
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGHUP, stop)
if linux:
    libc.prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    stop(0, None)
child = os.fork()
if child == 0:
    try:
        if linux:
            libc.prctl(1, signal.SIGKILL)
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
while True:
    try:
        _, status = os.waitpid(child, 0)
        break
    except InterruptedError:
        continue
child = 0
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _kill_group(proc: subprocess.Popen[bytes], *, timeout: float = 5.0) -> None:
    """Stop the supervisor and everything in its process group; return once they are gone."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)  # the supervisor kills and reaps the command first
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is not None and _group_gone(proc.pid):
            return
        if time.monotonic() > deadline:  # zombies no one reaps yet: they cannot run any more
            proc.wait()
            return
        time.sleep(0.02)


def run_supervised(
    argv: Sequence[str], cancel: threading.Event, *, env: Mapping[str, str] | None = None, label: str = "run"
) -> tuple[int, str]:
    """Run ``argv`` in its own process group under the supervisor; return (exit status, output).

    Raises
    ------
    Cancelled
        If ``cancel`` is set first; by then the command and its process group are dead.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _SUPERVISOR, str(os.getpid()), *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read() if proc.stdout else b""), daemon=True)
    reader.start()
    try:
        while proc.poll() is None:
            if cancel.wait(0.05):
                _kill_group(proc)
                raise Cancelled(f"{label}: cancelled (lease lost)")
        with contextlib.suppress(ProcessLookupError, PermissionError):  # leftovers of a finished command
            os.killpg(proc.pid, signal.SIGKILL)
        reader.join(5)
    finally:
        if proc.poll() is None:  # an exception in this thread: never leave the command behind
            _kill_group(proc)
        reader.join(1)
        if proc.stdout is not None and not reader.is_alive():  # once read to the end, the pipe is done
            proc.stdout.close()
    return proc.returncode, b"".join(out).decode(errors="replace")


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


class CommandAction:
    """Run a command template per sample, e.g. ``"imaxt process {sample_url} --out {output_url}"``.

    Fields: ``{sample}``, ``{sample_url}``, ``{output_url}``, ``{raw_store_url}``, ``{attempt}``,
    ``{lease_token}`` (also in the environment as ``IMAXT_LEASE_TOKEN``), ``{sections}`` (a TissueCyte
    acquisition still running: the landed section numbers, ``1,2,3``; empty otherwise), ``{acquisition_ended}``
    (``1`` when such an acquisition ended short of its planned sections, else empty). An exit status in
    ``permanent_exit_codes`` (default 2: the ``imaxt`` CLI's status for configuration and input
    errors) is a permanent failure; any other non-zero status is retried.
    """

    def __init__(
        self, template: str, *, env: dict[str, str] | None = None, permanent_exit_codes: Collection[int] = (2,)
    ) -> None:
        self.template = template
        self.env = env
        self.permanent_exit_codes = frozenset(permanent_exit_codes)

    def argv(self, job: Job) -> list[str]:
        fields = {
            "sample": job.sample,
            "sample_url": job.sample_url,
            "output_url": job.output_url,
            "raw_store_url": job.raw_store_url,
            "attempt": job.attempt,
            "lease_token": job.lease_token,
            "sections": ",".join(str(n) for n in job.sections) if job.sections is not None else "",
            "acquisition_ended": "1" if job.acquisition_ended else "",
        }
        return [part.format(**fields) for part in shlex.split(self.template)]

    def __call__(self, job: Job, cancel: threading.Event) -> None:
        env = {**os.environ, **(self.env or {}), "IMAXT_LEASE_TOKEN": str(job.lease_token)}
        code, out = run_supervised(self.argv(job), cancel, env=env, label=job.sample)
        if code == 0:
            return
        message = f"command exited with status {code}: {_tail(out)}"
        if code in self.permanent_exit_codes:
            raise PermanentError(message)
        raise RunFailed(message)


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
    sections: Sequence[int] | None = None,
    acquisition_ended: bool = False,
) -> Any:
    """Upload ``raw_url`` to ``raw_store_url`` (resumable) and run the pipeline into ``output_url``.

    With ``sections`` (a TissueCyte acquisition still running: the section numbers landed so far)
    only those sections are read and uploaded, into a store sized for every planned section, and
    only the slices the output has not processed yet are run; ``None`` when there are none.
    Sections uploaded and verified by an earlier landing are not read again (``new_sections_only``).
    ``acquisition_ended``: those sections are all the acquisition has; the output is then marked
    complete with them (:func:`.live.end_acquisition`).
    """
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
    options = config.storage_options or None
    if sections is None:
        upload(raw_url, raw_store_url, storage_options=options, progress=False)
        return run_pipeline(config, client=client)
    reader = {"landed_sections": list(sections)}
    upload(
        raw_url,
        raw_store_url,
        storage_options=options,
        raw_storage_options=options,  # the bucket watched may be S3 while the stores are local
        progress=False,
        format="tissuecyte",
        reader_options=reader,
        new_sections_only=True,
    )
    todo = sorted({int(n) - 1 for n in sections} - slices_done(output_url, options))
    summary = run_pipeline(config.model_copy(update={"slices": todo}), client=client) if todo else None
    if acquisition_ended:
        from .live import end_acquisition

        end_acquisition(output_url, sections, options)
    return summary


def slices_done(output_url: str, storage_options: Mapping[str, Any] | None = None) -> set[int]:
    """Slices an output has processed (``imaxt.slices_done``); none when it does not exist yet."""
    from ..io.output import OutputStore
    from ..io.results import slices_done as recorded

    try:
        output = OutputStore(output_url, dict(storage_options or {}), mode="r")
    except FileNotFoundError:  # zarr's GroupNotFoundError
        return set()
    return set(recorded(output))


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
            sections=job.sections,
            acquisition_ended=job.acquisition_ended,
        )

    def check(self) -> None:
        """Validate the run configuration once, before any sample (a typo is the watcher's own error).

        Raises
        ------
        ConfigError
            If the config file is missing, unparsable, or has unknown or invalid keys.
        """
        load_run_config(self.config_path, storage_options=self.storage_options, input_url="-", output_url="-")

    def __call__(self, job: Job, cancel: threading.Event) -> None:
        if self.backend == "kubernetes":
            run_on_kubernetes(self.objects(job), cancel, poll_s=self.poll_s)
            return
        # In a child process, so that losing the lease really stops the run (a thread cannot be killed).
        spec = {
            "raw_url": job.sample_url,
            "raw_store_url": job.raw_store_url,
            "output_url": job.output_url,
            "config_path": str(self.config_path) if self.config_path is not None else None,
            "storage_options": self.storage_options,
            "scheduler": self.scheduler if self.backend == "dask" else None,
            "n_workers": self.n_workers,
            "sections": list(job.sections) if job.sections is not None else None,
            "acquisition_ended": job.acquisition_ended,
        }
        with tempfile.TemporaryDirectory(prefix="imaxt-run-") as tmp:
            result = Path(tmp) / "result.json"
            spec["result"] = str(result)
            argv = [sys.executable, "-m", "imaxt_pipeline.service.launcher", json.dumps(spec)]
            code, out = run_supervised(argv, cancel, env=os.environ, label=job.sample)
            if code == 0:
                return
            try:
                outcome = json.loads(result.read_text())
            except (OSError, ValueError):
                raise RunFailed(f"pipeline process exited with status {code}: {_tail(out)}") from None
        message = f"{outcome['type']}: {outcome['message']}"
        if outcome.get("permanent"):
            raise PermanentError(message)
        raise RunFailed(message + (" (transient)" if outcome.get("transient") else ""))


def _child_main(spec_json: str) -> int:  # pragma: no cover - runs in the pipeline child process
    """Entry point of a pipeline child: run one sample, report a failure's class to the result file."""
    spec = json.loads(spec_json)
    result = spec.pop("result")
    raw_url, raw_store_url, output_url = spec.pop("raw_url"), spec.pop("raw_store_url"), spec.pop("output_url")
    try:
        process_sample(raw_url, raw_store_url, output_url, **spec)
    except Exception as exc:
        outcome = {
            "type": type(exc).__name__,
            "message": str(exc).replace("\n", " ")[:2000],
            "permanent": is_permanent(exc),
            "transient": is_transient(exc),
        }
        Path(result).write_text(json.dumps(outcome))
        raise
    return 0


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
                raise Cancelled(f"{job.name}: cancelled (lease lost)")
            job.refresh()
            raw: dict[str, Any] = dict(job.raw)  # a Box (dict subclass) with untyped methods
            status = (raw.get("status") or {}).get("jobStatus")
            if status == "Successful":
                return
            if status == "Failed":
                raise RunFailed(f"DaskJob {job.name} failed (kubectl logs {job.name}-runner)")
            if sleep is time.sleep:
                cancel.wait(poll_s)  # wakes at once when the lease is lost
            else:
                sleep(poll_s)
    finally:
        for obj in created:
            with contextlib.suppress(Exception):
                obj.delete()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_child_main(sys.argv[1]))
