"""Discovery for :mod:`.watcher`: which sample folders under a bucket have landed, and their checksums.

A generic sample has landed with an ``_COMPLETE`` marker, or once ``acquisition.json``, ``tiles.csv`` and
every tile it lists are present; the checksum of the listing is its input checksum. TissueCyte folders
are listed section by section (:mod:`.live`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..io.storage import protocols, url_to_fs
from .launcher import Action
from .live import QuietClock, is_tissuecyte, landed_sections

MARKER = "_COMPLETE"


@dataclass(frozen=True)
class Landed:
    """A sample folder that is complete, with the checksum of its listing."""

    sample: str
    url: str
    checksum: str
    marker: bool = False
    sections: tuple[int, ...] | None = None
    """TissueCyte acquisitions: the section numbers landed so far (else ``None``: the whole sample)."""
    planned: int | None = None
    """TissueCyte acquisitions: the sections requested (the root ``sections`` key)."""
    ended: str | None = None
    """TissueCyte acquisitions that ended short of ``planned``: why (``marker``, ``quiet``; :mod:`.live`)."""
    action: Action | None = None
    """Run instead of the watcher's action (a landed slide: :mod:`.slides`)."""

    @property
    def acquiring(self) -> bool:
        """Whether sections are still to come (a TissueCyte acquisition not complete yet)."""
        if self.sections is None or self.ended is not None:
            return False
        return self.planned is None or not set(range(1, self.planned + 1)) <= set(self.sections)


def _tiles_listed(fs: Any, folder: str) -> list[str] | None:
    try:
        text = fs.cat_file(f"{folder}/tiles.csv").decode()
        rows = list(csv.DictReader(io.StringIO(text)))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    files = [r.get("file") for r in rows]
    if not files or any(not f for f in files):
        return None
    return [posixpath.normpath(str(f)) for f in files]


def sample_landed(fs: Any, folder: str, listing: dict[str, dict[str, Any]]) -> bool:
    """Whether the sample in ``folder`` is complete; ``listing`` maps relative paths to info."""
    if MARKER in listing:
        return True
    if "acquisition.json" not in listing or "tiles.csv" not in listing:
        return False
    files = _tiles_listed(fs, folder)
    return files is not None and all(f in listing for f in files)


def listing_checksum(listing: dict[str, dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for rel in sorted(listing):
        info = listing[rel]
        stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
        h.update(f"{rel}\0{info.get('size')}\0{stamp}\n".encode())
    return h.hexdigest()


def find_landed(
    bucket_url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    only: Iterable[str] | None = None,
    quiet: QuietClock | None = None,
    quiet_seconds: float = 600.0,
    acquisition_quiet_seconds: float | None = None,
) -> list[Landed]:
    """List the landed samples under ``bucket_url`` (optionally only the named ones).

    TissueCyte folders are listed as soon as one section has landed (:func:`.live.landed_sections`,
    ``quiet``/``quiet_seconds`` for a last section with a missing tile); one whose first section is
    still being written is listed with ``sections=()``: not taken, but keeping the bucket unsettled.
    """
    fs, root = url_to_fs(bucket_url, storage_options)
    root = root.rstrip("/")
    fs.invalidate_cache()
    protocol = protocols(fs)[0]
    if only is not None:
        folders = [f"{root}/{name}" for name in sorted(set(only))]
    else:
        try:
            folders = [e["name"].rstrip("/") for e in fs.ls(root, detail=True) if e["type"] == "directory"]
        except FileNotFoundError:
            return []
    landed = []
    for folder in folders:
        name = folder.rsplit("/", 1)[-1]
        if not name or name[0] in "_.":
            continue
        try:
            found = fs.find(folder, detail=True)
        except FileNotFoundError:
            continue
        listing = {p[len(folder) + 1 :]: info for p, info in found.items() if p.startswith(folder + "/")}
        url = folder if protocol in ("file", "local") else f"{protocol}://{folder}"
        if listing and is_tissuecyte(listing):  # an _COMPLETE marker too: it ends the acquisition (.live)
            sections = landed_sections(
                fs,
                folder,
                listing,
                quiet=quiet,
                quiet_seconds=quiet_seconds,
                acquisition_quiet_seconds=acquisition_quiet_seconds,
            )
            if sections is not None and sections.landed:
                checksum = listing_checksum({k: listing[k] for k in sections.files})
                if sections.ended is not None:  # one more run, which marks the output complete
                    checksum = hashlib.sha256(f"{checksum}\0ended".encode()).hexdigest()
                landed.append(
                    Landed(
                        name,
                        url,
                        checksum,
                        sections=sections.landed,
                        planned=sections.planned,
                        ended=sections.ended,
                    )
                )
            elif sections is not None:  # started, no section landed yet: nothing to take, but not settled either
                landed.append(Landed(name, url, "", sections=(), planned=sections.planned))
            continue
        if listing and sample_landed(fs, folder, listing):
            landed.append(Landed(sample=name, url=url, checksum=listing_checksum(listing), marker=MARKER in listing))
    return landed
