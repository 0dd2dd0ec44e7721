"""The embedded default: synthetic sample -> upload to a local bucket -> full pipeline -> federation.

After the STPT pipeline, one Axioscan slide (CZI) of the middle section and one IMC acquisition
(MCD) of a window of it are simulated under ``incoming/slides/<sample>/`` and registered onto the
processed cube (the IMC through the slide) into ``bucket/slides/``; the summary prints the
section found against the truth, the matched beads and the held-out residuals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_config
from ..io.upload import upload
from ..pipeline import run_pipeline
from ._federation_demo import demo_federation
from ._figures import DemoFigures, FederationFigures, demo_figures


@dataclass
class DemoResult:
    raw_dir: Path
    bucket_store: str
    output: str
    seconds: dict[str, float] = field(default_factory=dict)
    figures: DemoFigures | None = None
    federation: list[FederationFigures] = field(default_factory=list)
    slides: str | None = None

    def describe(self) -> str:
        times = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        return (
            f"demo finished ({times})\n"
            f"  raw sample + truth : {self.raw_dir}\n"
            f"  raw Zarr (bucket)  : {self.bucket_store}\n"
            f"  processed OME-Zarr : {self.output}\n"
            f"  QC plots           : {self.output}/qc/"
            + (f"\n  registered slides  : {self.slides}" if self.slides else "")
            + (f"\naccuracy against the simulator's truth:\n{self.figures.describe()}" if self.figures else "")
            + (
                "\nslides registered onto the STPT cube:\n" + "\n".join(f.describe() for f in self.federation)
                if self.federation
                else ""
            )
        )


def run_demo(directory: Path, *, n_workers: int = 2, synth_params=None) -> DemoResult:
    """Run the whole chain in ``directory`` (created if needed) on a LocalCluster."""
    from ..synth import demo_params, synthesize

    directory = Path(directory).resolve()
    params = synth_params or demo_params()
    raw_dir = directory / "incoming" / params.sample
    bucket = directory / "bucket"
    store = str(bucket / "raw" / f"{params.sample}.zarr")
    output = str(bucket / "processed" / f"{params.sample}.zarr")
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    truth = synthesize(raw_dir, params)
    seconds["synth"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    upload(str(raw_dir), store, progress=True)
    seconds["upload"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    config = load_config(None, input_url=store, output_url=output, **{"cluster.n_workers": n_workers})
    run_pipeline(config)
    seconds["pipeline"] = time.perf_counter() - t0
    figures = demo_figures(output, raw_dir / "truth")

    t0 = time.perf_counter()
    slides = bucket / "slides"
    federation = demo_federation(truth, output, directory / "incoming" / "slides" / params.sample, slides)
    seconds["federation"] = time.perf_counter() - t0
    return DemoResult(
        raw_dir=raw_dir,
        bucket_store=store,
        output=output,
        seconds=seconds,
        figures=figures,
        federation=federation,
        slides=str(slides),
    )
