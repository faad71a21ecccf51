"""Process-level performance settings that a library should not change silently.

:func:`retain_freed_memory` is called by the ``iscl`` command line and the benchmarks; Python users
call it themselves when a process mostly denoises large images.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS.

    glibc serves every block over 32 MB with a fresh ``mmap`` and unmaps it on ``free``; a 1024²
    prediction allocates ~30 such activations, and the page faults of re-mapping them made
    prediction ~2.4x slower on a 2-core machine (benchmarks/speed.py). Disabling ``mmap`` for
    ``malloc`` and heap trimming keeps them mapped. The cost: the process keeps its peak heap until it
    exits. One arena for all threads, too: tiled prediction runs each statistics tile's pass on a
    thread of its own (:mod:`iscl.predict`), and glibc's per-thread arenas unmap their large blocks
    anyway (measured: 1.7 million page faults and ~15 % more time for one 1024² tiled prediction).
    Returns whether the setting was applied (only on glibc; elsewhere a no-op).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _applied = (bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
                and bool(mallopt(_M_ARENA_MAX, 1)))
    return _applied
