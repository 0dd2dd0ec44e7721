"""What every pipeline step receives and returns."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from distributed import Client

    from ..config import RunConfig
    from ..io.output import OutputStore
    from ..io.rawzarr import RawStore


class StepParams(BaseModel):
    """Base of each step's parameter model: strict keys, on/off switch."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True


@dataclass
class StepContext:
    """Handles a step works with. Steps never open stores themselves."""

    config: "RunConfig"
    raw: "RawStore"
    output: "OutputStore"
    client: "Client"
    slices: list[int]
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("imaxt_pipeline.steps"))


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
