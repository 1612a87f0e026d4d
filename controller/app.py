"""The controller's ASGI app: the /v1 ops API, the status pages, /healthz, /readyz and /metrics.

Every failure is answered by the one error envelope of controller/errors.py (`{"error": message}` with its status,
a 400 naming the field for invalid input, never a bare 422 or a plain-text 500).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from controller.api import ApiContext, api_router, context
from controller.body_limit import BodyLimit
from controller.errors import ErrorCounts
from controller.errors import install as install_error_handlers
from controller.openapi import document as document_openapi
from controller.openapi import reject_unknown_query
from controller.pages import pages_router
from controller.reconcile import Reconciler
from controller.transitions import latest_per_model, model_name
from controller.webhooks import WebhookNotifier, outbox_counts
from modelroll.db import RolloutEventRow
from modelroll.errors import ModelrollError
from modelroll.live.base import LiveChannel
from modelroll.settings import Settings
from modelroll.types import Phase

log = logging.getLogger(__name__)


class _Metrics(Collector):
    """Rollout gauges read from the database at scrape time, so every replica exports the same figures."""

    def __init__(self, app: FastAPI, reconciler: Reconciler | None, notifier: WebhookNotifier | None,
                 errors: ErrorCounts) -> None:
        self.app = app
        self.errors = errors
        self.reconciler = reconciler
        self.notifier = notifier

    def collect(self) -> Iterator[Metric]:
        phase = GaugeMetricFamily("modelroll_rollout_phase", "1 for the phase each model's newest rollout is in",
                                  labels=["model", "rollout_id", "phase"])
        weight = GaugeMetricFamily("modelroll_rollout_weight_pct", "Traffic share per variant of each model",
                                   labels=["model", "variant"])
        decisions = CounterMetricFamily("modelroll_rollout_decisions", "Rollout events recorded, by kind",
                                        labels=["kind"])
        outbox = GaugeMetricFamily("modelroll_webhook_outbox", "Webhook notifications in the outbox, by state "
                                   "(waiting: not yet delivered; failed: given up)", labels=["state"])
        try:
            with self.app.state.ctx.session_factory() as session:
                for row in latest_per_model(session):
                    model = model_name(session, row)
                    for p in Phase:
                        phase.add_metric([model, str(row.id), p.value], 1.0 if row.phase == p.value else 0.0)
                    for variant, pct in (row.weights or {}).items():
                        weight.add_metric([model, variant], float(pct))
                for kind, count in session.execute(select(RolloutEventRow.kind, func.count()).group_by(
                        RolloutEventRow.kind)):
                    decisions.add_metric([kind], float(count))
                if self.notifier is not None and self.notifier.url:
                    for state, count in outbox_counts(session).items():
                        outbox.add_metric([state], float(count))
        except Exception as exc:  # a scrape must answer even with the database down; count it
            log.warning("metrics: database unreachable why=%s", exc)
        yield from (phase, weight, decisions, outbox)
        leader = GaugeMetricFamily("modelroll_controller_leader", "1 if this process is the controller leader")
        leader.add_metric([], 1.0 if self.reconciler is not None and self.reconciler.leading else 0.0)
        yield leader
        errors = CounterMetricFamily("modelroll_controller_errors", "Requests answered 5xx, by reason (database: "
                                     "unreachable, 503; unavailable: another backend, 503; internal: 500)",
                                     labels=["reason"])
        for reason, count in self.errors.items():
            errors.add_metric([reason], float(count))
        yield errors
        if self.reconciler is not None:
            counts = CounterMetricFamily("modelroll_controller_events", "Reconciler counters by name",
                                         labels=["name"])
            for name, value in sorted(self.reconciler.counts.items()):
                counts.add_metric([name], float(value))
            yield counts
        if self.notifier is not None:
            hooks = CounterMetricFamily("modelroll_webhook_deliveries", "Webhook notifications this controller "
                                        "delivered (sent) or gave up on (failed)", labels=["outcome"])
            for outcome in ("sent", "failed"):
                hooks.add_metric([outcome], float(getattr(self.notifier, outcome)))
            yield hooks


def create_app(settings: Settings, channel: LiveChannel | None, session_factory: Callable[[], Session], *,
               reconciler: Reconciler | None = None, notifier: WebhookNotifier | None = None) -> FastAPI:
    app = FastAPI(title="modelroll controller", version="1",
                  description="Ops API: models, optimization jobs, rollouts (with If-Match), events and audit.",
                  dependencies=[Depends(reject_unknown_query)])
    app.state.ctx = ApiContext(settings=settings, channel=channel, session_factory=session_factory,
                               notifier=notifier)
    app.include_router(api_router())
    app.include_router(pages_router())
    document_openapi(app, settings)
    errors = ErrorCounts()
    install_error_handlers(app, errors)
    app.add_middleware(BodyLimit, max_body_bytes=settings.controller_max_body_bytes,
                       read_timeout_s=settings.controller_read_timeout_s)
    registry = CollectorRegistry()
    registry.register(_Metrics(app, reconciler, notifier, errors))

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers")
    def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/readyz", tags=["health"], summary="Readiness: the database and the live channel answer",
             responses={503: {"description": "Something is down: `checks` says what"}})
    def readyz(request: Request) -> JSONResponse:
        ctx = context(request)
        checks: dict[str, dict[str, Any]] = {}
        try:
            with ctx.session_factory() as session:
                session.execute(text("SELECT 1"))
            checks["database"] = {"ok": True}
        except Exception as exc:  # reported, not raised: readiness says what is down
            checks["database"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        if ctx.channel is not None:
            try:
                ctx.channel.get_splits()
                checks["live"] = {"ok": True}
            except ModelrollError as exc:
                checks["live"] = {"ok": False, "error": exc.message[:300]}
        if reconciler is not None:
            checks["leader"] = {"ok": True, "leading": reconciler.leading}
        ready = all(c["ok"] for c in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "The Prometheus text exposition format, version 0.0.4"}})
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app

