"""Job queues on Redis streams: one stream per queue, one consumer group, a dead-letter stream.

A claim takes first an entry whose previous claim is older than the visibility timeout (XAUTOCLAIM,
attempts = its delivery count), else a new entry; entries past `max_attempts` go to the dead letters.
Callers turn Redis errors into `Unavailable`.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import ResponseError

from modelroll.live.base import Job

GROUP = "workers"
_MAX_SCANS = 1000  # XAUTOCLAIM looks at 10 pending entries per call: 10,000 pending at most per claim
_DEAD_READ_MAX = 10_000


def command(client: redis.Redis | Pipeline, *args: Any) -> Any:
    """`execute_command`, whose result redis-py leaves untyped."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# KEYS: the queue's stream; ARGV: group, consumer, entry id. Resets the idle time only while `consumer` still
# owns the entry (XCLAIM ... JUSTID keeps the delivery count), so a heartbeat never steals a job back.
_EXTEND = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


class RedisJobs:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._extend = client.register_script(_EXTEND)
        self._groups: set[str] = set()

    def _key(self, queue: str) -> str:
        return self._prefix + "jobs:" + queue

    def enqueue(self, queue: str, payload: bytes) -> str:
        self._ensure_group(queue)
        return _text(self._client.xadd(self._key(queue), {"p": payload}))

    def claim(self, queue: str, consumer: str, idle_ms: int, max_attempts: int) -> Job | None:
        try:
            return self._claim(queue, consumer, idle_ms, max_attempts)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._groups.discard(queue)  # the stream is gone (e.g. Redis restarted empty): start afresh
            return self._claim(queue, consumer, idle_ms, max_attempts)

    def _claim(self, queue: str, consumer: str, idle_ms: int, max_attempts: int) -> Job | None:
        self._ensure_group(queue)
        key = self._key(queue)
        cursor: bytes | str = "0-0"
        for _ in range(_MAX_SCANS):
            reply: Any = command(self._client, "XAUTOCLAIM", key, GROUP, consumer, idle_ms, cursor, "COUNT", 1)
            cursor, claimed = reply[0], reply[1]
            for entry_id, fields in claimed:
                if not fields:  # deleted while pending; Redis 7 already dropped it from the list
                    continue
                attempts = self._delivery_count(key, entry_id)
                payload = fields[b"p"]
                if attempts > max_attempts:
                    self._bury(queue, entry_id, payload, attempts - 1)
                    continue
                return Job(_text(entry_id), queue, payload, attempts)
            if _text(cursor) == "0-0":
                break
        reply = command(self._client, "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", 1, "STREAMS", key, ">")
        if not reply:
            return None
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        entry_id, fields = entries[0]
        return Job(_text(entry_id), queue, fields[b"p"], 1)

    def _delivery_count(self, key: str, entry_id: bytes) -> int:
        rows = self._client.xpending_range(key, GROUP, min=entry_id, max=entry_id, count=1)
        return int(rows[0]["times_delivered"]) if rows else 1

    def _bury(self, queue: str, entry_id: bytes, payload: bytes, attempts: int) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.xadd(self._key(queue) + ":dead", {"id": entry_id, "p": payload, "a": attempts})
        pipe.xack(self._key(queue), GROUP, entry_id)
        pipe.xdel(self._key(queue), entry_id)
        pipe.execute()

    def ack(self, job: Job) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.xack(self._key(job.queue), GROUP, job.id)
        pipe.xdel(self._key(job.queue), job.id)
        pipe.execute()

    def extend(self, job: Job, consumer: str) -> bool:
        return bool(self._extend(keys=[self._key(job.queue)], args=[GROUP, consumer, job.id]))

    def dead_letters(self, queue: str) -> list[Job]:
        rows: Any = self._client.xrange(self._key(queue) + ":dead", count=_DEAD_READ_MAX)
        return [Job(_text(f[b"id"]), queue, f[b"p"], int(f[b"a"])) for _, f in rows]

    def _ensure_group(self, queue: str) -> None:
        if queue in self._groups:
            return
        try:
            self._client.xgroup_create(self._key(queue), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(queue)
