"""Give the heap's free memory back to the operating system between the stages of a job.

A stage frees what it built (the stitcher's row band, the vertex tables of the outline
post-processing), but glibc keeps freed memory inside the heap, where it still counts in the
process's RSS, so each stage's peak would sit on top of the garbage of the stages before it.
Dask trims its workers the same way (``MALLOC_TRIM_THRESHOLD_``); the client is trimmed here,
at stage boundaries, where the cost (milliseconds) is paid a handful of times per scene.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def trim_heap() -> bool:
    """Return the heap's free pages to the OS (glibc's ``malloc_trim(0)``); False where the C
    library has no such call (musl, macOS), which then keeps them as before."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
