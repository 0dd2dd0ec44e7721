"""The watcher's slide step: slides that land under ``<bucket>/slides/<sample>/`` are registered onto the sample.

Layout: a slide-scanner file (``.czi``, ``.tif``/``.tiff``, OME-TIFF) or an IMC acquisition
(``.mcd``, ``.txt``) dropped into ``<bucket>/<prefix>/<sample>/`` (``prefix`` is ``slides`` by
default) belongs to the STPT sample ``<sample>``: the folder name is the sample key. A slide is
taken once

* its file is unchanged over the watcher's settle interval (its size and mtime/ETag are its input
  checksum: a file still being copied is "not landed yet"), and
* the sample's STPT processing is ``done`` in the ledger (its processed store ``<output
  prefix>/<sample>.zarr`` is then the reference);

an IMC acquisition also waits for the folder's slide-scanner slides, and is chained ``--via`` the
one registered slide of the folder (exactly one single-scene slide, or the one whose file stem
starts its own, ``slide1.czi`` for ``slide1_roi2.mcd``), else registered directly.

Each slide is one ledger record, ``slide--<sample>--<file>`` (claims, leases, retries and fencing as
for samples: exactly once per version of the file), and runs ``imaxt register-modality`` in a
supervised child process (cancelled like any attempt) into ``<slides_out>/<sample>/<stem>.zarr``
(default ``slides_out``: ``<output prefix>/slides``). Exit status 2 (an orphan, too few beads, a
foreign destination) fails the slide at once; any other failure is retried.
"""

from __future__ import annotations

import json
import posixpath
import re
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..io.storage import protocols, url_to_fs
from .launcher import Job, RunFailed, run_supervised
from .state import PermanentError

if TYPE_CHECKING:
    from .watcher import Landed, Watcher

__all__ = ["IMC_SUFFIXES", "SLIDE_SUFFIXES", "SlideAction", "SlideStep", "slide_key"]

SLIDE_SUFFIXES = (".czi", ".tif", ".tiff")
IMC_SUFFIXES = (".mcd", ".txt")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def slide_key(sample: str, filename: str) -> str:
    """The ledger record of one slide file of ``sample`` (a flat name every state store accepts).

    >>> slide_key("synth", "slide 1.czi")
    'slide--synth--slide_1.czi'
    """
    return f"slide--{_UNSAFE.sub('_', sample)}--{_UNSAFE.sub('_', filename)}"


@dataclass(frozen=True)
class SlideAction:
    """Register one landed slide: ``imaxt register-modality`` in a supervised child (a watcher action).

    Exit status 2 (an orphan, too few beads, a foreign destination: errors the user must fix) raises
    :class:`~.state.PermanentError`; any other failure :class:`~.launcher.RunFailed` (retried).
    """

    sample: str
    url: str
    reference: str
    out_url: str
    via: str | None = None
    storage_options: dict[str, Any] | None = None
    python: str = sys.executable

    def argv(self) -> list[str]:
        argv = [self.python, "-m", "imaxt_pipeline.service.cli", "register-modality", self.url]
        argv += ["--reference", self.reference, "--out", self.out_url]
        if self.via:
            argv += ["--via", self.via]
        if self.storage_options:
            argv += ["--storage-options", json.dumps(self.storage_options)]
        return argv

    def __call__(self, job: Job, cancel: threading.Event) -> None:
        code, out = run_supervised(self.argv(), cancel, label=job.sample)
        if code == 0:
            return
        tail = " | ".join(out.strip().splitlines()[-3:])
        message = f"register-modality exited with status {code}: {tail}"
        if code == 2:
            raise PermanentError(message)
        raise RunFailed(message)


class SlideStep:
    """Find landed slides for a :class:`~.watcher.Watcher` and register each once (``Watcher(slides=...)``).

    Parameters
    ----------
    prefix : str
        Folder of the watched bucket holding one folder of slides per sample (never a sample itself).
    slides_out : str, optional
        Where slide stores go; default ``<watcher output prefix>/slides``.
    python : str
        Interpreter of the ``imaxt register-modality`` child.
    """

    def __init__(self, prefix: str = "slides", *, slides_out: str | None = None, python: str = sys.executable) -> None:
        if not prefix or "/" in prefix.strip("/") or prefix[0] in "_.":
            raise ConfigError(f"slides prefix must be one folder name not starting with _ or ., got {prefix!r}")
        self.prefix = prefix.strip("/")
        self.slides_out = slides_out.rstrip("/") if slides_out else None
        self.python = python

    def find(self, watcher: Watcher) -> list[Landed]:
        """Every slide file whose sample's STPT store is done, as a :class:`~.watcher.Landed` with its own action."""
        from .watcher import Landed, listing_checksum

        fs, root = url_to_fs(watcher.bucket_url, watcher.storage_options)
        base = f"{root.rstrip('/')}/{self.prefix}"
        protocol = protocols(fs)[0]
        fs.invalidate_cache()
        try:
            found = fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        by_sample: dict[str, dict[str, dict[str, Any]]] = {}
        for path, info in found.items():
            rel = path[len(base) + 1 :].split("/")
            if len(rel) == 2 and rel[0][:1] not in "_." and rel[1][:1] not in "_.":
                by_sample.setdefault(rel[0], {})[rel[1]] = info
        out_root = self.slides_out or f"{watcher.output_prefix}/slides"
        landed = []
        for sample, files in sorted(by_sample.items()):
            state, _ = watcher.ledger.store.get(sample)
            if state is None or state.status != "done":
                continue  # the STPT reference is not processed (yet)
            scanner = sorted(f for f in files if f.lower().endswith(SLIDE_SUFFIXES))
            imc = sorted(f for f in files if f.lower().endswith(IMC_SUFFIXES))
            for name in scanner + imc:
                via = None
                if name in imc:
                    if not all(_done(watcher, slide_key(sample, s)) for s in scanner):
                        continue  # IMC waits for its folder's slides
                    via = self._via(watcher, out_root, sample, name, scanner)
                folder = f"{base}/{sample}"
                url = f"{folder}/{name}" if protocol in ("file", "local") else f"{protocol}://{folder}/{name}"
                action = SlideAction(
                    sample=sample,
                    url=url,
                    reference=f"{watcher.output_prefix}/{sample}.zarr",
                    out_url=f"{out_root}/{sample}/{name.rsplit('.', 1)[0]}.zarr",
                    via=via,
                    storage_options=watcher.storage_options or None,
                    python=self.python,
                )
                checksum = listing_checksum({name: files[name], "_via": {"size": via}})
                landed.append(Landed(slide_key(sample, name), url, checksum, action=action))
        return landed

    def _via(self, watcher: Watcher, out_root: str, sample: str, imc_name: str, scanner: list[str]) -> str | None:
        """The registered slide store an IMC file is chained through, if the folder says which."""
        stem = imc_name.rsplit(".", 1)[0]
        named = [s for s in scanner if stem.startswith(s.rsplit(".", 1)[0])]
        pick = named if len(named) == 1 else scanner if len(scanner) == 1 else []
        if not pick:
            return None
        store = f"{out_root}/{sample}/{pick[0].rsplit('.', 1)[0]}.zarr"
        fs, path = url_to_fs(store, watcher.storage_options)
        return store if fs.exists(f"{path.rstrip('/')}/zarr.json") else None

    def is_slides_folder(self, name: str) -> bool:
        """Whether a top-level folder of the bucket is this step's (the watcher skips it as a sample)."""
        return posixpath.basename(name.rstrip("/")) == self.prefix


def _done(watcher: Watcher, key: str) -> bool:
    state, _ = watcher.ledger.store.get(key)
    return state is not None and state.status in ("done", "failed")
