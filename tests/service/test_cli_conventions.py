"""What a user of the CLI expects of it: shell completion, JSON logs for every logger and the watcher's events,
``imaxt open``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imaxt_pipeline.service.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[2]


def _subcommands() -> list[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sorted(sub.choices)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_names_every_subcommand(shell, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--print-completion", shell])
    assert stop.value.code == 0
    script = capsys.readouterr().out
    names = _subcommands()
    assert len(names) == len(COMMANDS) and {"run", "watch", "open", "export-spatialdata"} <= set(names)
    assert all(name in script for name in names)
    assert "--gpu-workers" in script  # options of the subcommands too
    if shell == "bash":
        assert "complete" in script and "_shtab_imaxt" in script


_LOGS = """
import logging, warnings
from imaxt_pipeline.service.cli import main
def handler(args):
    logging.getLogger("imaxt_pipeline.steps.segment").info("segment: %d planes", 3)
    logging.getLogger("distributed.worker").warning("a library says %s", "hello")
    logging.getLogger("imaxt.watcher").warning("run_failed", extra={"fields": {"event": "run_failed", "sample": "s1"}})
    warnings.warn("a warning from a library", UserWarning)
    return 0
import imaxt_pipeline.service.cli as cli
parser = cli.build_parser
def build():
    p = parser()
    sub = [a for a in p._actions if a.dest == "command"][0]
    sub.choices["status"].set_defaults(handler=handler)
    return p
cli.build_parser = build
raise SystemExit(main([*FLAGS, "status", "s3://bucket/incoming"]))
"""


@pytest.mark.parametrize("how", ["flag", "env"])
def test_json_logs_cover_every_logger(how):
    flags = ["--log-format", "json"] if how == "flag" else []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if how == "env":
        env["IMAXT_LOG_FORMAT"] = "json"
    code = _LOGS.replace("FLAGS", repr(flags))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]  # every line is JSON: nothing else was printed
    by_logger = {d["logger"]: d for d in docs}
    assert by_logger["imaxt_pipeline.steps.segment"]["message"] == "segment: 3 planes"
    assert by_logger["imaxt_pipeline.steps.segment"]["level"] == "INFO"
    assert by_logger["distributed.worker"] == {**by_logger["distributed.worker"], "level": "WARNING"}
    assert by_logger["distributed.worker"]["message"] == "a library says hello"
    assert by_logger["imaxt.watcher"]["event"] == "run_failed" and by_logger["imaxt.watcher"]["sample"] == "s1"
    assert "a warning from a library" in by_logger["py.warnings"]["message"]
    assert all({"time", "level", "logger", "message"} <= set(d) for d in docs)


def test_watch_events_are_json_lines_with_the_event_fields_at_the_top_level(capsys, monkeypatch):
    import imaxt_pipeline.service.cli as cli
    from imaxt_pipeline.service.watcher import emit

    def handler(args):
        emit("claimed", sample="s1", attempt=2, store=Path("/data/s1.zarr"))
        try:
            raise OSError("bucket down")
        except OSError:
            logging.getLogger("imaxt.watcher").exception("poll failed")
        return 0

    def build():
        parser = build_parser()
        (sub,) = [a for a in parser._actions if a.dest == "command"]
        sub.choices["watch"].set_defaults(handler=handler)
        return parser

    monkeypatch.setattr(cli, "build_parser", build)
    monkeypatch.delenv("IMAXT_LOG_FORMAT", raising=False)
    service, ours, root = (logging.getLogger(n) for n in ("imaxt", "imaxt_pipeline", ""))
    saved = (service.handlers[:], service.level, service.propagate, ours.level, root.handlers[:])
    try:  # the CLI configures the process's loggers: put them back for the other tests
        assert cli.main(["-v", "watch", "s3://bucket/incoming"]) == 0
    finally:
        service.handlers[:], service.level, service.propagate, _, root.handlers[:] = saved
        ours.setLevel(saved[3])
    claimed, failed = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert claimed["event"] == "claimed" and claimed["sample"] == "s1" and claimed["attempt"] == 2
    assert claimed["store"] == "/data/s1.zarr"  # what json cannot encode comes out as text
    assert (claimed["logger"], claimed["level"], claimed["message"]) == ("imaxt.watcher", "INFO", "claimed")
    assert set(claimed) >= {"time", "level", "logger", "message"} and "fields" not in claimed
    assert failed["message"] == "poll failed" and "OSError: bucket down" in failed["exc_info"]


def test_text_logs_stay_text_and_a_bad_format_is_one_line():
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMAXT_LOG_FORMAT": "xml"}
    code = "from imaxt_pipeline.service.cli import main; raise SystemExit(main(['status', '/nonexistent/x']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "imaxt status: error: log format must be one of text, json, got 'xml' ($IMAXT_LOG_FORMAT)"
    ]


def test_open_lists_the_layers_and_says_how_to_get_napari(tmp_path, capsys, monkeypatch):
    from imaxt_pipeline.io.export import refresh_views
    from imaxt_pipeline.io.output import OutputStore

    out = OutputStore(str(tmp_path / "o.zarr"))
    out.update_imaxt_attrs("sample", "s1")
    img = out.create_image(
        "cube", channel_names=["dapi"], shape_czyx=(1, 2, 40, 30), scale_zyx_um=(15, 1, 1), dtype="float32", levels=2
    )
    img.write_plane(0, np.ones((1, 40, 30), np.float32))
    out.create_labels("cube", "cells", dtype="uint64")
    refresh_views(out)
    assert main(["open", out.url, "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "image s1: 1x2x40x30 1x2x20x15, channels dapi",
        "labels cells: 2x40x30 2x20x15",
    ]
    monkeypatch.setitem(sys.modules, "napari", None)  # napari is not a test dependency: as if not installed
    assert main(["open", out.url]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "imaxt open: error: napari is not installed: pip install 'imaxt-pipeline[viewer]' (napari and napari-ome-zarr)"
    )
    assert main(["open", str(tmp_path)]) == 2  # not a store: one line, no traceback
    assert capsys.readouterr().err.strip().endswith("not a Zarr store")
