"""Sections as they land: when a TissueCyte section folder counts as acquired.

A TissueCyte acquisition (``spec/tissuecyte.md``) grows one section folder
``<SampleID>-NNNN/`` at a time while the instrument runs. Section ``N`` has *landed* when
its ``Mosaic_<SampleID>-NNNN.txt`` is present and

- every planned tile image is there (``mrows x mcolumns x layers x channels`` files), or
- a later section folder has started (the instrument moved on: what is missing was never
  acquired), or
- ``trigger/`` holds at least ``N`` ``*.tr2`` files (one per finished section on some
  systems), or
- nothing in the folder changed for ``quiet_seconds`` (a last section with a missing tile).

The watcher then still waits for the listing of the landed sections to settle
(``settle_seconds``) before it takes them. The acquisition has ended when every
section the root Mosaic file's ``sections`` key requested has landed.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..io.formats import parse_mosaic

_ROOT = re.compile(r"Mosaic[^/]*\.txt")
_TILE = re.compile(r"\d{8}-\d{4}-\d+_\d{2}\.tif(\.gz)?")
_TRIGGER = re.compile(r"trigger/[^/]+\.tr2")


@dataclass(frozen=True)
class Sections:
    """The landed sections of a TissueCyte acquisition folder, from one listing."""

    sample_id: str
    planned: int | None
    """The root ``sections`` key (sections requested), if present."""
    landed: tuple[int, ...]
    """Section numbers (1-based, as in the folder names) landed, in order."""
    files: tuple[str, ...]
    """Relative paths of the root Mosaic file and every file of the landed sections."""

    @property
    def complete(self) -> bool:
        """Whether the acquisition has ended: every requested section landed."""
        return self.planned is not None and set(range(1, self.planned + 1)) <= set(self.landed)


class QuietClock:
    """Remembers since when each section's listing has been unchanged (in this process)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self._seen: dict[str, tuple[str, float]] = {}

    def quiet_for(self, key: str, listing: Mapping[str, Mapping[str, Any]]) -> float:
        h = hashlib.sha256()
        for rel in sorted(listing):
            info = listing[rel]
            stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
            h.update(f"{rel}\0{info.get('size')}\0{stamp}\n".encode())
        digest, now = h.hexdigest(), self.clock()
        seen = self._seen.get(key)
        if seen is None or seen[0] != digest:
            self._seen[key] = (digest, now)
            return 0.0
        return now - seen[1]


def is_tissuecyte(listing: Mapping[str, Any]) -> bool:
    """Whether a sample folder's listing (relative paths) is a TissueCyte acquisition, not the generic layout."""
    return "acquisition.json" not in listing and any(_ROOT.fullmatch(k) for k in listing)


def landed_sections(
    fs: Any,
    folder: str,
    listing: Mapping[str, Mapping[str, Any]],
    *,
    quiet: QuietClock | None = None,
    quiet_seconds: float = 600.0,
) -> Sections | None:
    """The landed sections of the TissueCyte folder ``folder`` (``listing``: relative path -> info).

    ``None`` when the root Mosaic file cannot be read yet (being written, or not exactly one).
    """
    roots = sorted(k for k in listing if _ROOT.fullmatch(k))
    if len(roots) != 1:
        return None
    try:
        root = parse_mosaic(f"{folder}/{roots[0]}", bytes(fs.cat_file(f"{folder}/{roots[0]}")))
        sample_id = root.text("Sample ID")
        layers = root.integer("layers", default=1, minimum=1)
        if root.has("Zscan") and root.integer("Zscan", minimum=None) == 0:
            layers = 1
        per_section = root.integer("mrows", minimum=1) * root.integer("mcolumns", minimum=1)
        per_section *= layers * root.integer("channels", minimum=1)
        planned = root.integer("sections", minimum=1) if root.has("sections") else None
    except (OSError, InputError):
        return None  # not written completely yet: looked at again on the next poll
    folder_re = re.compile(re.escape(sample_id) + r"-(\d{4})/(.+)")
    by_section: dict[int, dict[str, Mapping[str, Any]]] = {}
    for rel, info in listing.items():
        m = folder_re.fullmatch(rel)
        if m:
            by_section.setdefault(int(m.group(1)), {})[m.group(2)] = info
    triggers = sum(1 for k in listing if _TRIGGER.fullmatch(k))
    numbers = sorted(by_section)
    landed: list[int] = []
    for n in numbers:
        files = by_section[n]
        if f"Mosaic_{sample_id}-{n:04d}.txt" not in files:
            continue
        tiles = sum(1 for name in files if _TILE.fullmatch(name))
        later = any(m > n for m in numbers)
        quiet_s = quiet.quiet_for(f"{folder}/{n}", files) if quiet is not None else 0.0
        if tiles >= per_section or later or triggers >= n or (quiet is not None and quiet_s >= quiet_seconds):
            landed.append(n)
    prefixes = tuple(f"{sample_id}-{n:04d}/" for n in landed)
    used = tuple(sorted([roots[0], *(k for k in listing if k.startswith(prefixes))]))
    return Sections(sample_id=sample_id, planned=planned, landed=tuple(landed), files=used)
