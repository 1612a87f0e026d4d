"""The controller leader's hourly `gc`: retention, garbage artifacts, SQLite shrink (modelroll/cleanup.py).

A thread of its own beside the reconciler, so a long pass (a VACUUM) never delays a rollout decision; only the
leader runs it, so two controllers never collect at once. A failed pass is counted and retried next time.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from modelroll.cleanup import Report, collect
from modelroll.settings import Settings

log = logging.getLogger(__name__)

INTERVAL_S = 3600.0
FIRST_DELAY_S = 60.0  # after start: let the leader settle and the first decisions go first
ACTOR = "controller"


class Housekeeping:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], leading: Callable[[], bool], *,
                 interval_s: float = INTERVAL_S, first_delay_s: float = FIRST_DELAY_S,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.settings = settings
        self.sessions = sessions
        self.leading = leading
        self.interval_s = interval_s
        self.first_delay_s = first_delay_s
        self.clock = clock
        self.counts: Counter[str] = Counter()  # passes, errors, windows, artifacts, freed_bytes
        self.last: Report | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> Report | None:
        """One pass if this controller leads; returns its report (None when not leading)."""
        if not self.leading():
            return None
        report = collect(self.sessions, self.settings.effective_artifacts_dir,
                         retention_days=self.settings.retention_days, actor=ACTOR, now=self.clock())
        self.last = report
        self.counts["passes"] += 1
        self.counts["windows"] += report.windows
        self.counts["artifacts"] += len(report.artifacts)
        self.counts["freed_bytes"] += report.freed_bytes
        if report.changed:
            log.info("gc windows=%s notifications=%s artifacts=%s files=%s freed_bytes=%s", report.windows,
                     report.notifications, len(report.artifacts),
                     len(report.orphans) + len(report.trees) + len(report.scratch), report.freed_bytes)
        for error in report.errors:
            log.warning("gc: %s", error)
        return report

    def run(self) -> None:
        wait_s = self.first_delay_s
        while not self._stop.wait(wait_s):
            wait_s = self.interval_s
            try:
                self.run_once()
            except Exception:  # the database or the volume away: counted, logged, tried again next interval
                self.counts["errors"] += 1
                log.exception("gc pass failed; retrying in %.0f s", self.interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="housekeeping", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
