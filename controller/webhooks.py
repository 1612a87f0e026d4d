"""Webhook notifications of rollout phase changes: a background sender with retries and backoff.

The payload carries `text` (what Slack-compatible endpoints show) beside the structured fields.
Deliveries that fail after every retry, or that overflow the queue, are counted, never silently lost.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any

import httpx

log = logging.getLogger(__name__)


def payload(kind: str, text: str, rollout: Mapping[str, Any]) -> dict[str, Any]:
    return {"text": f"[modelroll] {text}", "kind": kind, "rollout": dict(rollout)}


class WebhookNotifier:
    """Posts JSON payloads to one URL from a daemon thread; `notify` never blocks the caller."""

    def __init__(self, url: str, *, attempts: int = 5, backoff_s: float = 0.5, timeout_s: float = 5.0,
                 max_queued: int = 1000, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_queued)
        self._stop = threading.Event()
        self._pending = 0
        self._lock = threading.Condition()
        self._client = httpx.Client(timeout=timeout_s, transport=transport)
        self._thread: threading.Thread | None = None
        if url:
            self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
            self._thread.start()

    def notify(self, body: dict[str, Any]) -> None:
        if not self.url:
            return
        try:
            with self._lock:
                self._queue.put_nowait(body)
                self._pending += 1
        except queue.Full:
            self.dropped += 1
            log.warning("webhook queue full: notification dropped dropped=%d", self.dropped)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued notification was delivered or given up (tests, shutdown)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None:
            self.flush(timeout_s)
            self._stop.set()
            self._queue.put(None)
            self._thread.join(timeout_s)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            body = self._queue.get()
            if body is None:
                continue
            delivered = self._deliver(body)
            with self._lock:
                self.sent += int(delivered)
                self.failed += int(not delivered)
                self._pending -= 1
                self._lock.notify_all()

    def _deliver(self, body: dict[str, Any]) -> bool:
        for attempt in range(self.attempts):
            try:
                response = self._client.post(self.url, json=body)
                if response.is_success:
                    return True
                # A 4xx other than 408/429 will not get better by retrying.
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    log.warning("webhook refused status=%d url=%s", response.status_code, self.url)
                    return False
                why = f"status {response.status_code}"
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
            log.info("webhook attempt failed attempt=%d why=%s", attempt + 1, why)
            if attempt + 1 < self.attempts and self._stop.wait(self.backoff_s * 2 ** attempt):
                return False
        log.warning("webhook gave up after %d attempts url=%s", self.attempts, self.url)
        return False
