"""Webhook notifications of rollout phase changes, through a transactional outbox.

A notification is a `webhook_outbox` row written in the same transaction as the transition it reports, so
a controller that crashes or restarts after a decision cannot lose its notification. A daemon thread in
every controller process posts due rows (woken after its own commits, and polling for the rest), with
retries and exponential backoff, each rollout's in the order of its decisions; `FOR UPDATE SKIP LOCKED`
keeps two controllers from posting the same row at once. Delivery is at least once: a crash between the
endpoint's answer and the row's update posts it again, and `delivery_id` lets the receiver drop the repeat.

The payload carries `text` (what Slack-compatible endpoints show) beside the structured fields, and `url`, the
rollout's status page (MODELROLL_PUBLIC_URL); a rollout waiting for approval says where to approve it in its text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased

from modelroll.db import WebhookOutboxRow, utcnow

log = logging.getLogger(__name__)

_BATCH = 20


def payload(kind: str, text: str, rollout: Mapping[str, Any], pages_url: str = "") -> dict[str, Any]:
    url = f"{pages_url}/rollouts/{rollout['id']}" if pages_url and rollout.get("id") is not None else None
    if url is not None and kind == "approval_needed":
        text += f" (approve on the rollout's page: {url})"
    out = {"text": f"[modelroll] {text}", "kind": kind, "rollout": dict(rollout)}
    if url is not None:
        out["url"] = url
    return out


def _waiting(row: Any = WebhookOutboxRow) -> Any:
    return row.delivered_at.is_(None) & row.failed_at.is_(None)


def _deliverable() -> Any:
    """Waiting, and not behind an older waiting notification of the same rollout (decision order)."""
    earlier = aliased(WebhookOutboxRow)
    older_waiting = exists().where(earlier.rollout_id == WebhookOutboxRow.rollout_id, earlier.id < WebhookOutboxRow.id,
                                   _waiting(earlier))
    return _waiting() & ~older_waiting


def outbox_counts(session: Session) -> dict[str, int]:
    """Notifications waiting for delivery and given up, in the whole outbox (what on-call alerts on)."""
    waiting, failed = session.execute(select(func.count().filter(_waiting()),
                                             func.count().filter(WebhookOutboxRow.failed_at.is_not(None)))).one()
    return {"waiting": int(waiting or 0), "failed": int(failed or 0)}


class WebhookNotifier:
    """Queues notifications in the outbox (in the caller's transaction) and posts them from a daemon thread."""

    def __init__(self, url: str, session_factory: Callable[[], Session], *, attempts: int = 5,
                 backoff_s: float = 0.5, timeout_s: float = 5.0, poll_s: float = 2.0,
                 transport: httpx.BaseTransport | None = None, pages_url: str = "") -> None:
        self.url = url
        self.pages_url = pages_url.rstrip("/")
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.poll_s = poll_s
        self.sent = 0
        self.failed = 0
        self._sessions = session_factory
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._client = httpx.Client(timeout=timeout_s, transport=transport)
        self._thread: threading.Thread | None = None
        if url:
            self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
            self._thread.start()

    def enqueue(self, session: Session, kind: str, text: str, rollout: Mapping[str, Any]) -> None:
        """Add one notification to the caller's transaction (nothing without a webhook URL)."""
        if not self.url:
            return
        rollout_id = rollout.get("id")
        session.add(WebhookOutboxRow(kind=kind, body=payload(kind, text, rollout, self.pages_url),
                                     rollout_id=int(rollout_id) if rollout_id is not None else None))

    def wake(self) -> None:
        """Deliver now what was committed (called after the transaction that enqueued it)."""
        self._wake.set()

    def pending(self) -> int:
        """Notifications neither delivered nor given up, in the whole outbox (every controller's)."""
        with self._sessions() as session:
            return outbox_counts(session)["waiting"]

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the outbox holds nothing waiting (tests, shutdown); False when `timeout_s` ran out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.pending() == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.02)

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is due for up to `timeout_s`; what is left stays in the outbox for the next controller."""
        if self._thread is not None:
            try:
                self.flush(timeout_s)
            except Exception as exc:  # the database gone at shutdown: the rows wait for the next controller
                log.warning("webhook outbox not flushed at shutdown: %s", exc)
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout_s)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                while self.deliver_due() and not self._stop.is_set():
                    pass
                wait_s = self._next_due_in()
            except Exception:  # the database away, say: the rows wait, the thread must not die
                log.exception("webhook outbox unreadable; retrying in %.1fs", self.poll_s)
                wait_s = self.poll_s
            self._wake.wait(wait_s)
            self._wake.clear()

    def _next_due_in(self) -> float:
        """Seconds until the next retry is due, at most `poll_s` (rows other controllers write are found by polling)."""
        with self._sessions() as session:
            due = session.scalar(select(func.min(WebhookOutboxRow.next_attempt_at)).where(_deliverable()))
        if due is None:
            return self.poll_s
        return min(self.poll_s, max(0.0, (due - utcnow()).total_seconds()))

    def deliver_due(self) -> int:
        """Post up to one batch of due notifications, oldest first; returns how many were tried."""
        with self._sessions() as session, session.begin():
            rows = list(session.scalars(
                select(WebhookOutboxRow).where(_deliverable(), WebhookOutboxRow.next_attempt_at <= utcnow())
                .order_by(WebhookOutboxRow.id).limit(_BATCH).with_for_update(skip_locked=True)))
            for row in rows:
                self._attempt(row)
            return len(rows)

    def _attempt(self, row: WebhookOutboxRow) -> None:
        body = {**row.body, "delivery_id": row.id, "created_at": row.created_at.isoformat()}
        final = False
        row.attempts += 1
        try:
            response = self._client.post(self.url, json=body)
            if response.is_success:
                row.delivered_at = utcnow()
                self.sent += 1
                return
            # A 4xx other than 408/429 will not get better by retrying.
            final = 400 <= response.status_code < 500 and response.status_code not in (408, 429)
            why = f"status {response.status_code}"
        except httpx.HTTPError as exc:
            why = f"{type(exc).__name__}: {exc}"
        row.last_error = why
        if final or row.attempts >= self.attempts:
            row.failed_at = utcnow()
            self.failed += 1
            log.warning("webhook gave up delivery=%d kind=%s attempts=%d why=%s url=%s", row.id, row.kind,
                        row.attempts, why, self.url)
            return
        row.next_attempt_at = utcnow() + timedelta(seconds=self.backoff_s * 2 ** (row.attempts - 1))
        log.info("webhook attempt failed delivery=%d attempt=%d why=%s", row.id, row.attempts, why)
