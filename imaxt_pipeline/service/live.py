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
(``settle_seconds``) before it takes them.

The acquisition is *complete* when every section the root Mosaic file's ``sections`` key
requested has landed, or when it has *ended* short of them (the instrument was stopped early,
the run aborted; ``spec/tissuecyte.md``: "when the instrument says so ... otherwise a
configurable quiet period"):

- ``marker``: an ``_COMPLETE`` file at the top of the acquisition folder (the generic layout's
  marker: no TissueCyte version we know of writes a final marker of its own), or
- ``quiet``: nothing anywhere in the folder changed for ``acquisition_quiet_seconds`` (hours
  by default: far longer than a section takes).

Once ended, every section folder with its Mosaic file has landed (nothing more will come), and
:func:`end_acquisition` marks the output complete with the sections it has, recording and
warning how many of the planned sections never came.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..io.formats import parse_mosaic
from ..io.output import OutputStore

log = logging.getLogger("imaxt.live")

END_MARKER = "_COMPLETE"
"""A file at the top of the acquisition folder saying the acquisition has ended (the watcher's ``MARKER``)."""
ENDED_KEY = "acquisition_ended"
"""Key of the output's root attributes (``imaxt.acquisition_ended``) set by :func:`end_acquisition`."""

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
    ended: str | None = None
    """Why the acquisition ended before every requested section landed (``marker``, ``quiet``), if it did."""

    @property
    def complete(self) -> bool:
        """Whether the acquisition is over: every requested section landed, or it ended."""
        if self.ended is not None:
            return True
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
    acquisition_quiet_seconds: float | None = None,
) -> Sections | None:
    """The landed sections of the TissueCyte folder ``folder`` (``listing``: relative path -> info).

    ``None`` when the root Mosaic file cannot be read yet (being written, or not exactly one).
    ``acquisition_quiet_seconds`` (with ``quiet``): the acquisition has ended once nothing in the
    folder changed for this long; ``None`` never ends it that way.
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
    ended = _ended(folder, listing, quiet, acquisition_quiet_seconds)
    numbers = sorted(by_section)
    landed: list[int] = []
    for n in numbers:
        files = by_section[n]
        if f"Mosaic_{sample_id}-{n:04d}.txt" not in files:
            continue
        tiles = sum(1 for name in files if _TILE.fullmatch(name))
        later = any(m > n for m in numbers)
        quiet_s = quiet.quiet_for(f"{folder}/{n}", files) if quiet is not None else 0.0
        if (
            ended is not None
            or tiles >= per_section
            or later
            or triggers >= n
            or (quiet is not None and quiet_s >= quiet_seconds)
        ):
            landed.append(n)
    if planned is not None and set(range(1, planned + 1)) <= set(landed):
        ended = None  # complete as requested: nothing ended early
    prefixes = tuple(f"{sample_id}-{n:04d}/" for n in landed)
    used = tuple(sorted([roots[0], *(k for k in listing if k.startswith(prefixes))]))
    return Sections(sample_id=sample_id, planned=planned, landed=tuple(landed), files=used, ended=ended)


def _ended(
    folder: str, listing: Mapping[str, Mapping[str, Any]], quiet: QuietClock | None, quiet_seconds: float | None
) -> str | None:
    """``marker`` or ``quiet`` when the acquisition has ended (see the module docstring), else ``None``."""
    if END_MARKER in listing:
        return "marker"
    if quiet is None or quiet_seconds is None:
        return None
    # The whole folder (every section, started or not, and trigger/): a new file anywhere restarts the wait.
    return "quiet" if quiet.quiet_for(folder, listing) >= quiet_seconds else None


def end_acquisition(
    output_url: str, sections: Sequence[int], storage_options: Mapping[str, Any] | None = None
) -> list[int]:
    """Mark the output of an acquisition that ended complete with the ``sections`` (1-based) it has.

    Records ``imaxt.acquisition_ended`` (``sections`` landed, ``planned``, ``never_acquired``: the
    planned sections that never came, 1-based) and sets ``imaxt.complete`` once every landed
    section has been processed; returns ``never_acquired`` (logged as a warning when not empty).
    """
    options = dict(storage_options or {})
    OutputStore(output_url, options, mode="r")  # it exists (processed before): never create one here
    output = OutputStore(output_url, options, mode="a")
    meta = output.imaxt_attrs()
    planned = int((meta.get("acquisition") or {}).get("slices") or max(sections))
    landed = sorted({int(n) for n in sections})
    never = sorted(set(range(1, planned + 1)) - set(landed))
    done = {int(s) for s in meta.get("slices_done", [])}
    complete = {n - 1 for n in landed} <= done
    output.update_imaxt_attrs(ENDED_KEY, {"sections": landed, "planned": planned, "never_acquired": never})
    output.update_imaxt_attrs("complete", complete)
    if never:
        shown = ", ".join(str(n) for n in never[:10]) + (", ..." if len(never) > 10 else "")
        log.warning(
            "%s: the acquisition ended with %d of its %d planned sections: %d never came (%s)",
            output_url,
            len(landed),
            planned,
            len(never),
            shown,
        )
    return never
