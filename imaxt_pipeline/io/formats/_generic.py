"""The generic raw layout (``spec/raw-layout.md``) as a registered format: a wrapper of :mod:`..raw`."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...acquisition import TileRecord
from .. import raw
from ..urls import Location
from ._base import Reader, SourceSample


class GenericReader(Reader):
    """``acquisition.json`` + ``tiles.csv`` + ``tiles/*.tif``: read by :func:`imaxt_pipeline.io.raw.read_raw_sample`."""

    name = "generic"
    summary = "acquisition.json and tiles.csv"
    options = {"check_tiles": "open every TIFF's header while reading the table (default true)"}

    def detect(self, location: Location) -> bool:
        return location.exists("acquisition.json") or location.exists("tiles.csv")

    def read(self, location: Location, **options: Any) -> SourceSample:
        self.check_options(options)
        base = raw.read_raw_sample(
            location.url, storage_options=location.storage_options, check_tiles=bool(options.get("check_tiles", True))
        )
        return SourceSample(
            root=base.root,
            acquisition=base.acquisition,
            records=base.records,
            stage_um=base.stage_um,
            format=self.name,
            reader=self,
            location=location,
        )

    def read_tile(self, sample: SourceSample, record: TileRecord) -> np.ndarray:
        assert sample.location is not None
        return raw.read_tile(sample.location, record, sample.acquisition)
