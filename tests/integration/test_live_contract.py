"""One contract for both live channels: the same tests run on the in-process channel and on real Redis."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from modelroll.errors import InvalidInput, Unavailable
from modelroll.live import Job, LiveChannel, Sample, SplitConfig, open_channel
from modelroll.live.memory import MemoryChannel
from modelroll.live.redis_backend import RedisChannel
from modelroll.live.redis_watch import RedisSplitWatcher
from modelroll.live.sample_codec import decode_sample, decode_samples
from modelroll.settings import Settings
from tests.loopback import RedisServer
from tests.loopback import wait_for as loopback_wait_for

MakeChannel = Callable[..., LiveChannel]


wait_for = functools.partial(loopback_wait_for, timeout_s=5.0, every_s=0.01)


def sample(i: int, variant: str = "baseline") -> Sample:
    return Sample(kind="request", model="digits", variant=variant, ts=1_700_000_000.0 + i, rollout_id=7,
                  step=2, request_id=f"req-{i}", latency_ms=1.5 + i, total_ms=2.0 + i, cpu_ms=1.1,
                  prediction=[i % 10])


@pytest.fixture(params=["memory", "redis"])
def make_channel(request: pytest.FixtureRequest) -> Iterator[MakeChannel]:
    """Builds channels of one backend; for Redis every channel of a test shares the test's own prefix.

    Called again, it stands for a restarted process: a new Redis client on the same keys, or for the
    in-process backend the same instance (the log lives in the process, a consumer restarts within it).
    """
    opened: list[LiveChannel] = []
    memory: dict[int, MemoryChannel] = {}

    def make(samples_max_len: int = 1_000_000) -> LiveChannel:
        if request.param == "memory":
            return memory.setdefault(samples_max_len, MemoryChannel(samples_max_len=samples_max_len))
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        channel = RedisChannel(url, prefix=prefix, timeout_s=2.0, samples_max_len=samples_max_len)
        opened.append(channel)
        return channel

    yield make
    for channel in [*opened, *memory.values()]:
        channel.close()


@pytest.fixture()
def channel(make_channel: MakeChannel) -> LiveChannel:
    return make_channel()


# --- split config -------------------------------------------------------------------------------


def test_publish_split_numbers_versions_per_model(channel: LiveChannel) -> None:
    first = channel.publish_split(SplitConfig("digits", {"baseline": 100.0}))
    second = channel.publish_split(SplitConfig("digits", {"baseline": 90.0, "int8": 10.0}, rollout_id=3, step=1))
    other = channel.publish_split(SplitConfig("minilm", {"baseline": 100.0}))
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert channel.get_splits() == {"digits": second, "minilm": other}
    assert second.weights == {"baseline": 90.0, "int8": 10.0} and second.rollout_id == 3


def test_watcher_gets_latest_split_on_connect_then_every_change(channel: LiveChannel) -> None:
    channel.publish_split(SplitConfig("digits", {"baseline": 100.0}))
    latest = channel.publish_split(SplitConfig("digits", {"baseline": 95.0, "int8": 5.0}))
    seen: list[SplitConfig] = []
    subscription = channel.watch_splits(seen.append)
    try:
        wait_for(lambda: seen, what="the current split on connect")
        assert seen == [latest]
        changed = channel.publish_split(SplitConfig("digits", {"baseline": 75.0, "int8": 25.0}, shadow="int8"))
        new_model = channel.publish_split(SplitConfig("minilm", {"baseline": 100.0}))
        wait_for(lambda: len(seen) >= 3, what="two published changes")
        assert seen == [latest, changed, new_model]
    finally:
        subscription.close()
    channel.publish_split(SplitConfig("digits", {"baseline": 100.0}))
    after_close = len(seen)
    channel.get_splits()  # a round trip, so a stray delivery would have had time to arrive
    assert len(seen) == after_close


def test_watcher_failing_callback_does_not_stop_later_deliveries(channel: LiveChannel) -> None:
    seen: list[int] = []

    def flaky(split: SplitConfig) -> None:
        seen.append(split.version)
        if split.version == 1:
            raise RuntimeError("boom")

    subscription = channel.watch_splits(flaky)
    try:
        channel.publish_split(SplitConfig("digits", {"baseline": 100.0}))
        wait_for(lambda: seen == [1], what="first delivery")
        channel.publish_split(SplitConfig("digits", {"baseline": 50.0, "int8": 50.0}))
        wait_for(lambda: seen == [1, 2], what="delivery after a failing callback")
    finally:
        subscription.close()


# --- samples --------------------------------------------------------------------------------------


def test_samples_are_read_in_order_once_per_group_and_acked(channel: LiveChannel) -> None:
    written = [sample(i) for i in range(25)]
    channel.append_samples(written[:10])
    channel.append_samples(written[10:])
    first = channel.read_samples("controller", "c1", count=10)
    assert first.samples == written[:10]
    channel.ack_samples("controller", first.ids)
    rest = channel.read_samples("controller", "c1", count=100)
    assert rest.samples == written[10:]
    channel.ack_samples("controller", rest.ids)
    ids = first.ids + rest.ids
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) and len(set(ids)) == 25
    assert channel.read_samples("controller", "c1", count=100).ids == []
    # Another group reads the whole log on its own.
    assert channel.read_samples("audit", "a1", count=100).samples == written


def test_unacked_samples_come_back_first_to_the_same_consumer_after_a_restart(make_channel: MakeChannel) -> None:
    before = make_channel()
    before.append_samples([sample(i) for i in range(6)])
    delivered = before.read_samples("controller", "leader-a", count=4)
    before.ack_samples("controller", delivered.ids[:1])  # crashes after acking only the first

    after = make_channel()  # the restarted controller, same group and consumer name
    other = after.read_samples("controller", "leader-b", count=10)
    assert [s.request_id for s in other.samples] == ["req-4", "req-5"]  # pending stays with its consumer
    again = after.read_samples("controller", "leader-a", count=10)
    assert again.ids == delivered.ids[1:]
    assert [s.request_id for s in again.samples] == ["req-1", "req-2", "req-3"]
    after.ack_samples("controller", again.ids)
    assert after.read_samples("controller", "leader-a", count=10).ids == []


def test_pending_samples_then_new_ones_fill_one_read(channel: LiveChannel) -> None:
    channel.append_samples([sample(i) for i in range(3)])
    channel.read_samples("g", "c", count=2)
    channel.append_samples([sample(i) for i in range(3, 5)])
    batch = channel.read_samples("g", "c", count=4)
    assert [s.request_id for s in batch.samples] == ["req-0", "req-1", "req-2", "req-3"]


def test_read_waits_up_to_block_s_for_new_samples(channel: LiveChannel) -> None:
    start = time.monotonic()
    assert channel.read_samples("g", "c", count=10, block_s=0.3).ids == []
    assert 0.25 <= time.monotonic() - start < 2.0
    timer = threading.Timer(0.1, channel.append_samples, args=([sample(1)],))
    timer.start()
    try:
        start = time.monotonic()
        batch = channel.read_samples("g", "c", count=10, block_s=5.0)
        assert [s.request_id for s in batch.samples] == ["req-1"]
        assert time.monotonic() - start < 2.0
    finally:
        timer.join()


def test_sample_log_is_bounded_and_counts_what_it_trimmed(make_channel: MakeChannel) -> None:
    channel = make_channel(samples_max_len=100)
    assert channel.trimmed_samples() == 0
    for start in range(0, 1000, 50):
        channel.append_samples([sample(i) for i in range(start, start + 50)])
    kept = channel.read_samples("late", "c", count=10_000)
    # Redis trims whole stream nodes (MAXLEN ~), so it may keep up to one node more than the bound.
    assert 100 <= len(kept.ids) < 200
    assert channel.trimmed_samples() == 1000 - len(kept.ids)
    assert [s.request_id for s in kept.samples] == [f"req-{i}" for i in range(1000 - len(kept.ids), 1000)]


def test_pending_samples_trimmed_away_are_dropped_not_redelivered(make_channel: MakeChannel) -> None:
    channel = make_channel(samples_max_len=100)
    channel.append_samples([sample(i) for i in range(10)])
    assert len(channel.read_samples("g", "c", count=10).ids) == 10  # delivered, never acked
    for start in range(10, 1010, 100):
        channel.append_samples([sample(i) for i in range(start, start + 100)])
    oldest_kept = channel.trimmed_samples()  # sample i is the i-th appended, so this is the oldest kept
    assert oldest_kept >= 10
    batch = channel.read_samples("g", "c", count=5)
    assert [s.request_id for s in batch.samples] == [f"req-{i}" for i in range(oldest_kept, oldest_kept + 5)]


def test_read_rejects_a_count_below_one(channel: LiveChannel) -> None:
    with pytest.raises(InvalidInput, match="count"):
        channel.read_samples("g", "c", count=0)


# --- feedback join --------------------------------------------------------------------------------


def test_prediction_is_taken_once(channel: LiveChannel) -> None:
    channel.put_prediction("req-1", b'{"label":3}', ttl_s=30)
    assert channel.take_prediction("req-1") == b'{"label":3}'
    assert channel.take_prediction("req-1") is None
    assert channel.take_prediction("never-stored") is None


def test_predictions_stored_in_a_batch_are_each_taken_once(channel: LiveChannel) -> None:
    channel.put_predictions([(f"req-{i}", f"record-{i}".encode()) for i in range(1500)], ttl_s=30)
    assert channel.take_prediction("req-0") == b"record-0"
    assert channel.take_prediction("req-1499") == b"record-1499"
    assert channel.take_prediction("req-1499") is None
    with pytest.raises(InvalidInput, match="ttl_s"):
        channel.put_predictions([("bad", b"x")], ttl_s=-1)


def test_encoded_samples_and_predictions_are_written_together(channel: LiveChannel) -> None:
    written = [sample(i) for i in range(600)]  # more rows than one Redis script call takes
    records = [(f"req-{i}", f"record-{i}".encode()) for i in range(300)]
    channel.append_encoded([s.to_bytes() for s in written], records, ttl_s=30)
    batch = channel.read_samples("g", "c", count=1000)
    assert batch.samples == written
    channel.ack_samples("g", batch.ids)
    assert channel.take_prediction("req-0") == b"record-0"
    assert channel.take_prediction("req-299") == b"record-299"
    channel.append_encoded([], [("alone", b"x")], ttl_s=30)
    assert channel.take_prediction("alone") == b"x"
    with pytest.raises(InvalidInput, match="ttl_s"):
        channel.append_encoded([sample(1).to_bytes()], [("bad", b"x")], ttl_s=0)
    assert channel.read_samples("g", "c", count=10).samples == []  # the refused call wrote nothing
    assert channel.take_prediction("bad") is None


def test_prediction_expires_after_its_ttl(channel: LiveChannel) -> None:
    channel.put_prediction("short", b"a", ttl_s=0.2)
    channel.put_prediction("long", b"b", ttl_s=30)
    expired_at = time.monotonic() + 0.2
    # Waiting for the clock is the behaviour under test; the check itself polls with a deadline.
    wait_for(lambda: time.monotonic() > expired_at + 0.05, what="the TTL to pass")
    assert channel.take_prediction("short") is None
    assert channel.take_prediction("long") == b"b"
    with pytest.raises(InvalidInput, match="ttl_s"):
        channel.put_prediction("bad", b"c", ttl_s=0)


# --- job queue ------------------------------------------------------------------------------------


def test_jobs_are_claimed_once_in_order_and_acked(channel: LiveChannel) -> None:
    first = channel.enqueue_job("optimize", b"job-1")
    second = channel.enqueue_job("optimize", b"job-2")
    a = channel.claim_job("optimize", "w1", visibility_timeout_s=30, max_attempts=3)
    b = channel.claim_job("optimize", "w2", visibility_timeout_s=30, max_attempts=3)
    assert a is not None and b is not None
    assert (a.id, a.payload, a.attempts, a.queue) == (first, b"job-1", 1, "optimize")
    assert (b.id, b.payload, b.attempts) == (second, b"job-2", 1)
    assert channel.claim_job("optimize", "w3", visibility_timeout_s=30, max_attempts=3) is None
    channel.ack_job(a)
    channel.ack_job(b)
    assert channel.claim_job("optimize", "w3", visibility_timeout_s=0.05, max_attempts=3) is None
    assert channel.claim_job("other-queue", "w3", visibility_timeout_s=30, max_attempts=3) is None


def test_unacked_job_is_redelivered_after_the_visibility_timeout_then_dead_lettered(channel: LiveChannel) -> None:
    visibility_s = 0.4

    def claim(consumer: str) -> Job | None:
        return channel.claim_job("optimize", consumer, visibility_timeout_s=visibility_s, max_attempts=2)

    job_id = channel.enqueue_job("optimize", b"crashes-the-worker")
    first = claim("w1")
    assert first is not None and first.attempts == 1
    assert claim("w2") is None  # still invisible while w1 may be working on it
    second = wait_for(lambda: claim("w2"), what="redelivery after the visibility timeout")
    assert second == Job(job_id, "optimize", b"crashes-the-worker", 2)
    assert channel.dead_letters("optimize") == []
    expired_at = time.monotonic() + visibility_s + 0.05
    wait_for(lambda: time.monotonic() > expired_at, what="the second claim to expire")
    assert claim("w3") is None  # a third delivery would exceed max_attempts=2
    dead = channel.dead_letters("optimize")
    assert [(j.id, j.queue, j.payload, j.attempts) for j in dead] == [(job_id, "optimize", b"crashes-the-worker", 2)]
    assert claim("w3") is None


def test_a_heartbeat_keeps_a_long_job_claimed_but_never_takes_one_back(channel: LiveChannel) -> None:
    visibility_s = 0.4

    def claim(consumer: str) -> Job | None:
        return channel.claim_job("optimize", consumer, visibility_timeout_s=visibility_s, max_attempts=3)

    channel.enqueue_job("optimize", b"long")
    first = claim("w1")
    assert first is not None
    for _ in range(4):  # 0.8 s in all, twice the visibility timeout
        time.sleep(visibility_s / 2)
        assert channel.extend_job(first, "w1")
        assert claim("w2") is None
    assert not channel.extend_job(first, "w2")  # not w2's claim: nothing changes
    taken = wait_for(lambda: claim("w2"), what="the claim to expire without heartbeats")
    assert taken.id == first.id and taken.attempts == 2
    assert not channel.extend_job(first, "w1")  # w1 lost it: its heartbeat must not take it back
    assert claim("w1") is None
    channel.ack_job(taken)
    assert not channel.extend_job(taken, "w2")


def test_claim_rejects_max_attempts_below_one(channel: LiveChannel) -> None:
    with pytest.raises(InvalidInput, match="max_attempts"):
        channel.claim_job("optimize", "w", visibility_timeout_s=1, max_attempts=0)


# --- leader lock ----------------------------------------------------------------------------------


def test_lock_is_exclusive_renewable_and_released_only_by_its_holder(channel: LiveChannel) -> None:
    token = channel.acquire_lock("leader", "a", ttl_s=30)
    assert token is not None
    assert channel.acquire_lock("leader", "b", ttl_s=30) is None
    assert channel.acquire_lock("leader", "a", ttl_s=30) == token  # re-acquiring is a renewal
    assert channel.renew_lock("leader", "a", ttl_s=30) is True
    assert channel.renew_lock("leader", "b", ttl_s=30) is False
    channel.release_lock("leader", "b")
    assert channel.acquire_lock("leader", "b", ttl_s=30) is None
    channel.release_lock("leader", "a")
    next_token = channel.acquire_lock("leader", "b", ttl_s=30)
    assert next_token is not None and next_token > token
    assert channel.acquire_lock("other-lock", "a", ttl_s=30) is not None


def test_expired_lock_is_taken_over_with_a_larger_fencing_token(channel: LiveChannel) -> None:
    old = channel.acquire_lock("leader", "a", ttl_s=0.2)
    assert old is not None
    new = wait_for(lambda: channel.acquire_lock("leader", "b", ttl_s=30), what="takeover after the lease expired")
    assert isinstance(new, int) and new > old
    assert channel.renew_lock("leader", "a", ttl_s=30) is False
    channel.release_lock("leader", "a")
    assert channel.acquire_lock("leader", "a", ttl_s=30) is None


def test_lock_rejects_a_non_positive_ttl(channel: LiveChannel) -> None:
    with pytest.raises(InvalidInput, match="ttl_s"):
        channel.acquire_lock("leader", "a", ttl_s=0)



# --- choosing the backend -------------------------------------------------------------------------


def test_open_channel_picks_the_backend_from_settings(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    embedded = open_channel(Settings(home=tmp_path))
    assert isinstance(embedded, MemoryChannel)
    distributed = open_channel(Settings(home=tmp_path, redis_url=redis_url, redis_prefix=redis_prefix))
    try:
        assert isinstance(distributed, RedisChannel)
        distributed.publish_split(SplitConfig("digits", {"baseline": 100.0}))
        assert redis.Redis.from_url(redis_url).hexists(redis_prefix + "splits", "digits")
    finally:
        distributed.close()


def test_a_url_that_is_not_redis_is_rejected_with_what_is_accepted() -> None:
    with pytest.raises(InvalidInput, match="redis://host:port/db"):
        RedisChannel("http://127.0.0.1:6379")


# --- Redis going away -----------------------------------------------------------------------------

CLOSED = "redis://user:s3cret@127.0.0.1:1/0"


def every_call(channel: LiveChannel) -> dict[str, Callable[[], object]]:
    job = Job("1-0", "optimize", b"x", 1)
    return {
        "publish_split": lambda: channel.publish_split(SplitConfig("digits", {"baseline": 100.0})),
        "get_splits": channel.get_splits,
        "append_samples": lambda: channel.append_samples([sample(1)]),
        "read_samples": lambda: channel.read_samples("g", "c", count=10, block_s=1.0),
        "ack_samples": lambda: channel.ack_samples("g", ["1-0"]),
        "trimmed_samples": channel.trimmed_samples,
        "put_prediction": lambda: channel.put_prediction("r", b"x", ttl_s=10),
        "put_predictions": lambda: channel.put_predictions([("r", b"x")], ttl_s=10),
        "append_encoded": lambda: channel.append_encoded([sample(1).to_bytes()], [("r", b"x")], ttl_s=10),
        "take_prediction": lambda: channel.take_prediction("r"),
        "enqueue_job": lambda: channel.enqueue_job("optimize", b"x"),
        "claim_job": lambda: channel.claim_job("optimize", "w", visibility_timeout_s=10, max_attempts=3),
        "ack_job": lambda: channel.ack_job(job),
        "extend_job": lambda: channel.extend_job(job, "w1"),
        "dead_letters": lambda: channel.dead_letters("optimize"),
        "acquire_lock": lambda: channel.acquire_lock("leader", "a", ttl_s=10),
        "renew_lock": lambda: channel.renew_lock("leader", "a", ttl_s=10),
        "release_lock": lambda: channel.release_lock("leader", "a"),
    }


def test_every_call_on_unreachable_redis_raises_unavailable_quickly() -> None:
    channel = RedisChannel(CLOSED, prefix="modelroll-test-closed:", timeout_s=1.0)
    try:
        calls = every_call(channel)
        expected = set(LiveChannel.__abstractmethods__) | {"put_predictions", "append_encoded"}
        assert set(calls) | {"watch_splits", "close"} == expected
        for name, call in calls.items():
            start = time.monotonic()
            with pytest.raises(Unavailable) as caught:
                call()
            assert time.monotonic() - start < 3.0, name
            assert "redis://user:***@127.0.0.1:1/0 is unreachable" in caught.value.message, name
            assert "s3cret" not in caught.value.message
    finally:
        channel.close()


def test_split_watcher_keeps_retrying_while_redis_is_unreachable() -> None:
    channel = RedisChannel(CLOSED, prefix="modelroll-test-closed:", timeout_s=0.5)
    start = time.monotonic()
    watcher = channel.watch_splits(lambda split: None)
    assert time.monotonic() - start < 0.5  # never blocks the caller
    assert isinstance(watcher, RedisSplitWatcher)
    wait_for(lambda: watcher.disconnects >= 3, what="three failed connection attempts")
    assert watcher.alive and not watcher.connected.is_set()
    channel.close()
    assert not watcher.alive


def test_split_watcher_resyncs_after_its_connection_is_killed(redis_url: str, redis_prefix: str) -> None:
    channel = RedisChannel(redis_url, prefix=redis_prefix, timeout_s=2.0)
    raw = redis.Redis.from_url(redis_url)
    seen: list[SplitConfig] = []
    try:
        channel.publish_split(SplitConfig("digits", {"baseline": 100.0}))
        watcher = channel.watch_splits(seen.append)
        assert isinstance(watcher, RedisSplitWatcher)
        wait_for(lambda: watcher.connected.is_set() and seen, what="first delivery")
        # A change whose notification the watcher never gets (published while it was away) ...
        version = raw.hincrby(redis_prefix + "split-versions", "digits", 1)
        missed = SplitConfig("digits", {"baseline": 60.0, "int8": 40.0}, version=version)
        raw.hset(redis_prefix + "splits", "digits", missed.to_bytes())
        # ... is delivered once its connection drops and it reconnects.
        watcher_clients = [c for c in raw.client_list() if c["name"] == redis_prefix + "watch"]
        assert watcher_clients
        for client in watcher_clients:
            raw.client_kill_filter(_id=client["id"])
        wait_for(lambda: seen[-1] == missed, what="the missed split after reconnecting")
        assert watcher.disconnects == 1 and watcher.alive
        later = channel.publish_split(SplitConfig("digits", {"baseline": 100.0}))
        wait_for(lambda: seen[-1] == later, what="changes after reconnecting")
    finally:
        channel.close()
        raw.close()


def test_router_side_survives_a_redis_restart(private_redis: RedisServer) -> None:
    channel = RedisChannel(private_redis.url, prefix="modelroll:", timeout_s=0.5)
    seen: list[SplitConfig] = []
    try:
        watcher = channel.watch_splits(seen.append)
        assert isinstance(watcher, RedisSplitWatcher)
        first = channel.publish_split(SplitConfig("digits", {"baseline": 100.0}))
        wait_for(lambda: seen == [first], what="first delivery")
        assert channel.read_samples("g", "c", count=10).ids == []
        assert channel.claim_job("optimize", "w", visibility_timeout_s=10, max_attempts=3) is None

        private_redis.stop()
        wait_for(lambda: not watcher.connected.is_set(), what="the watcher noticing Redis is gone")
        with pytest.raises(Unavailable):
            channel.append_samples([sample(1)])
        assert watcher.alive

        private_redis.start()  # comes back empty: no persistence
        after = wait_for(lambda: _try_publish(channel), what="publishing once Redis is back")
        wait_for(lambda: seen[-1] == after, what="the split published after the restart")
        channel.append_samples([sample(2)])
        assert [s.request_id for s in channel.read_samples("g", "c", count=10).samples] == ["req-2"]
        channel.enqueue_job("optimize", b"after-restart")
        job = channel.claim_job("optimize", "w", visibility_timeout_s=10, max_attempts=3)
        assert job is not None and job.payload == b"after-restart"
    finally:
        channel.close()


def _try_publish(channel: LiveChannel) -> SplitConfig | None:
    try:
        return channel.publish_split(SplitConfig("digits", {"baseline": 50.0, "int8": 50.0}))
    except Unavailable:
        return None


def test_an_unreadable_sample_is_dropped_and_counted_not_redelivered(redis_url: str, redis_prefix: str) -> None:
    channel = RedisChannel(redis_url, prefix=redis_prefix, timeout_s=2.0)
    raw = redis.Redis.from_url(redis_url)
    try:
        channel.append_samples([sample(1)])
        raw.xadd(redis_prefix + "samples", {"d": b"not json"})
        channel.append_samples([sample(2)])
        batch = channel.read_samples("g", "c", count=10)
        assert [s.request_id for s in batch.samples] == ["req-1", "req-2"]
        assert channel.unreadable_samples == 1
        assert raw.xpending(redis_prefix + "samples", "g")["pending"] == 2  # the bad one is acked
    finally:
        channel.close()
        raw.close()


def test_an_unreadable_split_is_skipped_not_fatal(redis_url: str, redis_prefix: str) -> None:
    channel = RedisChannel(redis_url, prefix=redis_prefix, timeout_s=2.0)
    raw = redis.Redis.from_url(redis_url)
    try:
        good = channel.publish_split(SplitConfig("digits", {"baseline": 100.0}))
        raw.hset(redis_prefix + "splits", "broken", b'{"model":"broken","weights":{}}')
        assert channel.get_splits() == {"digits": good}
        seen: list[SplitConfig] = []
        subscription = channel.watch_splits(seen.append)
        wait_for(lambda: seen == [good], what="the readable split")
        subscription.close()
    finally:
        channel.close()
        raw.close()


def test_fast_sample_decoding_equals_the_checked_path() -> None:
    full = sample(3)
    assert decode_sample(full.to_bytes()) == full == Sample.from_bytes(full.to_bytes())
    older = b'{"kind":"request","model":"digits","variant":"int8","ts":1.0}'  # a writer without newer fields
    assert decode_sample(older) == Sample("request", "digits", "int8", 1.0)
    with pytest.raises(TypeError):
        decode_sample(b'{"kind":"request","model":"digits","variant":"int8","ts":1.0,"nonsense":1}')
    assert decode_samples([full.to_bytes(), sample(4).to_bytes()]) == [full, sample(4)]
    assert decode_samples([full.to_bytes(), older]) is None  # the caller falls back to one by one
    assert decode_samples([full.to_bytes(), b"1,2"]) is None
    assert decode_samples([full.to_bytes(), b"not json"]) is None


def test_memory_readings_keep_whether_they_are_exact_and_an_older_routers_are_not(channel: LiveChannel) -> None:
    exact = Sample(kind="memory", model="digits", variant="int8", ts=1.0, rollout_id=7, memory_bytes=4096,
                   memory_total_bytes=9000, runner="subprocess", memory_exact=True)
    cannot = Sample(kind="memory", model="digits", variant="baseline", ts=1.0, runner="inline")
    older = Sample(kind="memory", model="digits", variant="int8", ts=2.0, memory_bytes=777).to_bytes()
    older = older.replace(b',"runner":"","memory_exact":false', b"")  # what a router before the flag wrote
    assert b"memory_exact" not in older
    channel.append_encoded([exact.to_bytes(), cannot.to_bytes(), older], [], 60.0)
    got = channel.read_samples("g", "c", 10).samples
    assert got[:2] == [exact, cannot]
    assert (got[2].memory_bytes, got[2].memory_exact, got[2].runner) == (777, False, "")  # may be an estimate
