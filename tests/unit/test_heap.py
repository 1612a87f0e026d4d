"""controller/heap.py: with glibc's threshold fixed, a look's large arrays leave the process when freed; without, a
process that frees ever larger arrays (a rollout's looks as it ages) keeps them all. Each case in a fresh process."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

LOOKS = """
import sys
import numpy as np
from controller.heap import return_large_frees

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

print(return_large_frees() if sys.argv[1] == "fixed" else None)
transient = np.ones(8 << 20, np.uint8)  # an early look's arrays, mapped and unmapped: glibc raises its threshold
del transient
before = rss()
kept = []
for mib in range(1, 7):  # each look's arrays larger than the last, a small block that outlives them after each
    transient = np.ones(mib << 20, np.uint8)
    kept.append(bytearray(4096))
    del transient
print(rss() - before)
"""


def _retained(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", LOOKS, mode], capture_output=True, text=True, timeout=60, check=True)
    done, retained = out.stdout.split()
    return done, int(retained)


def test_a_fixed_threshold_returns_each_looks_arrays_where_the_default_keeps_them() -> None:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except AttributeError:
        pytest.skip("not glibc: its dynamic mmap threshold is what this fixes")
    done, fixed = _retained("fixed")
    assert done == "True"
    _, default = _retained("default")
    print(f"\nafter six looks of 1..6 MiB: {default / 2**20:.1f} MiB kept by default, {fixed / 2**20:.2f} MiB fixed")
    assert fixed < 1 << 20
    assert default > 4 << 20  # what the controller did before: most of the looks' arrays still resident


def test_an_operators_own_threshold_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.heap import return_large_frees

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert return_large_frees() is False
