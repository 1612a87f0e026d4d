"""The Redis split watcher: a background thread that survives Redis going away.

On every (re)connect it subscribes first, then reads the split hash and delivers it, so a change made
while it was disconnected is never missed; it then delivers each published change, newest version only.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import RedisError

from modelroll.live.base import SplitConfig, Subscription

log = logging.getLogger(__name__)

_POLL_S = 0.2


class RedisSplitWatcher(Subscription):
    """Runs `callback` on its own daemon thread; `close()` stops it within about one poll interval."""

    def __init__(self, make_client: Callable[[], redis.Redis], hash_key: str, channel: str,
                 callback: Callable[[SplitConfig], None], *, where: str,
                 backoff_initial_s: float = 0.05, backoff_max_s: float = 5.0) -> None:
        self._make_client = make_client
        self._hash_key = hash_key
        self._channel = channel
        self._callback = callback
        self._where = where
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.connects = 0
        self.disconnects = 0
        self.callback_errors = 0
        self._thread = threading.Thread(target=self._run, name="modelroll-split-watch", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        backoff_s = self._backoff_initial_s
        while not self._stop.is_set():
            try:
                self._session()
                backoff_s = self._backoff_initial_s
            except (RedisError, OSError) as exc:
                if self.connected.is_set():
                    backoff_s = self._backoff_initial_s
                self.disconnects += 1
                log.warning("split watcher lost Redis at %s: %s; retrying in %.2fs (last split still served)",
                            self._where, exc, backoff_s)
            except Exception:  # never let the thread die: the router would stop hearing about splits
                self.disconnects += 1
                log.exception("split watcher failed unexpectedly; retrying in %.2fs", backoff_s)
            finally:
                self.connected.clear()
            self._stop.wait(backoff_s * random.uniform(0.5, 1.0))
            backoff_s = min(backoff_s * 2, self._backoff_max_s)

    def _session(self) -> None:
        client = self._make_client()
        pubsub = client.pubsub()  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(self._channel)
            self._await_subscribed(pubsub)
            seen: dict[str, int] = {}
            for raw in client.hgetall(self._hash_key).values():
                split = self._parse(raw)
                if split is not None:
                    seen[split.model] = split.version
                    self._deliver(split)
            self.connects += 1
            self.connected.set()
            while not self._stop.is_set():
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_S)
                if message is None or message.get("type") != "message":
                    continue
                split = self._parse(message["data"])
                # Messages queued while the snapshot was read may be older than what it delivered.
                if split is None or split.version <= seen.get(split.model, 0):
                    continue
                seen[split.model] = split.version
                self._deliver(split)
        finally:
            pubsub.close()
            client.close()

    def _await_subscribed(self, pubsub: Any) -> None:
        # The snapshot must be read after the subscription is live, or a change in between is lost.
        for _ in range(int(10 / _POLL_S)):
            if self._stop.is_set():
                return
            message = pubsub.get_message(timeout=_POLL_S)
            if message is not None and message.get("type") == "subscribe":
                return
        raise redis.exceptions.TimeoutError(f"no subscribe confirmation for {self._channel!r} within 10s")

    def _parse(self, raw: bytes | str) -> SplitConfig | None:
        try:
            return SplitConfig.from_bytes(raw)
        except Exception:
            self.callback_errors += 1
            log.exception("split watcher ignored an unreadable split in %s: %r", self._hash_key, raw[:200])
            return None

    def _deliver(self, split: SplitConfig) -> None:
        try:
            self._callback(split)
        except Exception:
            self.callback_errors += 1
            log.exception("split watcher callback failed on model=%s version=%d", split.model, split.version)
