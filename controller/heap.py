"""Give the controller's large transient arrays back to the system when they are freed (glibc's fixed mmap threshold).

Each look evaluates a rollout from all its samples: arrays as long as the rollout is old, freed after the look.
glibc serves a block above its mmap threshold with its own mapping, but raises the threshold to the size of each
such block freed (up to 32 MiB), so the next looks' arrays come from the heap, where a small block allocated
after them keeps the heap from shrinking: the process grew with the rollout's age though nothing leaked (measured
in tests/e2e/test_soak.py). A fixed threshold keeps every block above it in its own mapping, unmapped at free().
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept from then on


def return_large_frees(threshold_bytes: int = THRESHOLD_BYTES) -> bool:
    """Fix the mmap threshold of this process's allocator; False where there is none to fix (not glibc) or the
    operator set one already (MALLOC_MMAP_THRESHOLD_, GLIBC_TUNABLES), which is then left as it is."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
        version = ctypes.CDLL(None).gnu_get_libc_version
    except (OSError, AttributeError):  # another C library (musl's mallopt does nothing, macOS has none)
        return False
    version.restype = ctypes.c_char_p
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold_bytes))
    log.info("heap: blocks of %d bytes and more are unmapped at free (glibc %s): %s", threshold_bytes,
             version().decode(), "set" if done else "refused")
    return done
