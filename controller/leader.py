"""Leader election over the live channel's lock: a thread that acquires, renews at a third of the lease, steps down.

`token()` is the fencing token while this process may act as leader; it turns None as soon as a renewal fails
or the lease would have run out, so a paused process stops on its own even before a fence refuses it.
With `take_office` the token is the one it returns for the lock's token (controller/fencing.py records it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from modelroll.errors import Unavailable
from modelroll.live.base import LiveChannel

log = logging.getLogger(__name__)

LOCK = "controller"
STANDBY_POLL_S = 0.2


class LeaderElector:
    def __init__(self, channel: LiveChannel, holder: str, lease_s: float, name: str = LOCK,
                 take_office: Callable[[int], int] | None = None) -> None:
        self.channel = channel
        self.take_office = take_office
        self.holder = holder
        self.lease_s = lease_s
        self.name = name
        self.elections = 0
        self._token: int | None = None
        self._valid_until = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def token(self) -> int | None:
        with self._lock:
            if self._token is not None and time.monotonic() >= self._valid_until:
                log.warning("leader lease ran out before renewal; stepping down holder=%s", self.holder)
                self._token = None
            return self._token

    def poll(self) -> int | None:
        """One acquire-or-renew round; returns the token if this process leads after it."""
        started = time.monotonic()
        with self._lock:
            token = self._token
        try:
            if token is not None:
                if not self.channel.renew_lock(self.name, self.holder, self.lease_s):
                    log.warning("leader lock lost holder=%s token=%s", self.holder, token)
                    token = None
            else:
                token = self.channel.acquire_lock(self.name, self.holder, self.lease_s)
                if token is not None:
                    token = self._enter_office(token)
                if token is not None:
                    self.elections += 1
                    log.info("became leader holder=%s token=%s", self.holder, token)
        except Unavailable as exc:
            log.warning("leader lock unreachable holder=%s why=%s", self.holder, exc)
            with self._lock:
                return self._token  # keep what we had until its lease runs out (token() checks)
        with self._lock:
            self._token = token
            # Count the lease from before the call: the lock's TTL started no later than that.
            self._valid_until = started + self.lease_s if token is not None else 0.0
            return token

    def _enter_office(self, lock_token: int) -> int | None:
        if self.take_office is None:
            return lock_token
        try:
            return self.take_office(lock_token)
        except Exception as exc:  # the database is away: not leading, and another may try meanwhile
            log.warning("cannot take office holder=%s lock_token=%s why=%s", self.holder, lock_token, exc)
            with contextlib.suppress(Unavailable):
                self.channel.release_lock(self.name, self.holder)
            return None

    def step_down(self) -> None:
        with self._lock:
            token, self._token = self._token, None
        if token is not None:
            with contextlib.suppress(Unavailable):  # else the lease runs out by itself
                self.channel.release_lock(self.name, self.holder)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-elector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.lease_s)
        self.step_down()

    def _run(self) -> None:
        while not self._stop.is_set():
            leading = self.poll() is not None
            # A leader renews at a third of the lease; a standby looks often (one SET NX) so that a lock released on
            # a graceful stop is taken within a fraction of a second.
            self._stop.wait(self.lease_s / 3 if leading else max(0.05, min(STANDBY_POLL_S, self.lease_s / 10)))
