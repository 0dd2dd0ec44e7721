"""Worker set-up: keep a worker's freed memory for its next task instead of handing it back to the OS at once.

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (so that freed memory shows as freed).
With that variable set glibc also stops adapting its mmap threshold: every temporary array over 128 KiB
is mapped and unmapped, and its pages faulted in and zeroed afresh. The pair kernel makes thousands of
such temporaries (strips, spline windows, Jacobians of 0.2-2 MB): 108-129 ms per 512 px pair of nuclei
texture with that variable set, 43 ms without or with this fix (CPU time, one process), and on the
workers of ``benchmarks/coverslip.py --grid 25`` the stitch step's CPU fell from 447 to 89 s with the
other changes of that session. Raising both thresholds keeps at most a few tens of MiB free per worker.
Every numpy-heavy step (fusion, segmentation, catalogue) makes such temporaries, so the pipeline
registers :class:`RoomyAllocator` on every worker of its client, local or remote.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from distributed import WorkerPlugin

__all__ = ["RoomyAllocator", "roomy_allocator"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Free memory a worker may keep (bytes), and the size from which arrays are mapped on their own.
TRIM_BYTES, MMAP_BYTES = 64 * 2**20, 32 * 2**20
_done: list[bool] = []


def roomy_allocator() -> bool:
    """Raise glibc's trim and mmap thresholds once per process (no-op off glibc); whether they were set."""
    if _done:
        return _done[0]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
        except (OSError, AttributeError):  # not glibc (musl has no mallopt)
            ok = False
    _done.append(ok)
    return ok


class RoomyAllocator(WorkerPlugin):
    """A ``distributed`` worker plugin that calls :func:`roomy_allocator` on each worker as it starts."""

    name = "imaxt-roomy-allocator"

    def setup(self, worker: object) -> None:
        roomy_allocator()
