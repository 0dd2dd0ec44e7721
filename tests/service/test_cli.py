"""The `imaxt` command line: upload + run against an existing scheduler, error handling, shared options."""

from __future__ import annotations

import argparse
import importlib.metadata

import pytest
import zarr

import imaxt_pipeline
from imaxt_pipeline.io.storage import ENDPOINT_ENV, url_to_fs
from imaxt_pipeline.service import cli
from imaxt_pipeline.service.cli import main
from imaxt_pipeline.service.launcher import load_run_config
from imaxt_pipeline.testing._raw import write_raw_sample


@pytest.mark.slow
def test_upload_then_run_on_existing_scheduler(tmp_path, dask_client, capsys):
    sample = write_raw_sample(tmp_path / "raw", slices=2, rows=1, cols=2, tile=40)
    store, out = str(tmp_path / "raw.zarr"), str(tmp_path / "out.zarr")
    assert main(["upload", str(sample), store, "--no-progress"]) == 0
    assert "8 tiles written" in capsys.readouterr().out
    config = tmp_path / "run.yaml"
    config.write_text(
        "steps:\n  mosaic:\n    levels: 1\n"
        + "".join(
            f"  {s}:\n    enabled: false\n"
            for s in ("calibrate", "stitch", "beads", "register", "cube", "segment", "catalogue", "crops")
        )
    )
    code = main(
        [
            "run",
            store,
            "--out",
            out,
            "--config",
            str(config),
            "--slices",
            "1",
            "--scheduler",
            dask_client.scheduler.address,
        ]
    )
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


# -- options every command shares ------------------------------------------------
# The commands that take storage flags, with their other required arguments.
STORAGE_COMMANDS = {
    "upload": ["upload", "raw", "dest.zarr"],
    "run": ["run", "in.zarr", "--out", "out.zarr"],
    "watch": ["watch", "bucket"],
    "status": ["status", "bucket"],
    "submit": ["submit", "raw", "--out", "out.zarr"],
    "process": ["process", "raw", "--out", "out.zarr"],
    "verify": ["verify", "store.zarr"],
    "calibrate-distortion": ["calibrate-distortion", "raw", "cal.npz", "--stage-sigma-px", "0.1"],
    "inspect": ["inspect", "raw"],
    "export-spatialdata": ["export-spatialdata", "store.zarr", "out.zarr"],
    "register-modality": ["register-modality", "slide.czi", "--reference", "stpt.zarr", "--out", "slide.zarr"],
}


def _subparsers(parser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def capture_handler(monkeypatch, command: str) -> list[argparse.Namespace]:
    """Make ``main`` run everything up to ``command``'s handler, and record what the handler gets."""
    seen: list[argparse.Namespace] = []
    real = cli.build_parser

    def build_parser():
        parser = real()
        _subparsers(parser)[command].set_defaults(handler=lambda args: seen.append(args) or 0, json_events=False)
        return parser

    monkeypatch.setattr(cli, "build_parser", build_parser)
    return seen


def test_every_command_with_storage_flags_is_covered():
    with_flags = {
        name
        for name, p in _subparsers(cli.build_parser()).items()
        if any("--endpoint-url" in a.option_strings for a in p._actions)
    }
    assert with_flags == set(STORAGE_COMMANDS)


@pytest.mark.parametrize("command", sorted(STORAGE_COMMANDS))
@pytest.mark.parametrize(
    ("env", "flags", "expected"),
    [
        (None, [], {}),
        ("http://env:9000", [], {"endpoint_url": "http://env:9000"}),
        (
            "http://env:9000",
            ["--storage-options", '{"anon": false, "endpoint_url": "http://json:9000"}'],
            {"anon": False, "endpoint_url": "http://json:9000"},
        ),
        (
            "http://env:9000",
            ["--storage-options", '{"anon": false}', "--endpoint-url", "http://flag:9000"],
            {"anon": False, "endpoint_url": "http://flag:9000"},
        ),
        (
            None,
            [
                "--storage-options",
                '{"client_kwargs": {"endpoint_url": "http://json:9000", "region_name": "x"}}',
                "--endpoint-url",
                "http://flag:9000",
            ],
            {"client_kwargs": {"region_name": "x"}, "endpoint_url": "http://flag:9000"},
        ),
    ],
    ids=["none", "env", "json-over-env", "flag-over-all", "flag-over-client-kwargs"],
)
def test_storage_options_combine_the_same_way_on_every_command(monkeypatch, command, env, flags, expected):
    if env is None:
        monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    else:
        monkeypatch.setenv(ENDPOINT_ENV, env)
    seen = capture_handler(monkeypatch, command)
    assert cli.main([*STORAGE_COMMANDS[command], *flags]) == 0
    (args,) = seen
    assert args.storage_options == expected
    assert not hasattr(args, "endpoint_url")  # handlers see only the resolved options


@pytest.mark.parametrize("command", sorted(STORAGE_COMMANDS))
@pytest.mark.parametrize("text", ["{bad", "[1, 2]"])
def test_bad_storage_options_are_one_line_errors(monkeypatch, capsys, command, text):
    seen = capture_handler(monkeypatch, command)
    assert cli.main([*STORAGE_COMMANDS[command], "--storage-options", text]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"imaxt {command}: error: --storage-options ") and err.count("\n") == 1
    assert text in err and seen == []


def test_upload_honours_the_endpoint_environment(monkeypatch, tmp_path, s3_endpoint, s3_bucket, capsys):
    sample = write_raw_sample(tmp_path / "raw", slices=1, rows=1, cols=2, tile=16)
    monkeypatch.setenv(ENDPOINT_ENV, s3_endpoint)
    assert main(["upload", str(sample), f"s3://{s3_bucket}/raw.zarr", "--no-progress"]) == 0, capsys.readouterr().err
    assert "4 tiles written" in capsys.readouterr().out  # 2 tiles x 2 channels
    fs, path = url_to_fs(f"s3://{s3_bucket}/raw.zarr", {"endpoint_url": s3_endpoint})
    assert fs.exists(f"{path}/zarr.json")


def test_run_merges_flags_over_the_config_file(monkeypatch, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text('storage_options: {endpoint_url: "http://cfg:9000", anon: true}\n')
    monkeypatch.setenv(ENDPOINT_ENV, "http://env:9000")
    cfg = load_run_config(config, storage_options={}, input_url="i", output_url="o")
    assert cfg.storage_options == {"anon": True, "endpoint_url": "http://env:9000"}
    seen = capture_handler(monkeypatch, "run")
    cli.main(["run", "i", "--out", "o", "--config", str(config), "--endpoint-url", "http://flag:9000"])
    cfg = load_run_config(config, storage_options=seen[0].storage_options, input_url="i", output_url="o")
    assert cfg.storage_options == {"anon": True, "endpoint_url": "http://flag:9000"}


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"imaxt {imaxt_pipeline.__version__}\n"
    assert imaxt_pipeline.__version__ == importlib.metadata.version("imaxt-pipeline")
