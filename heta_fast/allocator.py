"""Keep freed memory in the worker processes heta-fast owns (glibc on Linux).

An attribution allocates and frees tensors of tens to hundreds of megabytes (the curvature's
probe batches, the masked passes' activations). glibc serves a block over its mmap threshold
(32 MB at most) with a fresh ``mmap`` and unmaps it when freed, and heaps of threads other than
the main one give freed memory back too; the next record then faults the pages in again and
the kernel zeroes them. In a Ray actor (whose calls run on a thread of Ray's) that cost 1.4–4.5
system-seconds on every record after the second (records of about 7.5 user-seconds), in one of
two actors side by side (profiling/ray_cpu_share.py; BENCHMARKS.md "Allocator").

:func:`keep_freed_memory` makes glibc keep freed blocks in the process for reuse: one heap
(arena) for every thread created after the call, no mmap'd blocks, no trimming. Its resident
memory then stays at its peak, which the memory budget bounds. The arena limit is what holds
for threads: in `heta-fast serve`, whose worker thread runs the attributions, no mmap and no
trimming alone left 20,000–370,000 page faults a record; with one arena too, at most 18,000
after the first record (BENCHMARKS.md "Allocator"). A Ray actor's threads exist before any code of ours
runs, so its process gets the same settings as environment variables at start
(:func:`worker_environment`, through Ray's ``runtime_env``).

It is a process-wide choice, so heta-fast makes it only in processes it runs itself: a Ray
actor, and the ``heta-fast run`` and ``heta-fast serve`` commands started as programs. A program
that imports heta-fast (or calls ``heta_fast.cli.main([...])`` in its own process) keeps its
allocator as it is, and anyone who sets glibc's malloc variables keeps theirs.
"""
from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# The user's own malloc settings win over ours.
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX",
                 "GLIBC_TUNABLES")
# Set to 0 to keep glibc's defaults in heta-fast's own processes.
OPT_OUT = "HETA_FAST_KEEP_FREED_MEMORY"
# The same settings as glibc reads them from the environment at a process's start.
KEEP_FREED_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def _user_allows() -> bool:
    """Not opted out, and none of the user's own malloc settings in the environment."""
    return os.environ.get(OPT_OUT) != "0" and not any(name in os.environ for name in USER_SETTINGS)


def worker_environment() -> dict[str, str]:
    """Environment variables for a worker process heta-fast starts (a Ray actor): KEEP_FREED_ENV,
    or nothing when the user opted out or set malloc's variables. Whatever the driver's system:
    the workers may run elsewhere, and a C library other than glibc ignores the variables."""
    return dict(KEEP_FREED_ENV) if _user_allows() else {}


def keep_freed_memory() -> bool:
    """Make this process's glibc malloc keep and reuse freed memory. True when it was set.

    False (nothing changed) off Linux, without glibc's ``mallopt``, when ``HETA_FAST_KEEP_FREED_MEMORY=0``
    or when the environment already sets one of glibc's malloc variables.
    """
    if not sys.platform.startswith("linux") or not _user_allows():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt symbol in every build)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; the largest int keeps the heap's top whatever its size.
    return all(mallopt(param, value) == 1 for param, value in
               ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)))
