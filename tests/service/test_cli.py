"""The `imaxt` command line: upload + run against an existing scheduler, error handling."""

from __future__ import annotations

import zarr

from imaxt_pipeline.service.cli import main

from imaxt_pipeline.testing._raw import write_raw_sample


def test_upload_then_run_on_existing_scheduler(tmp_path, dask_client, capsys):
    sample = write_raw_sample(tmp_path / "raw", slices=2, rows=1, cols=2, tile=40)
    store, out = str(tmp_path / "raw.zarr"), str(tmp_path / "out.zarr")
    assert main(["upload", str(sample), store, "--no-progress"]) == 0
    assert "8 tiles written" in capsys.readouterr().out
    config = tmp_path / "run.yaml"
    config.write_text("steps:\n  mosaic:\n    levels: 1\n" + "".join(
        f"  {s}:\n    enabled: false\n" for s in
        ("calibrate", "stitch", "beads", "register", "cube", "segment", "catalogue", "crops")))
    code = main(["run", store, "--out", out, "--config", str(config), "--slices", "1",
                 "--scheduler", dask_client.scheduler.address])
    assert code == 0, capsys.readouterr().err
    meta = zarr.open_group(out, mode="r").attrs["imaxt"]
    assert meta["slices_done"] == [1] and meta["complete"] is False
    assert [p["slices"] for p in meta["provenance"]] == [[1]]
    mosaic = zarr.open_group(out, mode="r")["mosaic/0"]
    assert mosaic[:, 0].max() == 0 and mosaic[:, 1].max() > 0


def test_run_with_bad_slice_is_one_line_error(tmp_path, capsys):
    sample = write_raw_sample(tmp_path / "raw", slices=1, rows=1, cols=1, tile=16)
    store = str(tmp_path / "raw.zarr")
    main(["upload", str(sample), store, "--no-progress"])
    code = main(["run", store, "--out", str(tmp_path / "o.zarr"), "--slices", "3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "imaxt run: error: slices [3] outside 0..0 of sample 'tiny'"
    assert not (tmp_path / "o.zarr").exists()
