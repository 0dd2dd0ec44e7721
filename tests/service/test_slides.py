"""The watcher's slide step: which landed slides are taken, when, under which record, chained through what.

The registration child itself (exit status 2 -> a permanent failure) runs in ``tests/workflows/test_federate.py``.
"""

from __future__ import annotations

import pytest

from imaxt_pipeline.errors import ConfigError
from imaxt_pipeline.service.slides import SlideAction, SlideStep, slide_key
from imaxt_pipeline.service.state import Ledger, LocalStateStore
from imaxt_pipeline.service.watcher import Watcher


def _done(ledger, key):
    ledger.observe(key, "inputs")
    claimed = ledger.claim(key, "w", ttl=60)
    assert ledger.finish(key, "w", token=claimed.lease_token).status == "done"


def _never(job, cancel):
    raise AssertionError(f"not a sample: {job.sample}")


@pytest.fixture
def bucket(tmp_path):
    root = tmp_path / "bucket"
    folder = root / "slides" / "synth"
    folder.mkdir(parents=True)
    for name in ("a.czi", "b.tif", "a_roi1.mcd", ".partial.czi", "notes.md"):
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.czi").write_bytes(b"x")
    (root / "slides" / "_COMPLETE").write_bytes(b"")  # would land a folder as a sample
    return root


def test_slides_wait_for_their_sample_then_imc_waits_for_the_slides_and_chains_through_its_own(bucket, tmp_path):
    ledger = Ledger(LocalStateStore(tmp_path / "state"))
    watcher = Watcher(str(bucket), _never, ledger, slides=SlideStep())
    assert watcher._find() == []  # the sample is not processed yet; the slides folder is never a sample

    _done(ledger, "synth")
    found = {x.sample: x for x in watcher._find()}
    assert set(found) == {slide_key("synth", "a.czi"), slide_key("synth", "b.tif")}  # IMC waits for them
    a = found[slide_key("synth", "a.czi")].action
    assert isinstance(a, SlideAction) and a.via is None
    assert a.reference == f"{bucket}/_imaxt/processed/synth.zarr"
    assert a.out_url == f"{bucket}/_imaxt/processed/slides/synth/a.zarr"
    assert a.argv()[3:] == ["register-modality", f"{bucket}/slides/synth/a.czi", "--reference", a.reference,
                            "--out", a.out_url]  # fmt: skip
    # the watcher's events (started, finished) name the store the slide run writes
    state = ledger.observe(slide_key("synth", "a.czi"), "inputs")
    assert watcher.job_for(found[slide_key("synth", "a.czi")], state).output_url == a.out_url

    _done(ledger, slide_key("synth", "a.czi"))
    assert slide_key("synth", "a_roi1.mcd") not in {x.sample for x in watcher._find()}  # b.tif not done yet
    _done(ledger, slide_key("synth", "b.tif"))
    (imc,) = [x for x in watcher._find() if x.sample == slide_key("synth", "a_roi1.mcd")]
    assert imc.action.via is None  # a.czi named it, but its store is not there
    store = bucket / "_imaxt" / "processed" / "slides" / "synth" / "a.zarr"
    store.mkdir(parents=True)
    (store / "zarr.json").write_text("{}")
    (imc2,) = [x for x in watcher._find() if x.sample == slide_key("synth", "a_roi1.mcd")]
    assert imc2.action.via == str(store) and "--via" in imc2.action.argv()
    assert imc2.checksum != imc.checksum  # chained now: another input

    # a slide re-copied (new size/mtime) is a new version, taken again; the same file is the same record
    before = {x.sample: x.checksum for x in watcher._find()}
    (bucket / "slides" / "synth" / "b.tif").write_bytes(b"xy")
    after = {x.sample: x.checksum for x in watcher._find()}
    assert after[slide_key("synth", "b.tif")] != before[slide_key("synth", "b.tif")]
    assert after[slide_key("synth", "a.czi")] == before[slide_key("synth", "a.czi")]


@pytest.mark.parametrize("prefix", ["", "_slides", "a/b", ".x"])
def test_the_slides_prefix_is_one_plain_folder(prefix):
    with pytest.raises(ConfigError, match="slides prefix"):
        SlideStep(prefix)
