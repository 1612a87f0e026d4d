"""The distributed live channel on Redis (>= 7.0), every key under one prefix.

Splits: a hash (model -> json) + per-model version + pub/sub; samples and jobs: streams with consumer
groups; predictions: keys with a PX TTL; leader lock: a key guarded by Lua with an INCR fencing token.
Every Redis failure becomes `Unavailable` within the configured socket timeout.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from modelroll.errors import InvalidInput, Unavailable
from modelroll.live.base import Job, LiveChannel, Sample, SampleBatch, SplitConfig, Subscription
from modelroll.live.memory import DEFAULT_SAMPLES_MAX_LEN
from modelroll.live.redis_jobs import RedisJobs, command
from modelroll.live.redis_lock import RedisLocks
from modelroll.live.redis_watch import RedisSplitWatcher
from modelroll.live.sample_codec import decode_sample, decode_samples

log = logging.getLogger(__name__)

_FIELD = b"d"  # the one field of a sample entry: its orjson bytes
_PIPELINE_BATCH = 1000
_ACK_BATCH = 10_000
_SCRIPT_BATCH = 256  # rows per append_encoded script call: Redis runs a script alone, keep each ~1 ms

# KEYS: samples stream, then one prediction key per record; ARGV: n samples, max len, field, px,
# the n sample payloads, then the records in the order of their keys. One reply instead of 2n.
_APPEND_ENCODED = """
local n = tonumber(ARGV[1])
for i = 1, n do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', ARGV[3], ARGV[4 + i])
end
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[3 + n + i], 'PX', ARGV[4])
end
return n
"""

# KEYS: splits hash, versions hash, changes channel; ARGV: model, json without its closing `"version":N}`.
_PUBLISH_SPLIT = """
local v = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local doc = ARGV[2] .. v .. '}'
redis.call('HSET', KEYS[1], ARGV[1], doc)
redis.call('PUBLISH', KEYS[3], doc)
return v
"""


def resp_command(args: Sequence[bytes]) -> bytes:
    """One command in Redis' wire format, packed by two C-level joins: redis-py's packer costs ~7 µs per
    sample on the router's flush (three arguments each), this ~1 µs."""
    return b"*%d\r\n" % len(args) + b"".join([b"$%d\r\n%b\r\n" % (len(a), a) for a in args])


def safe_url(url: str) -> str:
    """The URL without its password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def ttl_ms(ttl_s: float, what: str) -> int:
    if ttl_s <= 0:
        raise InvalidInput(f"{what} must be positive, got {ttl_s}")
    return max(1, round(ttl_s * 1000))


class RedisChannel(LiveChannel):
    """One connection pool shared by every thread; the split watcher opens its own connection."""

    def __init__(self, url: str, prefix: str = "modelroll:", timeout_s: float = 1.0,
                 samples_max_len: int = DEFAULT_SAMPLES_MAX_LEN) -> None:
        if samples_max_len < 1:
            raise InvalidInput(f"samples_max_len must be at least 1, got {samples_max_len}")
        self._where = safe_url(url)
        self._url = url
        self._timeout_s = timeout_s
        self._prefix = prefix
        self._max_len = samples_max_len
        self._client = self._new_client()
        self._samples_key = prefix + "samples"
        self._samples_key_bytes = self._samples_key.encode()
        self._prediction_prefix = prefix + "prediction:"
        self._prediction_prefix_bytes = self._prediction_prefix.encode()
        self._splits_key = prefix + "splits"
        self._versions_key = prefix + "split-versions"
        self._changes_key = prefix + "split-changes"
        self._groups: set[str] = set()
        self._publish = self._client.register_script(_PUBLISH_SPLIT)
        self._append_encoded = self._client.register_script(_APPEND_ENCODED)
        self._locks = RedisLocks(self._client, prefix)
        self._jobs = RedisJobs(self._client, prefix)
        self._watchers: list[RedisSplitWatcher] = []
        self.unreadable_samples = 0

    def _new_client(self, **extra: Any) -> redis.Redis:
        try:
            # No client-side retries: one bounded attempt, then the caller hears `Unavailable`.
            pool = redis.ConnectionPool.from_url(
                self._url, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s,
                retry=Retry(NoBackoff(), 0), **extra)
        except ValueError as exc:
            raise InvalidInput(f"redis_url {self._where!r} is not a Redis URL ({exc}); accepted: "
                               "redis://host:port/db, rediss://host:port/db, unix:///path") from exc
        return redis.Redis(connection_pool=pool)

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise Unavailable(f"Redis at {self._where} is unreachable ({action}): {exc}; the router keeps "
                              "serving the last split and modelroll retries when Redis is back") from exc
        except RedisError as exc:
            raise Unavailable(f"Redis at {self._where} refused to {action}: {exc}") from exc

    # --- split config -------------------------------------------------------------
    def publish_split(self, split: SplitConfig) -> SplitConfig:
        doc = orjson.loads(split.to_bytes())
        del doc["version"]
        head = orjson.dumps(doc)[:-1] + b',"version":'
        with self._guard(f"publish the split of {split.model!r}"):
            version = int(self._publish(keys=[self._splits_key, self._versions_key, self._changes_key],
                                        args=[split.model, head]))
        return SplitConfig.from_bytes(head + str(version).encode() + b"}")

    def get_splits(self) -> dict[str, SplitConfig]:
        with self._guard("read the splits"):
            raw = self._client.hgetall(self._splits_key)
        splits: dict[str, SplitConfig] = {}
        for model, value in raw.items():
            try:
                split = SplitConfig.from_bytes(value)
            except Exception:  # one bad entry must not hide the others from the status page
                log.exception("split of %r in %s is unreadable; skipped", model, self._splits_key)
                continue
            splits[split.model] = split
        return splits

    def watch_splits(self, callback: Callable[[SplitConfig], None]) -> Subscription:
        watcher = RedisSplitWatcher(
            lambda: self._new_client(health_check_interval=max(1, round(self._timeout_s * 2)),
                                     client_name=re.sub(r"[^!-~]", "_", self._prefix) + "watch"),
            self._splits_key, self._changes_key, callback, where=self._where)
        self._watchers.append(watcher)
        return watcher

    # --- samples ------------------------------------------------------------------
    def append_samples(self, samples: Sequence[Sample]) -> None:
        if not samples:
            return
        key, max_len = self._samples_key, self._max_len
        with self._guard(f"append {len(samples)} samples"):
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(samples), _PIPELINE_BATCH):
                for sample in samples[start: start + _PIPELINE_BATCH]:
                    command(pipe, "XADD", key, "MAXLEN", "~", max_len, "*", _FIELD, sample.to_bytes())
                pipe.execute()

    def read_samples(self, group: str, consumer: str, count: int, block_s: float = 0.0) -> SampleBatch:
        if count < 1:
            raise InvalidInput(f"count must be at least 1, got {count}")
        deadline = time.monotonic() + max(block_s, 0.0)
        with self._guard(f"read samples for group {group!r}"):
            self._ensure_group(group)
            batch = SampleBatch()
            self._read_into(batch, group, consumer, count, "0", None)
            while len(batch.ids) < count:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                # Block in slices shorter than the socket timeout, and only when there is nothing to return.
                block_ms = min(remaining_ms, int(self._timeout_s * 500)) if not batch.ids and remaining_ms > 0 else None
                got = self._read_into(batch, group, consumer, count - len(batch.ids), ">", block_ms)
                if got or block_ms is None:
                    break
            return batch

    def _read_into(self, batch: SampleBatch, group: str, consumer: str, count: int, start: str,
                   block_ms: int | None) -> int:
        args: list[Any] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", max(block_ms, 1)]
        try:
            reply = command(self._client, *args, "STREAMS", self._samples_key, start)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._groups.discard(group)  # the stream was deleted (e.g. Redis restarted empty)
            self._ensure_group(group)
            reply = command(self._client, *args, "STREAMS", self._samples_key, start)
        if not reply:
            return 0
        gone: list[bytes] = []
        kept: list[tuple[bytes, bytes]] = []
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        for entry_id, fields in entries:
            if fields:
                kept.append((entry_id, fields[_FIELD] if isinstance(fields, dict) else fields[1]))
            else:  # trimmed while pending: nothing left to redeliver
                gone.append(entry_id)
        samples = decode_samples([payload for _, payload in kept])
        if samples is not None:
            batch.ids.extend(entry_id.decode() for entry_id, _ in kept)
            batch.samples.extend(samples)
        else:
            self._decode_one_by_one(kept, batch, gone)
        if gone:
            self._client.xack(self._samples_key, group, *gone)
        return len(entries)

    def _decode_one_by_one(self, kept: list[tuple[bytes, bytes]], batch: SampleBatch, gone: list[bytes]) -> None:
        for entry_id, payload in kept:
            try:
                sample = decode_sample(payload)
            except (ValueError, TypeError):
                # Acked and counted, or it would come back to this consumer on every read.
                self.unreadable_samples += 1
                log.exception("sample %r in %s is unreadable; dropped", entry_id, self._samples_key)
                gone.append(entry_id)
                continue
            batch.ids.append(entry_id.decode())
            batch.samples.append(sample)

    def _ensure_group(self, group: str) -> None:
        if group in self._groups:
            return
        try:
            self._client.xgroup_create(self._samples_key, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(group)

    def ack_samples(self, group: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._guard(f"acknowledge {len(ids)} samples of group {group!r}"):
            for start in range(0, len(ids), _ACK_BATCH):
                self._client.xack(self._samples_key, group, *ids[start: start + _ACK_BATCH])

    def trimmed_samples(self) -> int:
        with self._guard("read the sample log's length"):
            try:
                info = command(self._client, "XINFO", "STREAM", self._samples_key)
            except ResponseError as exc:
                if "no such key" in str(exc):
                    return 0
                raise
        fields = dict(zip(info[::2], info[1::2], strict=True)) if isinstance(info, list) else info
        return int(fields[b"entries-added"]) - int(fields[b"length"])

    # --- feedback join ------------------------------------------------------------
    def put_prediction(self, request_id: str, record: bytes, ttl_s: float) -> None:
        px = ttl_ms(ttl_s, "prediction ttl_s")
        with self._guard(f"store the prediction of request {request_id!r}"):
            self._client.set(self._prediction_prefix + request_id, record, px=px)

    def put_predictions(self, records: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        px = ttl_ms(ttl_s, "prediction ttl_s")
        with self._guard(f"store {len(records)} predictions"):
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(records), _PIPELINE_BATCH):
                for request_id, record in records[start: start + _PIPELINE_BATCH]:
                    pipe.set(self._prediction_prefix + request_id, record, px=px)
                pipe.execute()

    def append_encoded(self, samples: Sequence[bytes], predictions: Sequence[tuple[str, bytes]],
                       ttl_s: float) -> None:
        px = ttl_ms(ttl_s, "prediction ttl_s")
        with self._guard(f"append {len(samples)} samples and store {len(predictions)} predictions"):
            fixed = [b"%d" % self._max_len, _FIELD, b"%d" % px]
            for start in range(0, max(len(samples), len(predictions)), _SCRIPT_BATCH):
                chunk = samples[start: start + _SCRIPT_BATCH]
                records = predictions[start: start + _SCRIPT_BATCH]
                keys = [self._prediction_prefix_bytes + rid.encode("utf-8", "surrogateescape") for rid, _ in records]
                self._run_packed(self._append_encoded, [
                    b"%d" % (len(keys) + 1), self._samples_key_bytes, *keys, b"%d" % len(chunk), *fixed, *chunk,
                    *(record for _, record in records)])

    def _run_packed(self, script: Any, args: list[bytes]) -> Any:
        """EVALSHA `script` with `args` (numkeys, keys, argv) packed by `resp_command`; loads the script when
        the server does not know it (a restarted or emptied Redis)."""
        pool = self._client.connection_pool
        for attempt in (1, 2):
            connection = pool.get_connection()
            try:
                connection.send_packed_command([resp_command([b"EVALSHA", script.sha.encode(), *args])])  # type: ignore[no-untyped-call]
                return connection.read_response()
            except NoScriptError:
                if attempt == 2:
                    raise
                script.sha = self._client.script_load(script.script)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                connection.disconnect()  # type: ignore[no-untyped-call]
                raise
            finally:
                pool.release(connection)
        raise AssertionError("unreachable")

    def take_prediction(self, request_id: str) -> bytes | None:
        with self._guard(f"take the prediction of request {request_id!r}"):
            value: Any = self._client.getdel(self._prediction_prefix + request_id)
        return None if value is None else bytes(value)

    # --- job queue ----------------------------------------------------------------
    def enqueue_job(self, queue: str, payload: bytes) -> str:
        with self._guard(f"enqueue a job on {queue!r}"):
            return self._jobs.enqueue(queue, payload)

    def claim_job(self, queue: str, consumer: str, visibility_timeout_s: float,
                  max_attempts: int) -> Job | None:
        if max_attempts < 1:
            raise InvalidInput(f"max_attempts must be at least 1, got {max_attempts}")
        idle_ms = ttl_ms(visibility_timeout_s, "visibility_timeout_s")
        with self._guard(f"claim a job from {queue!r}"):
            return self._jobs.claim(queue, consumer, idle_ms, max_attempts)

    def ack_job(self, job: Job) -> None:
        with self._guard(f"acknowledge job {job.id} of {job.queue!r}"):
            self._jobs.ack(job)

    def extend_job(self, job: Job, consumer: str) -> bool:
        with self._guard(f"extend the claim on job {job.id} of {job.queue!r}"):
            return self._jobs.extend(job, consumer)

    def dead_letters(self, queue: str) -> list[Job]:
        with self._guard(f"read the dead letters of {queue!r}"):
            return self._jobs.dead_letters(queue)

    # --- leader lock --------------------------------------------------------------
    def acquire_lock(self, name: str, holder: str, ttl_s: float) -> int | None:
        px = ttl_ms(ttl_s, "lock ttl_s")
        with self._guard(f"acquire lock {name!r}"):
            return self._locks.acquire(name, holder, px)

    def renew_lock(self, name: str, holder: str, ttl_s: float) -> bool:
        px = ttl_ms(ttl_s, "lock ttl_s")
        with self._guard(f"renew lock {name!r}"):
            return self._locks.renew(name, holder, px)

    def release_lock(self, name: str, holder: str) -> None:
        with self._guard(f"release lock {name!r}"):
            self._locks.release(name, holder)

    def close(self) -> None:
        for watcher in self._watchers:
            watcher.close()
        self._watchers.clear()
        self._client.close()
