"""The reader interface, the sample it returns and the format registry."""

from __future__ import annotations

import posixpath
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ...acquisition import RawSample, TileRecord
from ...errors import InputError
from ..urls import Location


@dataclass
class SourceSample(RawSample):
    """A :class:`~imaxt_pipeline.acquisition.RawSample` as read from one source format.

    Besides the acquisition model, the tile records and the stage positions it knows
    which reader made it (tile pixels are read through :meth:`read_tile`, so a
    compressed ``.tif.gz`` tile is decompressed), the tiles that were planned but never
    acquired and what looked suspicious while reading.

    Attributes
    ----------
    format : str
        Name of the reader (``"generic"``, ``"tissuecyte"``).
    missing_tiles : list of str
        ``"slice/z/channel/tile"`` keys (as in the raw store's checksum table) of tiles
        the instrument never acquired: no record, no file; their stage position is in
        ``stage_um`` all the same.
    notes : list of str
        One line per suspicious finding (restarts, header disagreements, positions off
        the grid, ...); never fatal.
    details : dict
        Reader-specific facts for ``imaxt inspect`` (e.g. section numbers, header keys used).
    """

    format: str = "generic"
    missing_tiles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    reader: Reader | None = field(default=None, repr=False, compare=False)
    location: Location | None = field(default=None, repr=False, compare=False)

    def read_tile(self, record: TileRecord) -> np.ndarray:
        """Decode one tile's pixels (uint16, ``acquisition.tile_shape``) through its reader.

        Raises
        ------
        InputError
            If the file is missing, not a tile of the declared dtype and shape, or corrupt.
        """
        if self.reader is None or self.location is None:
            raise TypeError("this sample was not made by a reader; use open_acquisition()")
        return self.reader.read_tile(self, record)


class Reader(ABC):
    """One raw acquisition format: recognise it, read it into a :class:`SourceSample`.

    Subclasses set :attr:`name` (the ``--format`` value) and :attr:`options` (the
    keyword options :meth:`read` accepts, with a one-line description each).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    options: ClassVar[Mapping[str, str]] = {}

    @abstractmethod
    def detect(self, location: Location) -> bool:
        """Whether ``location`` looks like an acquisition in this format (cheap: listing only)."""

    @abstractmethod
    def read(self, location: Location, **options: Any) -> SourceSample:
        """Read and validate the acquisition's metadata and tile table.

        Raises
        ------
        InputError
            On input that cannot be read, naming the file and the problem.
        """

    @abstractmethod
    def read_tile(self, sample: SourceSample, record: TileRecord) -> np.ndarray:
        """Decode the pixels of one tile of ``sample``."""

    def check_options(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise TypeError(f"format {self.name!r} has no option(s) {', '.join(unknown)} (known: {known})")


_READERS: dict[str, Reader] = {}


def register_reader(reader: Reader) -> Reader:
    """Add a reader to the registry (it replaces one of the same name); returns it."""
    if not isinstance(reader, Reader):
        raise TypeError(f"reader must be a Reader instance, got {type(reader).__name__}")
    _READERS[reader.name] = reader
    return reader


def reader_names() -> tuple[str, ...]:
    """Names of the registered formats, in detection order."""
    return tuple(_READERS)


def get_reader(name: str) -> Reader:
    """The reader registered as ``name``.

    Raises
    ------
    ValueError
        If no reader has that name.
    """
    try:
        return _READERS[name]
    except KeyError:
        raise ValueError(f"unknown raw format {name!r} (known: {', '.join(_READERS)})") from None


def detect_format(url: str, *, storage_options: Mapping[str, Any] | None = None) -> str:
    """Name of the one registered format whose reader recognises ``url``.

    Raises
    ------
    InputError
        If no format, or more than one, recognises the folder.
    """
    return _detect(Location(url, storage_options))


def _detect(loc: Location) -> str:
    found = [name for name, reader in _READERS.items() if reader.detect(loc)]
    if not found:
        looks = "; ".join(f"{r.name}: {r.summary}" for r in _READERS.values())
        raise InputError(loc.url, f"no known raw acquisition layout here (looked for {looks})")
    if len(found) > 1:
        raise InputError(loc.url, f"looks like more than one raw layout ({', '.join(found)}); choose one with --format")
    return found[0]


def open_acquisition(
    url: str,
    format: str | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    **reader_options: Any,
) -> SourceSample:
    """Read the raw acquisition at ``url`` (local path or fsspec URL) with the reader of its format.

    Parameters
    ----------
    url : str
        The acquisition folder.
    format : str, optional
        A registered format name; detected from the folder's files when omitted.
    storage_options : dict, optional
        fsspec options (``endpoint_url`` for S3-compatible servers).
    **reader_options
        Options of that format's reader (``Reader.options``), e.g. ``pixel_size_um``.

    Raises
    ------
    InputError
        If the folder is in no known format or breaks its format's contract.
    ValueError
        If ``format`` is not a registered format.
    TypeError
        If an option is not one the reader accepts.
    """
    loc = Location(url, storage_options)
    name = _detect(loc) if format is None else format
    reader = get_reader(name)
    reader.check_options(reader_options)
    return reader.read(loc, **reader_options)


def first_error(exc: Exception) -> str:
    """The first problem of a validation error (pydantic's ``errors()``) or the first line of any other."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        err = errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "value"
        return f"{where}: {err['msg']}"
    return str(exc).splitlines()[0]


def file_stem(path: str, suffix: str, default: str) -> str:
    """A sample name from a file name: ``suffix`` (a regex, e.g. ``r"\\.czi"``) removed, odd characters replaced."""
    name = posixpath.basename(path.rstrip("/"))
    stem = re.sub(rf"{suffix}$", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or default
