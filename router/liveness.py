"""Split updates from the live channel, applied by one router thread (fail static when the channel is gone).

The channel's watcher calls back from its own thread; the callback only queues, so a slow
variant load never holds up the watcher (or, in embedded mode, the controller publishing).
"""

from __future__ import annotations

import logging
import queue
import threading

from modelroll.errors import ModelrollError
from modelroll.live.base import LiveChannel, SplitConfig, Subscription
from router.runners import RunnerError
from router.table import ModelTable

log = logging.getLogger(__name__)


class LiveSplits:
    def __init__(self, channel: LiveChannel, table: ModelTable) -> None:
        self._channel = channel
        self._table = table
        self._queue: queue.Queue[SplitConfig | None] = queue.Queue()
        self._subscription: Subscription | None = None
        self._thread = threading.Thread(target=self._apply_loop, name="modelroll-split-apply", daemon=True)
        self.applied = 0
        self.failed = 0

    def start(self) -> None:
        try:
            for split in self._channel.get_splits().values():
                self._apply(split)
        except ModelrollError as exc:
            log.warning("live channel unreachable at start-up (%s); serving baselines until it is back", exc)
        self._thread.start()
        self._subscription = self._channel.watch_splits(self._queue.put)

    @property
    def connected(self) -> bool:
        """False while the channel's watcher says it is disconnected (backends without the flag: True)."""
        flag = getattr(self._subscription, "connected", None)
        return flag.is_set() if isinstance(flag, threading.Event) else True

    def _apply(self, split: SplitConfig) -> None:
        try:
            self._table.apply(split)
            self.applied += 1
        except (ModelrollError, RunnerError) as exc:
            self.failed += 1
            log.error("split version %d of model %s not applied, keeping the last one: %s",
                      split.version, split.model, exc)
        except Exception:
            self.failed += 1
            log.exception("split version %d of model %s failed to apply", split.version, split.model)

    def _apply_loop(self) -> None:
        while True:
            split = self._queue.get()
            if split is None:
                return
            self._apply(split)

    def close(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=5)
