"""The router's ASGI app: Open Inference Protocol V2 endpoints, feedback, readiness and metrics.

`create_app(settings, channel, catalog_source)` does all set-up up front (variants loaded,
splits applied, threads started); the per-request path is a raw ASGI dispatch on the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from modelroll.errors import (
    Forbidden,
    ModelrollError,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    Unavailable,
)
from modelroll.live.base import LiveChannel, Sample
from modelroll.settings import Settings
from router import asgi
from router.asgi import ClientDisconnected, Receive, Scope, Send
from router.feedback import FeedbackJoiner, parse_items
from router.inference import Inference
from router.inline import InlineGate, Watchdog
from router.liveness import LiveSplits
from router.metrics import CONTENT_TYPE, NO_MODEL, NO_VARIANT, UNKNOWN_MODEL, RouterMetrics
from router.operator_auth import OperatorTokens
from router.protocol import decode_request, encode_response
from router.runners import InlineRunner, Runner, RunnerError
from router.samples import Recorder
from router.table import LoadedVariant, ModelRoutes, ModelTable
from router.variants import VariantSource

log = logging.getLogger(__name__)

_perf = time.perf_counter
_UNAUTHORIZED = "forcing a variant needs an operator or admin token: send it as Authorization: Bearer <token>"
_FORBIDDEN = ("forcing a variant needs an operator or admin token; this one is not (unknown, revoked or of another "
              "role)")
_INLINE_STALL_S = 0.25  # the longest an inline run may hold the event loop before the pool takes over
_CLOSE = [(b"connection", b"close")]
_CHALLENGE = [(b"www-authenticate", b'Bearer realm="modelroll"')]
# The V2 data plane as it is served (router/openapi.json, static: read once, sent as is).
_OPENAPI = Path(__file__).with_name("openapi.json").read_bytes()
_SERVER = orjson.dumps({"name": "modelroll-router", "version": "0.1.0", "extensions": ["binary_tensor_data"]})


class RouterApp:
    def __init__(self, settings: Settings, channel: LiveChannel, source: VariantSource, *,
                 registry: CollectorRegistry | None = None, token_sessions: Any = None) -> None:
        self.settings = settings
        self.channel = channel
        self.metrics = RouterMetrics(registry)
        self._watchdog: Watchdog | None = None  # started with the first in-process model that may run inline
        self.table = ModelTable(source, default_runner=settings.router_runner, threads=settings.router_threads,
                                breaker_failures=settings.router_breaker_failures, on_change=self._routes_changed,
                                inline_gate=self._inline_gate)
        self.recorder = Recorder(channel, capacity=settings.router_sample_buffer,
                                 flush_interval_s=settings.router_flush_interval_s,
                                 feedback_ttl_s=settings.feedback_ttl_s,
                                 memory_interval_s=settings.router_memory_interval_s,
                                 memory_probe=self._memory_samples, on_drop=self.metrics.samples_dropped.inc,
                                 on_records=self.metrics.observe_runs)
        workers = max(4, (os.cpu_count() or 1) * 2)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="modelroll-run")
        self._shadow_executor = ThreadPoolExecutor(max(1, settings.router_shadow_max_concurrency),
                                                   thread_name_prefix="modelroll-shadow")
        self.inference = Inference(self.recorder, self.metrics, executor=self._executor,
                                   shadow_executor=self._shadow_executor,
                                   candidate_timeout_s=settings.router_candidate_timeout_s,
                                   shadow_max_concurrency=settings.router_shadow_max_concurrency)
        self.feedback = FeedbackJoiner(channel, self._feedback_sample)
        self.tokens = OperatorTokens(token_sessions or _LazySessions(settings), settings.admin_token)
        self._max_body = settings.router_max_body_bytes
        self._deadlines = asgi.ReadDeadlines(settings.router_read_timeout_s)
        self._ids = itertools.count(1)
        self._settle_loop: asyncio.AbstractEventLoop | None = None  # where a `_settle` call waits to run
        self._answered: list[tuple[str, str, float]] = []  # (model, variant, seconds) not yet in the metrics
        self._id_prefix = os.urandom(5).hex() + "-"
        self.table.load_all()
        self.live = LiveSplits(channel, self.table)
        self.live.start()
        self.recorder.start()
        self._closed = False

    # --- set-up helpers -----------------------------------------------------------
    def _routes_changed(self, routes: ModelRoutes) -> None:
        for name in routes.known:
            self.metrics.weights.labels(routes.model, name).set(routes.split.weights.get(name, 0.0))
        for name, variant in routes.variants.items():
            self.metrics.ejected.labels(routes.model, name).set(1 if variant.breaker.ejected else 0)

    def _feedback_sample(self, sample: Sample) -> None:
        if sample.correct is not None:
            self.metrics.observe_feedback(sample.model, sample.variant, sample.correct)
        self.recorder.add(sample)

    def _memory_samples(self) -> list[Any]:
        """A reading per loaded variant; a runner that cannot measure its model's own memory sends a sample that
        says so (no figure), so that the controller shows why memory is undecided instead of waiting for readings."""
        out = []
        now = time.time()
        for loaded in self.table.runners():
            runner = loaded.runner
            measured = runner.memory() if runner.measures_memory else None
            if measured is None and runner.measures_memory:
                continue  # no reading now (a child being restarted): the next probe has one
            routes = self.table.routes.get(loaded.model)
            model_bytes, total_bytes = measured or (0, 0)
            if measured is not None:
                self.metrics.memory.labels(loaded.model, loaded.name).set(model_bytes)
            out.append(Sample(kind="memory", model=loaded.model, variant=loaded.name, ts=now,
                              rollout_id=routes.rollout_id if routes else None,
                              step=routes.step if routes else None, memory_bytes=model_bytes,
                              memory_total_bytes=total_bytes, runner=runner.kind, memory_exact=measured is not None))
        out.extend(self.table.cannot_serve_samples(now))  # the controller fails the rollout of such a candidate
        self.metrics.sync_unsent(self.recorder.unsent)
        self.metrics.live_degraded.set(1 if self.degraded else 0)
        return out

    @property
    def degraded(self) -> bool:
        return self.recorder.degraded or not self.live.connected

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.live.close()
        self.recorder.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._shadow_executor.shutdown(wait=False, cancel_futures=True)
        self.table.close()
        if self._watchdog is not None:
            self._watchdog.close()

    def _inline_gate(self, runner: Runner) -> InlineGate | None:
        """Called by the table under its load lock, once per loaded variant."""
        if self.settings.router_inline_max_ms <= 0 or not isinstance(runner, InlineRunner):
            return None
        if self._watchdog is None:
            self._watchdog = Watchdog()
        return InlineGate(runner, self._watchdog, max_ms=self.settings.router_inline_max_ms,
                          stall_s=min(self.settings.router_candidate_timeout_s, _INLINE_STALL_S))

    # --- ASGI -----------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            start = _perf()
            try:
                await self._dispatch(scope, receive, send, start)
            except ModelrollError as exc:
                self._count_refusal(scope["path"], exc.status_code, start)
                await asgi.send_error(send, exc.status_code, exc.message, _error_headers(exc))
            except ClientDisconnected:
                return
            except Exception:  # a bug: logged, counted and answered in the one error envelope, never silent
                log.exception("request failed path=%s", scope["path"])
                self._count_refusal(scope["path"], 500, start)
                await asgi.send_error(send, 500, "internal error of the router (logged); retry, or report it")
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.inference.drain()
                await asyncio.get_running_loop().run_in_executor(None, self.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, start: float) -> None:
        # A path that exists for no method is 404; one that exists for another method is 405 with `Allow`.
        path: str = scope["path"]
        method: str = scope["method"]
        parts = path.split("/")
        if len(parts) >= 4 and parts[1] == "v2" and parts[2] == "models":
            model = parts[3]
            rest = parts[4:]
            version = None
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            if rest == ["infer"]:
                _allow(method, "POST")
                return await self._infer(scope, receive, send, start, model, version)
            if rest == []:
                _allow(method, "GET")
                body = self._routes(model, version).metadata
                self.metrics.count_answer(model, 200)
                return await asgi.send_bytes(send, 200, body)
            if rest == ["ready"]:
                _allow(method, "GET")
                return await self._model_ready(send, model, version)
        elif path == "/v2/health/live":
            _allow(method, "GET")
            self.metrics.count_answer(NO_MODEL, 200)
            return await asgi.send_json(send, 200, {"live": True})
        elif path == "/v2/health/ready":
            _allow(method, "GET")
            return await self._ready(send)
        elif path == "/v2":
            _allow(method, "GET")
            self.metrics.count_answer(NO_MODEL, 200)
            return await asgi.send_bytes(send, 200, _SERVER)
        elif path == "/v1/feedback":
            _allow(method, "POST")
            return await self._feedback(scope, receive, send)
        elif path == "/metrics":
            _allow(method, "GET")
            self.metrics.count_answer(NO_MODEL, 200)
            self._memory_samples_metrics_only()
            self._observe_answered()
            return await asgi.send_bytes(send, 200, self.metrics.render(), CONTENT_TYPE.encode())
        elif path == "/openapi.json":
            _allow(method, "GET")
            self.metrics.count_answer(NO_MODEL, 200)
            return await asgi.send_bytes(send, 200, _OPENAPI)
        raise NotFound(f"no endpoint {method} {path}; see /v2/models/{{name}}/infer, /v2/health/ready, "
                       "/v1/feedback, /metrics, /openapi.json")

    def _count_refusal(self, path: str, code: int, start: float) -> None:
        """Count an error answer under a bounded model label; a refused inference request also gets its duration."""
        parts = path.split("/")
        if len(parts) >= 4 and parts[1] == "v2" and parts[2] == "models":
            model = parts[3]
            if model not in self.table.routes and model not in self.table.errors:
                model = UNKNOWN_MODEL
            elif parts[-1] == "infer":
                self.metrics.observe_request(model, NO_VARIANT, code, _perf() - start)
                return
        else:
            model = NO_MODEL
        self.metrics.count_answer(model, code)

    def _routes(self, model: str, version: str | None) -> ModelRoutes:
        routes = self.table.routes.get(model)
        if routes is None:
            if model in self.table.errors:
                raise Unavailable(f"model {model!r} is not ready: {self.table.errors[model]}")
            raise NotFound(f"model {model!r} is unknown; served models: {sorted(self.table.routes)}")
        if version is not None and version not in routes.known:
            raise NotFound(f"version {version!r} of model {model!r} is unknown; versions: {sorted(routes.known)}")
        return routes

    async def _model_ready(self, send: Send, model: str, version: str | None) -> None:
        routes = self._routes(model, version)
        if version is not None and version in routes.cannot_serve:
            raise Unavailable(f"version {version!r} of model {model!r} cannot serve: {routes.cannot_serve[version]}")
        if version is not None and version not in routes.variants:
            raise Unavailable(f"version {version!r} of model {model!r} is not loaded (not in the current split)")
        self.metrics.count_answer(model, 200)
        await asgi.send_json(send, 200, {"name": model, "ready": True})

    async def _ready(self, send: Send) -> None:
        models = self.table.describe()
        ready = bool(models) and all(m.get("ready") for m in models.values())
        body = {
            "ready": ready,
            "live_channel": "degraded" if self.degraded else "ok",
            "live_channel_error": self.recorder.last_error,
            "models": models,
            "samples": {"pending": self.recorder.pending, "sent": self.recorder.sent,
                        "dropped": self.recorder.dropped, "unsent": self.recorder.unsent,
                        "predictions_dropped": self.recorder.predictions_dropped},
            **self.inference.describe(),
        }
        code = 200 if ready else 503
        self.metrics.count_answer(NO_MODEL, code)
        await asgi.send_json(send, code, body)

    def _memory_samples_metrics_only(self) -> None:
        self.metrics.sync_unsent(self.recorder.unsent)
        self.metrics.live_degraded.set(1 if self.degraded else 0)

    async def _forced(self, routes: ModelRoutes, name: str,
                      authorization: bytes | None) -> tuple[LoadedVariant, str | None]:
        """The forced variant, or the split's baseline (and the fallback's reason) when it cannot serve."""
        token = ""
        if authorization is not None and authorization[:7].lower() == b"bearer ":
            token = authorization[7:].decode("latin-1").strip()
        loop = asyncio.get_running_loop()
        if not token:
            raise Unauthorized(_UNAUTHORIZED)
        if not await loop.run_in_executor(self._executor, self.tokens.allows, token):
            raise Forbidden(_FORBIDDEN)
        if name not in routes.cannot_serve:  # known not to load: not tried again per request
            try:
                return await loop.run_in_executor(None, self.table.variant, routes.model, name), None
            except RunnerError as exc:
                log.warning("forced variant %s of %s cannot be loaded, the baseline answers: %s", name,
                            routes.model, exc)
        self.inference.fallback(routes, name, "unavailable")
        return routes.fallback, "unavailable"

    async def _infer(self, scope: Scope, receive: Receive, send: Send, start: float, model: str,
                     version: str | None) -> None:
        ts = time.time()
        routes = self._routes(model, version)
        declared = header_length = key = forced_name = authorization = header_id = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"inference-header-content-length":
                header_length = value
            elif name == b"x-modelroll-key":
                key = value.decode("utf-8", "surrogateescape")
            elif name == b"x-modelroll-variant":
                forced_name = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value
            elif name == b"x-request-id":
                header_id = value.decode("latin-1")
        if version is not None:
            forced_name = version
        forced = fallen = None
        if forced_name is not None:
            forced, fallen = await self._forced(routes, forced_name, authorization)
        body = await asgi.read_body(receive, declared, self._max_body, self._deadlines)
        request = decode_request(body, _header_length(header_length), routes.signature)
        request_id = request.id or header_id or f"{self._id_prefix}{next(self._ids):x}"
        variant, outputs, fell = await self.inference.run(routes, request, request_id, key, forced, ts, start)
        payload, json_length = encode_response(model, variant.name, request_id, outputs, request)
        extra = [(b"x-request-id", request_id.encode("latin-1", "replace")),
                 (b"x-modelroll-variant", variant.name.encode())]
        if fell := fell or fallen:  # a forced variant could not answer: the split's baseline did
            extra.append((b"x-modelroll-fallback", fell.encode()))
        if json_length is None:
            content_type = asgi.JSON
        else:
            content_type = b"application/octet-stream"
            extra.append((b"inference-header-content-length", str(json_length).encode()))
        self._answered.append((model, variant.name, _perf() - start))
        await asgi.send_bytes(send, 200, payload, content_type, extra)
        loop = asyncio.get_running_loop()
        if self._settle_loop is not loop:  # the answer is on the wire: its metrics and samples wait for `_settle`
            self._settle_loop = loop  # (a loop that closed before its call ran is not waited for)
            loop.call_soon(self._settle)

    def _settle(self) -> None:
        # Once per pass of the event loop, after the requests that were ready: under load one call observes
        # and encodes several requests' metrics and samples, its code kept hot (13 µs less CPU per request at
        # batch 1, bench/router.py); with one request in flight it runs right after that request's answer was
        # sent, as a per-request call would.
        self._settle_loop = None
        self._observe_answered()
        self.recorder.settle()

    def _observe_answered(self) -> None:
        answered, self._answered = self._answered, []
        observe = self.metrics.observe_request
        for model, variant, seconds in answered:
            observe(model, variant, 200, seconds)

    async def _feedback(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        items = parse_items(await asgi.read_body(receive, declared, self._max_body, self._deadlines))
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(None, self._join_feedback, items)
        counts = {s: sum(1 for r in results if r["status"] == s) for s in ("joined", "unknown", "invalid")}
        for status, n in counts.items():
            self.metrics.count_feedback_items(status, n)
        self.metrics.count_answer(NO_MODEL, 200)
        await asgi.send_json(send, 200, {"results": results, **counts})

    def _join_feedback(self, items: list[Any]) -> list[dict[str, Any]]:
        with contextlib.suppress(ModelrollError):  # predictions recorded moments ago may still sit in the buffer
            self.recorder.flush()
        return self.feedback.join(items)


class _LazySessions:
    """Database sessions for token checks, the engine built on first use (most routers never need it)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._factory: Any = None

    def __call__(self) -> Any:
        if self._factory is None:
            from modelroll.db import make_engine, make_session_factory

            self._factory = make_session_factory(make_engine(self._settings))
        return self._factory()


class _MethodNotAllowed(ModelrollError):
    status_code = 405

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise _MethodNotAllowed(f"method {method} is not allowed here; use {allowed}", allowed)


def _error_headers(exc: ModelrollError) -> list[tuple[bytes, bytes]] | None:
    if isinstance(exc, _MethodNotAllowed):
        return [(b"allow", exc.allow.encode())]
    if isinstance(exc, RequestTimeout | PayloadTooLarge):
        return _CLOSE  # the rest of the body was never read: it must not be taken for the next request
    if isinstance(exc, Unauthorized):
        return _CHALLENGE
    return None


def _header_length(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        from modelroll.errors import InvalidInput

        raise InvalidInput(f"Inference-Header-Content-Length must be an integer, got {raw[:40]!r}") from None


def create_app(settings: Settings, channel: LiveChannel, catalog_source: VariantSource, *,
               registry: CollectorRegistry | None = None, token_sessions: Any = None) -> RouterApp:
    """Build the router: load every model's variants, apply the published splits, start the background threads."""
    return RouterApp(settings, channel, catalog_source, registry=registry, token_sessions=token_sessions)
