"""The in-process channel on a fake clock: TTLs, visibility timeouts and leases expire exactly, without sleeping."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from modelroll.errors import InvalidInput
from modelroll.live import Sample, SplitConfig, open_channel
from modelroll.live.memory import MemoryChannel, MemorySubscription
from modelroll.live.memory_state import StreamIds, id_key
from modelroll.settings import Settings


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def channel(clock: FakeClock) -> MemoryChannel:
    return MemoryChannel(now=clock)


def sample(i: int) -> Sample:
    return Sample(kind="request", model="digits", variant="baseline", ts=float(i), request_id=f"req-{i}")


def test_prediction_lives_exactly_its_ttl(channel: MemoryChannel, clock: FakeClock) -> None:
    channel.put_prediction("a", b"1", ttl_s=10)
    channel.put_prediction("b", b"2", ttl_s=10)
    clock.t += 9.999
    assert channel.take_prediction("a") == b"1"
    clock.t += 0.001
    assert channel.take_prediction("b") is None


def test_expired_predictions_do_not_pile_up(channel: MemoryChannel, clock: FakeClock) -> None:
    for i in range(1000):
        channel.put_prediction(f"r{i}", b"x", ttl_s=5)
    channel.put_prediction("r0", b"renewed", ttl_s=60)  # a re-put outlives its first expiry
    clock.t += 5
    channel.put_prediction("fresh", b"y", ttl_s=5)
    assert len(channel._predictions) == 2
    assert channel.take_prediction("r0") == b"renewed"


def test_predictions_stay_within_their_count_bound_however_long_the_ttl(clock: FakeClock) -> None:
    channel = MemoryChannel(now=clock, predictions_max_len=100)
    for i in range(5001):  # 2501 kept for a label (even i), 2500 taken at once (odd i)
        channel.put_prediction(f"r{i}", b"x", ttl_s=86400)
        clock.t += 0.001
        if i % 2:
            assert channel.take_prediction(f"r{i}") == b"x"  # taken ones leave stale heap entries behind
    assert len(channel._predictions) == 100
    assert len(channel._expiries) <= 2 * 100 + 1024
    assert channel.predictions_dropped == 2501 - 100  # the untaken ones beyond the bound, oldest first
    assert channel.take_prediction("r5000") == b"x" and channel.take_prediction("r4802") == b"x"
    assert channel.take_prediction("r0") is None


def test_a_bad_prediction_bound_is_refused() -> None:
    with pytest.raises(InvalidInput, match="predictions_max_len must be at least 1, got 0"):
        MemoryChannel(predictions_max_len=0)


def test_job_claim_expires_after_the_visibility_timeout_and_counts_attempts(
        channel: MemoryChannel, clock: FakeClock) -> None:
    job_id = channel.enqueue_job("optimize", b"p")
    assert channel.claim_job("optimize", "w1", visibility_timeout_s=10, max_attempts=3) is not None
    clock.t += 9.9
    assert channel.claim_job("optimize", "w2", visibility_timeout_s=10, max_attempts=3) is None
    clock.t += 0.1
    second = channel.claim_job("optimize", "w2", visibility_timeout_s=10, max_attempts=3)
    assert second is not None and (second.id, second.attempts) == (job_id, 2)
    clock.t += 10
    third = channel.claim_job("optimize", "w3", visibility_timeout_s=10, max_attempts=3)
    assert third is not None and third.attempts == 3
    clock.t += 10
    assert channel.claim_job("optimize", "w4", visibility_timeout_s=10, max_attempts=3) is None
    assert [(j.id, j.attempts) for j in channel.dead_letters("optimize")] == [(job_id, 3)]


def test_acked_job_is_never_redelivered(channel: MemoryChannel, clock: FakeClock) -> None:
    channel.enqueue_job("optimize", b"p")
    job = channel.claim_job("optimize", "w1", visibility_timeout_s=1, max_attempts=3)
    assert job is not None
    channel.ack_job(job)
    clock.t += 100
    assert channel.claim_job("optimize", "w1", visibility_timeout_s=1, max_attempts=3) is None
    assert channel.dead_letters("optimize") == []


def test_lock_lease_expires_exactly_and_renewal_keeps_the_token(channel: MemoryChannel, clock: FakeClock) -> None:
    token = channel.acquire_lock("leader", "a", ttl_s=10)
    clock.t += 9
    assert channel.renew_lock("leader", "a", ttl_s=10) is True
    clock.t += 9.999
    assert channel.acquire_lock("leader", "b", ttl_s=10) is None
    assert channel.acquire_lock("leader", "a", ttl_s=10) == token
    clock.t += 10
    assert channel.renew_lock("leader", "a", ttl_s=10) is False
    taken = channel.acquire_lock("leader", "b", ttl_s=10)
    assert token is not None and taken is not None and taken > token
    clock.t += 10
    assert channel.acquire_lock("leader", "a", ttl_s=10) == taken + 1  # even the old holder gets a new token


def test_blocking_read_waits_in_real_time_even_on_a_fake_clock(channel: MemoryChannel) -> None:
    start = time.monotonic()
    assert channel.read_samples("g", "c", count=1, block_s=0.05).ids == []
    assert 0.04 <= time.monotonic() - start < 1.0


def test_stream_ids_grow_within_a_millisecond_and_when_the_wall_clock_steps_back() -> None:
    wall = iter([5, 5, 5, 4, 7])
    ids = StreamIds(lambda: next(wall))
    got = [ids.next() for _ in range(5)]
    assert got == ["5-0", "5-1", "5-2", "5-3", "7-0"]
    assert id_key("10-0") > id_key("9-99")  # numeric, not string, order


def test_concurrent_appends_keep_every_sample_once_in_id_order() -> None:
    channel = MemoryChannel()

    def writer(base: int) -> None:
        for start in range(0, 500, 50):
            channel.append_samples([sample(base + i) for i in range(start, start + 50)])

    threads = [threading.Thread(target=writer, args=(k * 1000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batch = channel.read_samples("g", "c", count=10_000)
    assert len(batch.ids) == 2000 and len({s.request_id for s in batch.samples}) == 2000
    assert batch.ids == sorted(batch.ids, key=id_key)


def test_a_watcher_callback_may_publish_without_deadlock(channel: MemoryChannel) -> None:
    seen: list[int] = []

    def react(split: SplitConfig) -> None:
        seen.append(split.version)
        if split.version == 1:
            channel.publish_split(SplitConfig("digits", {"baseline": 50.0, "int8": 50.0}))

    channel.watch_splits(react)
    channel.publish_split(SplitConfig("digits", {"baseline": 100.0}))
    assert seen == [1, 2]
    assert channel.get_splits()["digits"].version == 2


def test_a_watcher_never_goes_back_to_an_older_version(channel: MemoryChannel) -> None:
    seen: list[int] = []
    subscription = channel.watch_splits(lambda s: seen.append(s.version))
    assert isinstance(subscription, MemorySubscription)
    older = channel.publish_split(SplitConfig("digits", {"baseline": 100.0}))
    channel.publish_split(SplitConfig("digits", {"baseline": 90.0, "int8": 10.0}))
    subscription.deliver(older)  # as when a snapshot taken before a publish arrives after it
    assert seen == [1, 2]


def test_the_log_bound_comes_from_settings(tmp_path: Path) -> None:
    channel = open_channel(Settings(home=tmp_path, live_samples_max_len=5))
    channel.append_samples([sample(i) for i in range(8)])
    assert [s.request_id for s in channel.read_samples("g", "c", count=100).samples] == [
        "req-3", "req-4", "req-5", "req-6", "req-7"]
    assert channel.trimmed_samples() == 3


def test_bad_arguments_are_rejected_with_what_is_accepted(channel: MemoryChannel) -> None:
    with pytest.raises(InvalidInput, match="at least 1"):
        MemoryChannel(samples_max_len=0)
    with pytest.raises(InvalidInput, match="positive"):
        channel.renew_lock("leader", "a", ttl_s=-1)
