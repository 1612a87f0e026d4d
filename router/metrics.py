"""Prometheus metrics of the router, one registry per app; multiprocess-safe under `--workers N`.

With PROMETHEUS_MULTIPROC_DIR set (the CLI sets it for several workers) values live in shared
files and /metrics aggregates every worker. Label children are cached: one dict lookup per use.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from router.records import RequestRecord

CONTENT_TYPE = CONTENT_TYPE_LATEST

_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Runner time of small models is tens of microseconds: finer low buckets keep p50 ratios readable.
_MODEL_BUCKETS_S = (0.00005, 0.0001, 0.00025, *_BUCKETS_S)
FEEDBACK_RESULTS = ("correct", "wrong")
FEEDBACK_STATUSES = ("joined", "unknown", "invalid")
# Label values of `modelroll_requests_total` that no model name can take (names start with a letter or a digit), so
# that a client cannot grow the label set: every name the router does not serve counts as one, and endpoints about no
# model (health, server metadata, feedback, metrics, unknown paths) as another.
UNKNOWN_MODEL = "(unknown)"
NO_MODEL = "-"
NO_VARIANT = "-"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("modelroll_requests_total", "Requests answered, by model (a served model; "
                                f"{UNKNOWN_MODEL} for any other name; {NO_MODEL} for endpoints about no model), "
                                f"variant ({NO_VARIANT} when no variant answered) and HTTP code.",
                                ["model", "variant", "code"], registry=r)
        self.errors = Counter("modelroll_request_errors_total", "Variant calls that failed, by status.",
                              ["model", "variant", "status"], registry=r)
        self.duration = Histogram("modelroll_request_duration_seconds", "Whole request time in the router.",
                                  ["model", "variant"], buckets=_BUCKETS_S, registry=r)
        self.model_latency = Histogram("modelroll_model_latency_seconds", "The model's own time per call (runner "
                                       "time, shadow calls included): what the latency gate compares.",
                                       ["model", "variant"], buckets=_MODEL_BUCKETS_S, registry=r)
        self.feedback = Counter("modelroll_feedback_total", "Predicted rows joined to a feedback label, by result "
                                "(correct | wrong); each side of a shadow pair counts.",
                                ["model", "variant", "result"], registry=r)
        self.feedback_items = Counter("modelroll_feedback_items_total", "Feedback items received, by status "
                                      "(joined | unknown: no stored prediction | invalid).", ["status"], registry=r)
        self.fallbacks = Counter("modelroll_fallbacks_total", "Requests answered by the baseline instead of "
                                 "the variant chosen for them.", ["model", "variant", "reason"], registry=r)
        self.shadow_skipped = Counter("modelroll_shadow_skipped_total", "Shadow calls skipped: over the "
                                      "concurrency bound.", ["model", "variant"], registry=r)
        self.samples_dropped = Counter("modelroll_samples_dropped_total", "Samples dropped because the buffer "
                                       "was full.", registry=r)
        self.samples_unsent = Counter("modelroll_samples_unsent_total", "Samples whose first send to the live "
                                      "channel failed.", registry=r)
        self.weights = Gauge("modelroll_variant_weight_pct", "Current split weight (percent).",
                             ["model", "variant"], registry=r, multiprocess_mode="livemax")
        self.ejected = Gauge("modelroll_variant_ejected", "1 while the circuit breaker keeps the variant out.",
                             ["model", "variant"], registry=r, multiprocess_mode="livemax")
        self.memory = Gauge("modelroll_runner_memory_bytes", "Resident memory the variant's model costs, where "
                            "its runner measures it exactly (subprocess; not inline or remote).",
                            ["model", "variant"], registry=r, multiprocess_mode="livesum")
        self.live_degraded = Gauge("modelroll_live_channel_degraded", "1 while the live channel is unreachable.",
                                   registry=r, multiprocess_mode="livemax")
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._duration_children: dict[tuple[str, str], Any] = {}
        self._model_children: dict[tuple[str, str], Any] = {}
        self._feedback_children: dict[tuple[str, str, bool], Any] = {}
        self._item_children = {status: self.feedback_items.labels(status) for status in FEEDBACK_STATUSES}
        self._unsent_seen = 0

    def observe_request(self, model: str, variant: str, code: int, seconds: float) -> None:
        key = (model, variant, code)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(model, variant, str(code))
        child.inc()
        dkey = (model, variant)
        hist = self._duration_children.get(dkey)
        if hist is None:
            hist = self._duration_children[dkey] = self.duration.labels(model, variant)
        hist.observe(seconds)

    def count_answer(self, model: str, code: int) -> None:
        """A request answered without running a variant (health, metadata, metrics, feedback, any refusal)."""
        key = (model, NO_VARIANT, code)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(model, NO_VARIANT, str(code))
        child.inc()

    def observe_runs(self, records: list[RequestRecord]) -> None:
        """Runner time of each successful variant call; called when samples are encoded (`Recorder.settle`)."""
        children = self._model_children
        for r in records:
            if r.status != "ok":
                continue
            key = (r.model, r.variant)
            child = children.get(key)
            if child is None:
                child = children[key] = self.model_latency.labels(r.model, r.variant)
            child.observe(r.latency_ms / 1000.0)

    def observe_feedback(self, model: str, variant: str, correct: bool) -> None:
        key = (model, variant, correct)
        child = self._feedback_children.get(key)
        if child is None:
            child = self._feedback_children[key] = self.feedback.labels(model, variant, FEEDBACK_RESULTS[not correct])
        child.inc()

    def count_feedback_items(self, status: str, n: int) -> None:
        if n:
            self._item_children[status].inc(n)

    def sync_unsent(self, unsent_total: int) -> None:
        if unsent_total > self._unsent_seen:
            self.samples_unsent.inc(unsent_total - self._unsent_seen)
            self._unsent_seen = unsent_total

    def render(self) -> bytes:
        mp_dir = multiprocess_dir()
        if mp_dir:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=mp_dir)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
