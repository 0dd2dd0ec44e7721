"""The synth -> upload -> run fixture of the end-to-end tests, written once.

A sample is written under ``root/raw`` (simulated from :class:`~imaxt_pipeline.synth.SynthParams`,
or any raw folder already written there), uploaded to ``root/raw.zarr`` and processed into
``root/out.zarr`` by :func:`~imaxt_pipeline.pipeline.run_pipeline`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imaxt_pipeline.synth import SynthParams

from ._steps import only_steps

if TYPE_CHECKING:
    from imaxt_pipeline.pipeline import RunSummary
    from imaxt_pipeline.synth import Truth


@dataclass
class Sample:
    """An uploaded raw sample and the output it is processed into.

    ``raw`` is the raw folder, ``store`` the uploaded raw Zarr, ``out`` the output Zarr (URLs are
    local paths), ``truth`` the simulator's truth (``None`` for a sample not simulated here) and
    ``summaries`` the :class:`~imaxt_pipeline.pipeline.RunSummary` of every :meth:`run` so far.
    """

    raw: Path
    store: str
    out: str
    truth: Truth | None = None
    summaries: list[RunSummary] = field(default_factory=list)

    def config_overrides(
        self, steps: Iterable[str] | None = None, slices: list[int] | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """``load_config`` keyword arguments of a run: ``steps`` alone enabled (all when ``None``), ``slices``.

        >>> s = Sample(Path("r"), "r.zarr", "o.zarr")
        >>> kw = s.config_overrides(("mosaic",), [1], **{"steps.mosaic.levels": 2})
        >>> kw["input_url"], kw["output_url"], kw["slices"], kw["steps.mosaic.levels"]
        ('r.zarr', 'o.zarr', [1], 2)
        >>> kw["steps.mosaic.enabled"], kw["steps.stitch.enabled"]
        (True, False)
        >>> sorted(s.config_overrides())
        ['input_url', 'output_url', 'slices']
        """
        enabled = only_steps(*steps) if steps is not None else {}
        return {"input_url": self.store, "output_url": self.out, "slices": slices, **enabled, **overrides}

    def run(
        self,
        *,
        steps: Iterable[str] | None = None,
        slices: list[int] | None = None,
        client: Any = None,
        **overrides: Any,
    ) -> RunSummary:
        """Process the sample: ``load_config`` with these overrides (dotted keys), then ``run_pipeline``."""
        from imaxt_pipeline.config import load_config
        from imaxt_pipeline.pipeline import run_pipeline

        config = load_config(None, **self.config_overrides(steps, slices, **overrides))
        summary = run_pipeline(config, client=client)
        self.summaries.append(summary)
        return summary


def uploaded_sample(root: str | Path, sample: SynthParams | str | Path) -> Sample:
    """Simulate ``sample`` into ``root/raw`` (or take the raw folder ``sample``) and upload it to ``root/raw.zarr``."""
    from imaxt_pipeline.io.upload import upload

    root = Path(root)
    truth = None
    if isinstance(sample, SynthParams):
        from imaxt_pipeline.synth import synthesize

        raw = root / "raw"
        truth = synthesize(raw, sample)
    else:
        raw = Path(sample)
    store = str(root / "raw.zarr")
    upload(str(raw), store, progress=False)
    return Sample(raw=raw, store=store, out=str(root / "out.zarr"), truth=truth)


def processed_sample(
    root: str | Path,
    sample: SynthParams | str | Path,
    *,
    steps: Iterable[str] | None = None,
    slices: list[int] | None = None,
    client: Any = None,
    **overrides: Any,
) -> Sample:
    """:func:`uploaded_sample` then one :meth:`Sample.run` (``steps`` alone enabled; all when ``None``).

    ``overrides`` are dotted config keys, e.g. ``**{"steps.mosaic.levels": 2}``.
    """
    s = uploaded_sample(root, sample)
    s.run(steps=steps, slices=slices, client=client, **overrides)
    return s
