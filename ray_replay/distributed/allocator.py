"""A fixed glibc mmap threshold for the processes that host shards (no Ray here).

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes with its own ``mmap`` and returns it
to the system on free; smaller ones come from the heap, whose freed memory stays in the process when
anything above it is still in use. By default the threshold is *dynamic*: each free of an mmapped
block raises it to that block's size (up to 32 MiB on 64-bit). A shard frees large blocks all the
time (a checkpoint's copy of the rows added since the last one, a compaction's concatenated columns,
replica states), so after a few checkpoints those same sizes come from the heap, interleave with
long-lived objects, and the freed space can no longer be given back: the process's RSS climbs in
steps. Measured here (Ray-free, one ReplayShardImpl at 40 K rows/s, 100 K rows held, checkpoints
every 2 s, a learner sampling 512 and updating priorities; benchmarks/shard_memory.py): RSS 89 -> 188
MiB over 6.5 min with the default, against 89 -> 108 MiB with the threshold fixed at 128 KiB, and
89 -> 100 MiB over 2.5 min at 1 MiB (the rest is the bounded table of applied batch ids filling up,
about 12 MiB at its 65,536 entries).

Fixing the threshold (``mallopt(M_MMAP_THRESHOLD, n)``, which also turns the dynamic adjustment off)
keeps the large, short-lived blocks out of the heap. 1 MiB: a sample of 512 rows or a write of 1,000
rows of a CartPole-like schema (tens of KiB per column) still comes from the heap (no page faults per
call); checkpoint copies and replica states (MiBs) are mapped and unmapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["SHARD_MMAP_THRESHOLD", "fix_mmap_threshold"]

SHARD_MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def fix_mmap_threshold(threshold: int = SHARD_MMAP_THRESHOLD) -> bool:
    """Sets glibc's mmap threshold to ``threshold`` bytes for this whole process (and stops its
    dynamic adjustment). Returns whether it was set: False off Linux, with another C library (musl
    has no mallopt), or when glibc refuses the value. Process-wide: call it only in a process that
    ray_replay owns (a shard actor), never from a library call in a user's process.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))
