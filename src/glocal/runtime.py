"""Process-wide settings for fast CPU training and inference: keep freed tensor memory for reuse.

PyTorch takes CPU tensors from the C library's ``malloc``. With glibc's defaults every block above the mmap threshold
(128 KiB, adapting up to 32 MiB) is a fresh ``mmap`` returned with ``munmap`` when freed, and freed heap memory is
trimmed back to the system. A network's activations are megabytes each and are freed every step, so each step maps
them anew and page-faults every 4 KiB page on first touch: on the 2-core CPU of these measurements that is 20-35% of
a ResNet-50 training step. :func:`keep_freed_memory` turns both off (``mallopt(M_MMAP_MAX, 0)``,
``mallopt(M_TRIM_THRESHOLD, max)``), so freed blocks are served again from the heap without touching the kernel.

It is process-wide and speeds up whatever runs in the process, glocal or not. The cost: the resident set does not
shrink after a peak (it stays at the largest step's footprint, which a training process reaches anyway). The
``glocal`` command applies it for every subcommand unless ``--system-malloc`` is given; library users call it
themselves. Other C libraries (musl, macOS, Windows) are left alone.

Measured with ``benchmarks/allocator.py`` (one process per setting, fp32, batch 8, 224, 2 threads); see
``docs/benchmarks.md``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

__all__ = ["keep_freed_memory", "release_freed_memory"]

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def _glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None under another C library."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (no mmap per large block, no trimming); returns whether it
    was applied (False on other C libraries)."""
    libc = _glibc()
    if libc is None:
        log.debug("allocator left alone: not glibc (%s)", platform.libc_ver()[0] or platform.system())
        return False
    applied = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    log.debug("glibc malloc keeps freed memory: %s", applied)
    return applied


def release_freed_memory() -> None:
    """Hand freed heap memory back to the system now (``malloc_trim``), whatever the trim setting; a no-op on other
    C libraries. Memory measurements call it so that the resident set counts live memory only."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
