"""What every pipeline step receives and returns."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .params import StepParams

if TYPE_CHECKING:
    from distributed import Client

    from ..io.output import OutputStore
    from ..io.rawzarr import RawStore

__all__ = ["StepContext", "StepParams", "StepResult"]


@dataclass
class StepContext:
    """Handles a step works with. Steps never open stores themselves.

    Attributes
    ----------
    raw : RawStore
        The uploaded raw sample (tiles, stage positions, acquisition).
    output : OutputStore
        The processed store; steps read and write it through
        :mod:`imaxt_pipeline.io.results`.
    client : distributed.Client
        Where the step's tasks run.
    slices : list of int
        Slices to process now (live processing: the ones that just landed).
    storage_options : dict
        fsspec options for any other URL a step reads (e.g. a calibration file).
    log : logging.Logger
    """

    raw: RawStore
    output: OutputStore
    client: Client
    slices: list[int]
    storage_options: dict[str, Any] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("imaxt_pipeline.steps"))

    def planes(self) -> list[tuple[int, int]]:
        """(slice, plane) pairs to process now: every optical section of every slice in ``slices``."""
        n = self.raw.acquisition.optical_sections
        return [(s, s * n + z) for s in self.slices for z in range(n)]


@dataclass
class StepResult:
    """What a step reports back to the runner for its provenance entry.

    ``inputs`` are URLs or checksums read; ``outputs`` are paths written inside
    the output store; ``metrics`` are small JSON-able numbers (e.g. residuals).
    ``rewritten_slices`` are slices outside ``ctx.slices`` whose outputs this
    step changed (e.g. cube planes moved by a refined registration): the
    runner hands them to every later step so that nothing downstream is stale.
    """

    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    rewritten_slices: list[int] = field(default_factory=list)
