"""Placeholder for the `stitch` step (being implemented; disabled by default)."""

from __future__ import annotations

from ._base import StepContext, StepParams, StepResult


class Params(StepParams):
    enabled: bool = False


def run(ctx: StepContext, params: Params) -> StepResult:
    raise NotImplementedError("step 'stitch' is not implemented yet")
