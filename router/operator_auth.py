"""Who may force a variant: a bearer token whose sha256 is an operator/admin row in api_tokens, or the admin token.

Answers are cached briefly so a debugging session does not hit the database per request;
this is never on the normal inference path (only requests that ask to force a variant).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from typing import Any

from modelroll.errors import Unavailable

_ROLES = ("operator", "admin")


class OperatorTokens:
    def __init__(self, session_factory: Callable[[], Any] | None, admin_token: str = "",
                 cache_ttl_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions = session_factory
        self._admin_digest = hashlib.sha256(admin_token.encode()).hexdigest() if admin_token else ""
        self._ttl_s = cache_ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[bool, float]] = {}
        self._lock = threading.Lock()

    def allows(self, token: str) -> bool:
        """True when `token` belongs to an operator or admin (blocking: call it off the event loop)."""
        if not token:
            return False
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        if self._admin_digest and hmac.compare_digest(digest, self._admin_digest):
            return True
        now = self._clock()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        allowed = self._lookup(digest)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (allowed, now + self._ttl_s)
        return allowed

    def _lookup(self, digest: str) -> bool:
        if self._sessions is None:
            return False
        from sqlalchemy import select
        from sqlalchemy.exc import SQLAlchemyError

        from modelroll.db import ApiTokenRow

        try:
            with self._sessions() as session:
                row = session.scalars(
                    select(ApiTokenRow).where(ApiTokenRow.token_sha256 == digest)
                ).one_or_none()
        except SQLAlchemyError as exc:
            raise Unavailable(f"cannot check the token: the database is unreachable ({type(exc).__name__})") from exc
        return row is not None and row.revoked_at is None and row.role in _ROLES
