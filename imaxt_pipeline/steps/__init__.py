"""Pipeline steps, in the order the runner calls them.

Each step is a module with a pydantic ``Params`` (defined in :mod:`.params`,
a subclass of :class:`StepParams`) and ``run(ctx: StepContext, params) ->
StepResult``. Steps never import each other: what one step hands to another
goes through the output store, read and written by
:mod:`imaxt_pipeline.io.results`. Step modules import heavy dependencies
(torch, cellpose) inside ``run``, and this package imports no step module,
so that loading the configuration stays cheap.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ._base import StepContext, StepParams, StepResult
from ._channels import check_channel_indices
from .params import STEP_PARAMS

STEP_ORDER: tuple[str, ...] = tuple(STEP_PARAMS)


def step_module(name: str) -> ModuleType:
    """Import the module implementing step ``name``."""
    if name not in STEP_ORDER:
        raise KeyError(f"unknown step {name!r}; known: {', '.join(STEP_ORDER)}")
    return importlib.import_module(f"{__name__}.{name}")


__all__ = ["STEP_ORDER", "StepContext", "StepParams", "StepResult", "check_channel_indices", "step_module"]
