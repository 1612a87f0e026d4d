"""The runtime's code is made resident before a model's memory reading, so the model is not charged for it."""

from __future__ import annotations

from modelroll.residency import prefault_libraries


def _rss_file_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssFile:"))


def test_every_mapped_library_page_is_resident_after_prefaulting() -> None:
    import onnxruntime  # noqa: F401  (a large library, mostly not yet read in)

    covered = prefault_libraries()
    assert covered > 10 * 2**20
    resident = _rss_file_kib()
    assert resident * 1024 >= 0.9 * covered  # what it covered is now in this process's resident set
    assert prefault_libraries() == covered  # nothing new mapped: the same pages, already resident
    assert _rss_file_kib() - resident < 1024
