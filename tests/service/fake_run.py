"""A small, honest stand-in for a pipeline run, used by the watcher tests.

``python tests/fake_run.py SAMPLE OUTPUT_URL LOG SECONDS``: appends ``start``
to LOG, sleeps, fails (exit 3) when the sample name starts with ``bad``, else
writes ``OUTPUT_URL/DONE`` and appends ``done``. Lines are ``<event> <sample>
<pid> <parent pid>``; appends of short lines with O_APPEND are atomic.
"""

from __future__ import annotations

import os
import sys
import time


def log(path: str, event: str, sample: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {sample} {os.getpid()} {os.getppid()}\n".encode())
    finally:
        os.close(fd)


def main(sample: str, output_url: str, log_path: str, seconds: str) -> int:
    log(log_path, "start", sample)
    time.sleep(float(seconds))
    if sample.startswith("bad"):
        print(f"{sample}: synthetic failure for the retry test", file=sys.stderr)
        return 3
    import fsspec

    opts = {"endpoint_url": os.environ["IMAXT_S3_ENDPOINT"]} if output_url.startswith("s3://") else {}
    fs, path = fsspec.core.url_to_fs(output_url, **opts)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/DONE", sample.encode())
    log(log_path, "done", sample)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
