"""Sections as they land: a TissueCyte acquisition written section by section while the watcher runs.

When a section counts as landed is checked on a local folder (no pipeline, a fake clock). End to
end, the instrument is played by the test: it writes the root Mosaic file, then each section
folder file by file (its Mosaic file first, then the tiles) into an S3 bucket. The
watcher takes each section once it has landed (all tiles present, or the next section started),
uploads it into the same raw store and processes only the new slice. The final output must equal
a one-shot run on the finished acquisition: tile positions and slice offsets within 0.01 px and
the same cell count per section. Calibration and distortion are fixed in both runs (estimated,
they are refined as sections land while earlier sections are not reprocessed, by design).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest
import yaml
import zarr

from imaxt_pipeline.config import load_config
from imaxt_pipeline.io import results
from imaxt_pipeline.io.output import OutputStore
from imaxt_pipeline.io.upload import upload
from imaxt_pipeline.pipeline import run_pipeline
from imaxt_pipeline.service.launcher import process_sample
from imaxt_pipeline.service.live import QuietClock, Sections, is_tissuecyte, landed_sections
from imaxt_pipeline.service.state import Ledger, open_state_store
from imaxt_pipeline.service.watcher import Watcher
from imaxt_pipeline.synth import SynthParams
from imaxt_pipeline.synth._tissuecyte import synthesize_tissuecyte

DEADLINE_S = 180.0  # generous: the machine running the suite is loaded
CONFIG = {
    "steps": {
        "calibrate": {"dark": 100.0, "flat": "none", "trim": False},
        "stitch": {"estimate_distortion": False, "refine_flat": False},
        "mosaic": {"levels": 1, "qc": False},
        "cube": {"levels": 1},
        "crops": {"enabled": False},
    }
}


def _acquisition(tmp_path: Path, slices: int = 2) -> Path:
    """A finished acquisition; section 1 lacks one tile image (it lands when section 2 starts)."""
    src = tmp_path / "scan"
    params = SynthParams(
        sample="live", slices=slices, rows=2, cols=2, tile_shape=(160, 160), tissue_fraction=0.4, seed=3
    )
    synthesize_tissuecyte(src, params)
    tile = sorted((src / "live-0001").glob("*-3_01.tif"))
    assert len(tile) == 1
    tile[0].unlink()
    return src


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_section_lands_when_complete_when_the_next_starts_on_a_trigger_or_after_a_quiet_period(tmp_path):
    src = _acquisition(tmp_path, slices=3)
    dest = tmp_path / "bucket" / "live"
    clock = FakeClock()
    quiet = QuietClock(clock)

    def sections() -> Sections | None:
        fs = fsspec.filesystem("file")
        found = fs.find(str(dest), detail=True)
        listing = {k[len(str(dest)) + 1 :]: v for k, v in found.items()}
        assert is_tissuecyte(listing)
        return landed_sections(fs, str(dest), listing, quiet=quiet, quiet_seconds=60.0)

    def copy(rel: str) -> None:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dest / rel)

    dest.mkdir(parents=True)
    (dest / "Mosaic_live.txt").write_bytes((src / "Mosaic_live.txt").read_bytes()[:40])  # being written
    assert sections() is None
    copy("Mosaic_live.txt")
    assert sections() == Sections("live", 3, (), ("Mosaic_live.txt",))
    for name in sorted(p.name for p in (src / "live-0001").iterdir()):
        copy(f"live-0001/{name}")
    assert sections().landed == ()  # a tile image is missing and nothing follows
    clock.now += 59.0
    assert sections().landed == ()
    clock.now += 2.0
    assert sections().landed == (1,)  # quiet for longer than quiet_seconds
    quiet = QuietClock(clock)  # a watcher restarted: the quiet period starts again
    assert sections().landed == ()
    copy("live-0002/Mosaic_live-0002.txt")
    got = sections()
    assert got.landed == (1,) and not got.complete  # the instrument moved on
    assert "live-0002/Mosaic_live-0002.txt" not in got.files and "live-0001/Mosaic_live-0001.txt" in got.files
    tiles = sorted(p.name for p in (src / "live-0002").glob("*.tif"))
    for name in tiles[:-1]:
        copy(f"live-0002/{name}")
    assert sections().landed == (1,)
    copy(f"live-0002/{tiles[-1]}")
    assert sections().landed == (1, 2)  # every planned tile image present
    copy("live-0003/Mosaic_live-0003.txt")
    assert sections().landed == (1, 2)
    for k in (1, 2, 3):
        (dest / "trigger").mkdir(exist_ok=True)
        (dest / "trigger" / f"section{k}.tr2").write_text("")
    got = sections()
    assert got.landed == (1, 2, 3) and got.complete  # the instrument said so


# Slice 0 processed alone has no bead track across slices yet, and says so (by design).
@pytest.mark.filterwarnings("ignore:register. no bead track constrains slices:imaxt_pipeline.errors.DataWarning")
@pytest.mark.slow  # two watcher runs of the pipeline and a one-shot run
def test_sections_are_processed_as_they_land_and_equal_a_one_shot_run(tmp_path, s3_endpoint, s3_bucket, dask_client):
    src = _acquisition(tmp_path)
    url, opts = f"s3://{s3_bucket}/incoming", {"endpoint_url": s3_endpoint}
    fs, root = fsspec.core.url_to_fs(url, **opts)
    dest = f"{root}/live"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))

    def put(rel: str) -> None:
        path = f"{dest}/{rel}"
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, (src / rel).read_bytes())

    def write_section(n: int) -> float:
        folder = f"live-{n:04d}"
        put(f"{folder}/Mosaic_{folder}.txt")
        for tile in sorted((src / folder).glob("*.tif")):
            put(f"{folder}/{tile.name}")
        return time.monotonic()

    runs: list[tuple[tuple[int, ...] | None, list[int], float]] = []
    errors: list[BaseException] = []
    started: list[tuple[int, ...] | None] = []
    lock = threading.Lock()

    def action(job, cancel):  # what the pipeline child process does, here on the session's cluster
        started.append(job.sections)
        try:
            summary = process_sample(
                job.sample_url,
                job.raw_store_url,
                job.output_url,
                config_path=config,
                storage_options=opts,
                client=dask_client,
                sections=job.sections,
            )
        except BaseException as exc:
            errors.append(exc)
            raise
        with lock:
            runs.append((job.sections, [] if summary is None else list(summary.slices), time.monotonic()))

    out_dir = tmp_path / "processed"
    watcher = Watcher(
        url,
        action,
        Ledger(open_state_store(str(tmp_path / "state"))),
        storage_options=opts,
        output_prefix=str(out_dir),
        raw_prefix=str(tmp_path / "raw"),
        poll_interval=0.2,
        settle_seconds=0.5,
        lease_ttl=600.0,
    )
    put("Mosaic_live.txt")
    landed = {1: write_section(1)}  # incomplete: lands only once section 2 starts

    def watch() -> None:
        try:
            watcher.run(exit_when_settled=True)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    time.sleep(1.5)  # more than the settle interval: section 1 must not be taken while incomplete
    assert not runs, "an incomplete section with no later section was taken"

    def wait_processed(slice_: int) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and not errors:
            with lock:
                if any(slice_ in done for _, done, _ in runs):
                    return
            time.sleep(0.2)
        raise AssertionError(
            f"slice {slice_} not processed within {DEADLINE_S} s (errors: {errors}, started: {started}, runs: {runs})"
        )

    landed[2] = write_section(2)
    wait_processed(0)
    wait_processed(1)
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), "the watcher did not stop once the acquisition was complete"
    assert not errors, errors

    # Each section processed exactly once, after it landed, in order; nothing processed after the end.
    done = [s for _, slices, _ in runs for s in slices]
    assert done == [0, 1], runs
    for sections, slices, finished in runs:
        assert sections is not None and all(s + 1 in sections for s in slices)
        assert all(finished >= landed[s + 1] for s in slices)
    out = str(out_dir / "live.zarr")
    meta = zarr.open_group(out, mode="r").attrs["imaxt"]
    assert meta["complete"] is True and meta["slices_done"] == [0, 1]

    # The same acquisition in one go.
    one_raw, one_out = str(tmp_path / "one.raw.zarr"), str(tmp_path / "one.zarr")
    upload(str(src), one_raw, progress=False)
    run_pipeline(load_config(config, input_url=one_raw, output_url=one_out), client=dask_client)
    live_raw = zarr.open_group(str(tmp_path / "raw" / "live.zarr"), mode="r").attrs["imaxt"]
    one_raw_meta = zarr.open_group(one_raw, mode="r").attrs["imaxt"]
    assert live_raw["acquisition"] == one_raw_meta["acquisition"]
    assert live_raw["upload"]["tile_sha256"] == one_raw_meta["upload"]["tile_sha256"]
    assert live_raw["upload"]["missing_tiles"] == one_raw_meta["upload"]["missing_tiles"] != []

    live, once = OutputStore(out, mode="r"), OutputStore(one_out, mode="r")
    pos_live, pos_once = results.read_tile_positions(live), results.read_tile_positions(once)
    assert sorted(pos_live) == sorted(pos_once) and len(pos_live) == 2 * 4
    diff = max(np.max(np.abs(np.subtract(pos_live[k], pos_once[k]))) for k in pos_once)
    assert diff <= 0.01, f"tile positions differ by {diff:.4f} px"
    off_live, off_once = results.read_slice_offsets(live, 2), results.read_slice_offsets(once, 2)
    assert off_live is not None and off_once is not None
    np.testing.assert_allclose(off_live, off_once, atol=0.01)
    per_live = live.read_table("cells").groupby("slice").size().to_dict()
    per_once = once.read_table("cells").groupby("slice").size().to_dict()
    assert per_live == per_once and sorted(per_once) == [0, 1] and min(per_once.values()) > 0
