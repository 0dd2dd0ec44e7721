"""Raw acquisition formats: one reader interface, a registry, and the readers.

Every reader turns an acquisition folder (local path or fsspec URL) into the same
in-memory model, a :class:`SourceSample` (the generic
:class:`~imaxt_pipeline.acquisition.RawSample` plus the format, the tiles never acquired
and what looked suspicious); tile pixels are read through the sample, so each format
decodes its own files.

Registered formats, in detection order:

- ``tissuecyte``: TissueVision TissueCyte STPT (``Mosaic_*.txt`` + ``<SampleID>-NNNN/``),
  ``spec/tissuecyte.md``;
- ``czi``: a Zeiss Axioscan ``.czi`` mosaic (scenes = sections, tiles with stage positions),
  read through ``aicspylibczi`` (the ``formats`` extra);
- ``imc``: imaging mass cytometry, an ``.mcd`` file or ``.txt`` acquisitions, read through
  ``readimc`` (the ``formats`` extra); every acquisition its own section, float32 counts;
- ``generic``: the project's own layout (``acquisition.json`` + ``tiles.csv``),
  ``spec/raw-layout.md``, read by :func:`imaxt_pipeline.io.raw.read_raw_sample`.

Examples
--------
Reading a TissueCyte folder (it must exist, so not run as a doctest)::

    from imaxt_pipeline.io.formats import open_acquisition, describe
    sample = open_acquisition("scan/", pixel_size_um=0.56)
    print(describe(sample))
"""

from __future__ import annotations

from ._base import Reader, SourceSample, detect_format, get_reader, open_acquisition, reader_names, register_reader
from ._czi import CziReader
from ._generic import GenericReader
from ._imc import ImcReader
from ._inspect import describe
from ._mosaic import ACQ_DATE_FORMAT, TILE_PREFIX_FORMAT, MosaicFile, parse_mosaic, read_mosaic
from ._tissuecyte import INVERSE_ORIENTATION, ORIENTATIONS, TissueCyteReader, serpentine

register_reader(TissueCyteReader())
register_reader(CziReader())
register_reader(ImcReader())
register_reader(GenericReader())

__all__ = [
    "ACQ_DATE_FORMAT",
    "INVERSE_ORIENTATION",
    "ORIENTATIONS",
    "TILE_PREFIX_FORMAT",
    "CziReader",
    "GenericReader",
    "ImcReader",
    "MosaicFile",
    "Reader",
    "SourceSample",
    "TissueCyteReader",
    "describe",
    "detect_format",
    "get_reader",
    "open_acquisition",
    "parse_mosaic",
    "read_mosaic",
    "reader_names",
    "register_reader",
    "serpentine",
]
