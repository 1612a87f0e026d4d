"""Make the runtime's code resident before a model's memory is measured, so the model is not charged for it.

A runtime's shared libraries are mapped at import but their pages are read in lazily: the first model to run a
convolution or an INT8 kernel faults that code in, and a reading of "memory after minus memory before" would
count it as the model's (26 → 10 MiB for a small CNN in OpenVINO, 33 → 26 MiB in onnxruntime). That code is the
runtime's, shared by every process that maps the library; `prefault_libraries` reads every file-backed page
mapped so far, once, before the "before" reading: the runtime's fixed cost, reported beside, never the model's.
Light on purpose (ctypes only): the router's runner children call it before they measure.
"""

from __future__ import annotations

import ctypes
import os

_MADV_POPULATE_READ = 22  # Linux >= 5.14: fault the range's pages into this process's page table
_EINVAL = 22
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _mappings() -> list[tuple[int, int]]:
    """(start, length) of every readable file-backed mapping, cut to the part the file backs (reading past a
    file's end would raise SIGBUS)."""
    found = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or "r" not in parts[1] or not parts[5].startswith("/"):
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            try:
                backed = os.stat(parts[5].rstrip("\n")).st_size - int(parts[2], 16)
            except OSError:
                continue  # deleted or unreadable file: leave it alone
            length = min(end - start, backed // _PAGE_BYTES * _PAGE_BYTES)
            if length > 0:
                found.append((start, length))
    return found


def prefault_libraries() -> int:
    """Fault in every page of the file-backed mappings of this process; returns the bytes covered."""
    libc = ctypes.CDLL(None, use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    total = 0
    for start, length in _mappings():
        if madvise(start, length, _MADV_POPULATE_READ) == 0:
            total += length
        elif ctypes.get_errno() == _EINVAL:  # a kernel older than 5.14: touch one byte per page
            for page in range(start, start + length, _PAGE_BYTES):
                ctypes.string_at(page, 1)
            total += length
    return total
