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

import logging
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
from imaxt_pipeline.service.live import (
    ENDED_KEY,
    QuietClock,
    Sections,
    end_acquisition,
    is_tissuecyte,
    landed_sections,
)
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


# -- an acquisition that stops short of its planned sections ------------------------
def _planned(src: Path, sample: str, sections: int) -> None:
    """Say the root Mosaic file requested ``sections`` (more than the instrument will acquire)."""
    root = src / f"Mosaic_{sample}.txt"
    lines = [f"sections:{sections}" if ln.startswith("sections:") else ln for ln in root.read_text().splitlines()]
    root.write_text("\n".join(lines) + "\n")


def test_an_acquisition_ends_short_on_an_end_marker_or_after_a_long_quiet_period(tmp_path):
    src = _acquisition(tmp_path, slices=2)  # section 1 lacks a tile image
    _planned(src, "live", 4)
    dest = tmp_path / "bucket" / "live"
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("truth"))
    started = sorted((dest / "live-0002").glob("*.tif"))
    for tile in started[2:]:
        tile.unlink()  # section 2 stopped after two tile images
    clock = FakeClock()
    quiet = QuietClock(clock)
    fs = fsspec.filesystem("file")

    def sections(**kw) -> Sections | None:
        found = fs.find(str(dest), detail=True)
        listing = {k[len(str(dest)) + 1 :]: v for k, v in found.items()}
        return landed_sections(fs, str(dest), listing, quiet=quiet, quiet_seconds=600.0, **kw)

    hours = 3 * 3600.0
    got = sections(acquisition_quiet_seconds=hours)
    assert got.landed == (1,) and got.ended is None and not got.complete
    clock.now += 601.0
    got = sections(acquisition_quiet_seconds=hours)
    assert got.landed == (1, 2) and got.ended is None and not got.complete  # a quiet section, not the end
    clock.now += hours - 602.0
    assert not sections(acquisition_quiet_seconds=hours).complete
    assert not sections(acquisition_quiet_seconds=None).complete  # never ends on quiet alone
    clock.now += 2.0
    got = sections(acquisition_quiet_seconds=hours)
    assert got == Sections("live", 4, (1, 2), got.files, ended="quiet") and got.complete
    shutil.copyfile(src / "live-0002" / started[2].name, started[2])  # the instrument went on after all
    got = sections(acquisition_quiet_seconds=hours)
    assert got.ended is None and not got.complete
    clock.now += hours + 1.0
    assert sections(acquisition_quiet_seconds=hours).ended == "quiet"

    # An end marker ends it at once; a started section lands with what it has.
    quiet = QuietClock(clock)
    (dest / "live-0003").mkdir()
    (dest / "live-0003" / "Mosaic_live-0003.txt").write_bytes(
        (dest / "live-0002" / "Mosaic_live-0002.txt").read_bytes()
    )
    assert sections(acquisition_quiet_seconds=hours).landed == (1, 2)
    (dest / "_COMPLETE").write_text("")
    got = sections(acquisition_quiet_seconds=hours)
    assert got.landed == (1, 2, 3) and got.ended == "marker" and got.complete
    assert "_COMPLETE" not in got.files and "live-0003/Mosaic_live-0003.txt" in got.files
    # Every requested section there: complete as planned, not ended early.
    _planned(dest, "live", 3)
    got = sections(acquisition_quiet_seconds=hours)
    assert got.complete and got.ended is None


def test_an_acquisition_that_stopped_short_is_complete_with_the_sections_it_has(tmp_path, dask_client, caplog):
    from imaxt_pipeline.steps import STEP_ORDER

    bucket = tmp_path / "bucket"
    for name, acquired in (("quiet", 2), ("aborted", 2)):
        params = SynthParams(sample=name, slices=acquired, rows=2, cols=2, tile_shape=(48, 48), seed=11)
        synthesize_tissuecyte(tmp_path / name, params)
        _planned(tmp_path / name, name, 3)
        shutil.copytree(tmp_path / name, bucket / name, ignore=shutil.ignore_patterns("truth"))
    for tile in sorted((bucket / "aborted" / "aborted-0002").glob("*.tif"))[3:]:
        tile.unlink()  # aborted during section 2
    config = tmp_path / "config.yaml"  # the processing is not what is tested here: every step off
    config.write_text(yaml.safe_dump({"steps": {name: {"enabled": False} for name in STEP_ORDER}}))
    jobs = []

    def action(job, cancel):
        jobs.append((job.sample, job.sections, job.acquisition_ended))
        process_sample(
            job.sample_url,
            job.raw_store_url,
            job.output_url,
            config_path=config,
            client=dask_client,
            sections=job.sections,
            acquisition_ended=job.acquisition_ended,
        )

    hours = 2 * 3600.0
    watcher = Watcher(
        str(bucket),
        action,
        Ledger(open_state_store(str(tmp_path / "state"))),
        output_prefix=str(tmp_path / "processed"),
        raw_prefix=str(tmp_path / "raw"),
        acquisition_quiet_seconds=hours,
    )
    clock = FakeClock()
    watcher._quiet = QuietClock(clock)  # hours of quiet without waiting for them

    def output(name: str) -> dict:
        return dict(zarr.open_group(str(tmp_path / "processed" / f"{name}.zarr"), mode="r").attrs["imaxt"])

    watcher.poll_once()
    assert sorted(jobs) == [("aborted", (1,), False), ("quiet", (1, 2), False)]
    assert output("quiet")["complete"] is False and not watcher.all_settled()
    (bucket / "aborted" / "_COMPLETE").write_text("")
    jobs.clear()
    with caplog.at_level(logging.WARNING, logger="imaxt"):
        watcher.poll_once()
    assert jobs == [("aborted", (1, 2), True)]
    aborted = output("aborted")
    assert aborted["complete"] is True and aborted["slices_done"] == [0, 1]
    assert aborted[ENDED_KEY] == {"sections": [1, 2], "planned": 3, "never_acquired": [3]}
    raw = zarr.open_group(str(tmp_path / "raw" / "aborted.zarr"), mode="r").attrs["imaxt"]["upload"]
    assert len([k for k in raw["missing_tiles"] if k.startswith("1/")]) == 8 - 3
    ended = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "acquisition_complete"]
    assert len(ended) == 1 and ended[0].levelno == logging.WARNING
    assert ended[0].fields["never_acquired"] == 1 and ended[0].fields["ended"] == "marker"
    warned = [r.getMessage() for r in caplog.records if r.name == "imaxt.live"]
    assert len(warned) == 1 and "2 of its 3 planned sections: 1 never came (3)" in warned[0]

    jobs.clear()
    clock.now += hours - 1.0
    watcher.poll_once()
    assert not jobs and output("quiet")["complete"] is False and not watcher.all_settled()
    clock.now += 2.0
    watcher.poll_once()  # nothing new for two hours: the acquisition is over
    assert jobs == [("quiet", (1, 2), True)]
    quiet = output("quiet")
    assert quiet["complete"] is True and quiet[ENDED_KEY]["never_acquired"] == [3]
    assert quiet["slices_done"] == [0, 1]
    jobs.clear()
    watcher.poll_once()
    assert not jobs and watcher.all_settled()  # each run once; the watcher may exit


def test_ending_an_acquisition_never_creates_an_output(tmp_path):
    with pytest.raises(FileNotFoundError):
        end_acquisition(str(tmp_path / "none.zarr"), [1, 2])
    assert not (tmp_path / "none.zarr").exists()
