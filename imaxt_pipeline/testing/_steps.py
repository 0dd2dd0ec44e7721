"""Config overrides that switch on exactly the named pipeline steps."""

from __future__ import annotations

from imaxt_pipeline.steps import STEP_ORDER


def only_steps(*names: str) -> dict[str, bool]:
    """Dotted ``steps.<name>.enabled`` overrides for ``load_config``: these steps on, every other step off.

    >>> on = only_steps("stitch", "mosaic")
    >>> sorted(k.split(".")[1] for k, v in on.items() if v)
    ['mosaic', 'stitch']
    >>> len(on) == len(STEP_ORDER), on["steps.calibrate.enabled"]
    (True, False)
    >>> only_steps("stich")
    Traceback (most recent call last):
    ...
    KeyError: "unknown steps ['stich']"
    """
    unknown = set(names) - set(STEP_ORDER)
    if unknown:
        raise KeyError(f"unknown steps {sorted(unknown)}")
    return {f"steps.{step}.enabled": step in names for step in STEP_ORDER}
