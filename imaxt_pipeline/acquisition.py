"""Typed models shared by the readers, the steps and the service.

``Acquisition`` mirrors ``acquisition.json`` of the raw layout
(``spec/raw-layout.md``); ``RawSample`` is an in-memory, validated view of a
raw sample folder that every reader (generic layout, TissueVision) produces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Acquisition(BaseModel):
    """Acquisition metadata of one sample (``acquisition.json``).

    ``modality: coverslip`` is a 2-D tile grid on a coverslip or slide (e.g. a DAPI-only
    nuclei scan): one section, and no fiducial beads unless ``beads: true`` says otherwise, so
    the bead and register steps are skipped with one warning each.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    sample: str = Field(min_length=1)
    modality: Literal["STPT", "AXIO", "IMC", "coverslip"]
    pixel_size_um: float = Field(gt=0)
    slice_thickness_um: float = Field(gt=0)
    tile_shape: tuple[int, int]
    overlap: float = Field(ge=0, lt=1)
    channels: list[str] = Field(min_length=1)
    rows: int = Field(ge=1)
    cols: int = Field(ge=1)
    slices: int = Field(ge=1)
    optical_sections: int = Field(default=1, ge=1)

    @field_validator("tile_shape")
    @classmethod
    def _positive_shape(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 1 or v[1] < 1:
            raise ValueError(f"tile_shape must be positive, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _coverslip_is_one_section(self) -> Acquisition:
        if self.modality == "coverslip" and self.slices != 1:
            raise ValueError(f"a coverslip acquisition has one section, got slices={self.slices}")
        return self

    @field_validator("sample")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if "/" in v or "\\" in v or v in {".", ".."}:
            raise ValueError(f"sample name must not contain path separators, got {v!r}")
        return v

    @property
    def n_tiles(self) -> int:
        """Tiles per (slice, optical section, channel)."""
        return self.rows * self.cols

    @property
    def n_planes(self) -> int:
        """Number of imaged planes: slices x optical sections."""
        return self.slices * self.optical_sections

    def tile_index(self, row: int, col: int) -> int:
        """Flat tile index used along the ``tile`` axis of raw arrays (row-major)."""
        return row * self.cols + col

    def tile_grid(self, index: int) -> tuple[int, int]:
        """Inverse of :meth:`tile_index`."""
        return divmod(index, self.cols)


@dataclass(frozen=True)
class TileRecord:
    """One row of ``tiles.csv``: the file of one tile image of one channel."""

    slice: int
    z: int
    channel: int
    row: int
    col: int
    x_um: float
    y_um: float
    file: str


@dataclass
class RawSample:
    """A validated raw sample: metadata, the tile table and where it lives.

    ``stage_um`` has shape (slices, optical_sections, tiles, 2) with the
    recorded (y, x) stage position of each tile's top-left corner in µm. The
    position of channel 0 is used; channels of one tile share a position.
    """

    root: str
    acquisition: Acquisition
    records: list[TileRecord]
    stage_um: np.ndarray = field(repr=False)

    def record_for(self, slice_: int, z: int, channel: int, tile: int) -> TileRecord:
        """Return the tile record at a (slice, z, channel, tile) index."""
        return self._index[(slice_, z, channel, tile)]

    def __post_init__(self) -> None:
        acq = self.acquisition
        self._index = {(r.slice, r.z, r.channel, acq.tile_index(r.row, r.col)): r for r in self.records}
