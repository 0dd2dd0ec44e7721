"""``imaxt verify STORE``: check a raw store tile by tile, or an output store's metadata and owner.

A raw store (written by ``imaxt upload``) is read whole: its metadata against the
acquisition, every ``stage_um`` chunk, and every tile image against the SHA-256 the
uploader recorded (:class:`~.rawzarr.RawStore`). An output store (written by ``imaxt run``)
must open, record its owner (:mod:`.ownership`), hold readable metadata for every group and
array, and hold only what the steps write.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import zarr

from ..errors import StoreError
from .output import OUTPUT_TOOL, is_output_key
from .ownership import ROOT_METADATA, read_owner, read_root_attributes
from .rawzarr import RawStore
from .upload import UPLOAD_TOOL
from .urls import Location


@dataclass
class VerifyReport:
    """What :func:`verify_store` found: the kind of store, one line per problem, what was checked."""

    url: str
    kind: str
    problems: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        what = f"{self.checked} tile images" if self.kind == "raw" else f"{self.checked} entries"
        if self.ok:
            return f"{self.url}: {self.kind} store ok ({what} checked)"
        n = len(self.problems)
        return f"{self.url}: {n} problem{'s' if n > 1 else ''} in this {self.kind} store ({what} checked)"


def verify_store(url: str, storage_options: dict[str, Any] | None = None) -> VerifyReport:
    """Check every tile of a raw store, or the metadata and owner of an output store.

    Raises
    ------
    StoreError
        When there is nothing at ``url`` at all.
    """
    loc = Location(url, storage_options)
    if not loc.exists():
        raise StoreError(f"{loc.url}: no store here")
    attrs = read_root_attributes(loc)
    meta = (attrs or {}).get("imaxt")
    if attrs is None or not isinstance(meta, dict):
        report = VerifyReport(loc.url, "unknown")
        problem = "zarr.json is missing" if not loc.exists(ROOT_METADATA) else "zarr.json cannot be read"
        if attrs is not None:
            problem = "not an imaxt store (no imaxt attributes)"
        report.problems.append(f"{loc.url}: {problem}")
        return report
    owner = read_owner(attrs)
    if "upload" in meta or (owner is not None and owner.tool == UPLOAD_TOOL):
        return _verify_raw(loc, storage_options)
    return _verify_output(loc, storage_options, attrs)


def _verify_raw(loc: Location, storage_options: dict[str, Any] | None) -> VerifyReport:
    report = VerifyReport(loc.url, "raw")
    try:
        raw = RawStore(loc.url, storage_options, require_complete=False, check_stage=False)
    except StoreError as exc:
        report.problems.append(str(exc))
        return report
    if not raw.complete:
        report.problems.append(f"{loc.url}: upload is not complete (re-run `imaxt upload` to finish it)")
        return report
    if raw.stage_problem is not None:
        report.problems.append(raw.stage_problem)
    acq = raw.acquisition
    report.checked = acq.slices * acq.optical_sections * len(acq.channels) * acq.n_tiles
    report.problems.extend(raw.iter_problems())
    return report


def _verify_output(loc: Location, storage_options: dict[str, Any] | None, attrs: dict[str, Any]) -> VerifyReport:
    report = VerifyReport(loc.url, "output")
    owner = read_owner(attrs)
    if owner is None:
        report.problems.append(f"{loc.url}: no owner record (imaxt.owner): not written by this version of imaxt run")
    elif owner.tool != OUTPUT_TOOL:
        report.problems.append(f"{loc.url}: owner is {owner.tool!r}, not {OUTPUT_TOOL!r}")
    try:
        group = zarr.open_group(loc.zarr_store(read_only=True), mode="r")
        with warnings.catch_warnings():  # tables/ and qc/ hold files, not Zarr nodes
            warnings.filterwarnings("ignore", message="Object at .* is not recognized")
            members = [path for path, _ in group.members(max_depth=None)]
    except Exception as exc:  # unreadable group or array metadata
        report.problems.append(f"{loc.url}: metadata cannot be read ({' '.join(str(exc).split())[:200]})")
        members = []
    fs, root = loc.fs, loc.root
    keys = [p[len(root) + 1 :] for p in fs.find(root) if p.startswith(root + "/")]
    report.checked = len(keys) + len(members)
    foreign = [k for k in keys if not is_output_key(k)]
    report.problems.extend(f"{loc.join(k)}: not written by imaxt run" for k in sorted(foreign))
    return report
