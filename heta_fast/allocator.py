"""Keep freed memory in the worker processes heta-fast owns (glibc on Linux).

An attribution allocates and frees tensors of tens to hundreds of megabytes (the curvature's
probe batches, the masked passes' activations). glibc serves a block over its mmap threshold
(32 MB at most) with a fresh ``mmap`` and unmaps it when freed, and heaps of threads other than
the main one give freed memory back too; the next record then faults the pages in again and
the kernel zeroes them. In a Ray actor (whose calls run on a thread of Ray's) that cost 1.4–4.5
system-seconds on every record after the second (records of about 7.5 user-seconds), in one of
two actors side by side (profiling/ray_cpu_share.py; BENCHMARKS.md "Allocator").

:func:`keep_freed_memory` turns off mmap'd blocks and heap trimming, so freed blocks stay in
the process and are reused: its resident memory stays at its peak, which the memory budget
bounds. It is a process-wide choice, so heta-fast makes it only in processes it runs itself: a
Ray actor, ``heta-fast run`` and ``heta-fast serve``. A program that imports heta-fast keeps its
allocator as it is, and anyone who sets glibc's malloc variables keeps theirs.
"""
from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# The user's own malloc settings win over ours.
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX",
                 "GLIBC_TUNABLES")
# Set to 0 to keep glibc's defaults in heta-fast's own processes.
OPT_OUT = "HETA_FAST_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Make this process's glibc malloc keep and reuse freed memory. True when it was set.

    False (nothing changed) off Linux, without glibc's ``mallopt``, when ``HETA_FAST_KEEP_FREED_MEMORY=0``
    or when the environment already sets one of glibc's malloc variables.
    """
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT) == "0":
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt symbol in every build)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; the largest int keeps the heap's top whatever its size.
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
