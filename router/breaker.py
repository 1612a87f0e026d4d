"""Circuit breaker per variant: N consecutive failures eject it until the controller publishes a new split.

The router never re-admits an ejected variant on its own: the controller sees the error
samples, treats the ejection as a guardrail trip and decides (a new split version resets it).
"""

from __future__ import annotations

import threading


class Breaker:
    __slots__ = ("_failures", "_lock", "ejected", "threshold")

    def __init__(self, threshold: int) -> None:
        if threshold < 1:
            raise ValueError(f"breaker threshold must be >= 1, got {threshold}")
        self.threshold = threshold
        self._failures = 0
        self.ejected = False
        self._lock = threading.Lock()

    @property
    def failures(self) -> int:
        return self._failures

    def success(self) -> None:
        if self._failures:
            with self._lock:
                self._failures = 0

    def failure(self) -> bool:
        """Count one failure; True when this one ejected the variant."""
        with self._lock:
            self._failures += 1
            if not self.ejected and self._failures >= self.threshold:
                self.ejected = True
                return True
            return False

    def reset(self) -> None:
        with self._lock:
            self._failures = 0
            self.ejected = False
