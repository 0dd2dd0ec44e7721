"""``Mosaic_*.txt``: TissueVision's ``key:value`` metadata files (``spec/tissuecyte.md``)."""

from __future__ import annotations

import codecs
import datetime as _dt
import math
import re
from dataclasses import dataclass, field

from ...errors import InputError
from ..urls import Location

MAX_MOSAIC_BYTES = 16 << 20
"""Largest Mosaic file accepted (a 100 x 100 grid is ~40 kB)."""
ACQ_DATE_FORMAT = "%m/%d/%Y %I:%M:%S %p"
"""``acqDate`` as written by the instrument (12-hour clock), e.g. ``5/7/2024 1:05:09 PM``."""
TILE_PREFIX_FORMAT = "%m%d%Y-%H%M"
"""Tile file prefix made from ``acqDate`` (24-hour clock)."""

_POS = re.compile(r"([XY])Pos(-?\d*)")
_INT = re.compile(r"[+-]?\d+")

LEGACY_KEYS = {"xres": "xres_um", "yres": "yres_um", "zres": "zscan_resolution_um", "sectionres": "section_depth"}
"""Keys of files before Nov 2024 and the ones that replace them (normalised: lower case, no spaces)."""


def norm_key(key: str) -> str:
    """Header keys compared without case and spaces (``Sample ID`` == ``SampleID``)."""
    return "".join(key.split()).lower()


@dataclass
class MosaicFile:
    """One parsed Mosaic file: header values (raw text, by normalised key) and stage positions."""

    path: str
    header: dict[str, str]
    lines: dict[str, int]
    xpos: list[int] = field(default_factory=list)
    ypos: list[int] = field(default_factory=list)
    ignored_lines: int = 0

    def has(self, key: str) -> bool:
        return norm_key(key) in self.header

    def text(self, key: str, default: str | None = None) -> str:
        value = self.header.get(norm_key(key))
        if value is None:
            if default is not None:
                return default
            raise InputError(self.path, f"no {key!r} key")
        return value

    def integer(self, key: str, default: int | None = None, *, minimum: int | None = 0) -> int:
        k = norm_key(key)
        if k not in self.header:
            if default is not None:
                return default
            raise InputError(self.path, f"no {key!r} key")
        value = self.header[k]
        if not _INT.fullmatch(value):
            raise InputError(self.path, f"line {self.lines[k]}: {key} is {_short(value)!r}, not an integer")
        out = int(value)
        if minimum is not None and out < minimum:
            raise InputError(self.path, f"line {self.lines[k]}: {key} is {out}, must be at least {minimum}")
        return out

    def number(self, *keys: str) -> tuple[float, str] | None:
        """The first of ``keys`` present, as a positive finite float, with the key found; ``None`` if none is."""
        for key in keys:
            k = norm_key(key)
            if k in self.header:
                value = self.header[k]
                try:
                    out = float(value)
                except ValueError:
                    raise InputError(
                        self.path, f"line {self.lines[k]}: {key} is {_short(value)!r}, not a number"
                    ) from None
                if not math.isfinite(out) or out <= 0:
                    raise InputError(self.path, f"line {self.lines[k]}: {key} is {out:g}, must be positive")
                return out, key
        return None

    def acq_date(self) -> _dt.datetime | None:
        if not self.has("acqDate"):
            return None
        k = norm_key("acqDate")
        value = self.header[k]
        try:
            return _dt.datetime.strptime(" ".join(value.split()), ACQ_DATE_FORMAT)
        except ValueError:
            raise InputError(
                self.path, f"line {self.lines[k]}: acqDate {_short(value)!r} is not M/D/YYYY h:mm:ss AM"
            ) from None


def read_mosaic(loc: Location, name: str) -> MosaicFile:
    """Read and parse ``name`` (relative to ``loc``).

    Lines are split at the first colon; keys may hold spaces and values colons. Lines
    ``XPos<step>:<pos>`` / ``YPos<step>:<pos>`` give the stage positions in order.

    Raises
    ------
    InputError
        If the file is missing, too large, not text, or a position line is not an integer.
    """
    path = loc.join(name)
    try:
        size = loc.fs.size(loc.path(name))
        if size is not None and size > MAX_MOSAIC_BYTES:
            raise InputError(path, f"file is {size} bytes, more than the {MAX_MOSAIC_BYTES} allowed")
        raw = bytes(loc.fs.cat_file(loc.path(name)))
    except FileNotFoundError:
        raise InputError(path, "file is missing") from None
    except IsADirectoryError:
        raise InputError(path, "is not a regular file") from None
    except InputError:
        raise
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    return parse_mosaic(path, raw)


def parse_mosaic(path: str, raw: bytes) -> MosaicFile:
    """Parse the bytes of a Mosaic file (see :func:`read_mosaic`)."""
    text = _decode(path, raw)
    out = MosaicFile(path=path, header={}, lines={})
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            out.ignored_lines += 1
            continue
        key, value = key.strip(), value.strip()
        pos = _POS.fullmatch(key)
        if pos:
            if not _INT.fullmatch(value):
                raise InputError(path, f"line {lineno}: stage position {_short(value)!r} is not an integer")
            (out.xpos if pos.group(1) == "X" else out.ypos).append(int(value))
            continue
        k = norm_key(key)
        if k and k not in out.header:  # the first value of a repeated key counts
            out.header[k] = value
            out.lines[k] = lineno
    if not out.header:
        raise InputError(path, "no key:value lines; is it a Mosaic file?")
    return out


def _decode(path: str, raw: bytes) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise InputError(path, "is not valid UTF-16 text") from None
    if b"\x00" in raw:
        raise InputError(path, "contains NUL bytes; is it really a Mosaic text file?")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # Windows instrument PCs; every byte decodes


def _short(text: str, limit: int = 60) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."
