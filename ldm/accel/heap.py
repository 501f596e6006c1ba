"""glibc's malloc told to keep freed memory for the next network call (CPUs, Linux with glibc).

glibc serves a buffer above its mmap threshold with fresh pages mapped for it, and hands the top of its heap
back to the kernel once more than the trim threshold lies free there. Both thresholds start low and move:
the mmap threshold rises to the largest mapped buffer freed so far (at most 32 MiB) and the trim threshold
is twice it, at most 64 MiB. A network call frees far more than that at its end, so the heap's top is handed
back after every call and the next call gets it again a page at a time: each page a fault, zero-filled by
the kernel. Textual inversion, which alternates the VAE encoder, the UNet's forward and backward passes and
the optimiser, paid a quarter of its time in this (page faults and system time, BENCHMARKS.md 2026-12-03
(fifth)). Fixed thresholds end it: buffers up to glibc's own ceiling of 32 MiB come from the heap, and up to
1 GiB of free memory stays on top of it. Larger buffers are still mapped and returned at once, so a single
big buffer (the VAE's at high resolution) is not kept after its call.
"""
import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for its moving threshold (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
TRIM_THRESHOLD = 1 << 30


def user_settings() -> bool:
    """Whether the user tuned glibc's malloc through the environment (MALLOC_*_ or GLIBC_TUNABLES): theirs holds."""
    return any(k.startswith("MALLOC_") for k in os.environ) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Set the two thresholds for this process (once); whether they were set. Nothing is done where the C
    library is not glibc or the user's own malloc settings are in force."""
    if user_settings():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no glibc (macOS, Windows, musl without mallopt)
        return False
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
