"""The controller's one error envelope: every failure is answered `{"error": message}` with its status.

`ModelrollError` keeps its own status (a 401 adds `WWW-Authenticate: Bearer`, a 503 `Retry-After`); a request
that fails validation is a 400 naming the field; routing errors (404, 405) keep theirs; a database that cannot be
reached or cannot answer (SQLAlchemy's OperationalError, InterfaceError, pool timeout or lost connection, psycopg's
connection errors, SQLite locked) is a 503 with `Retry-After`; anything else a 500 whose details go to the log
only. The status pages (a browser asking for HTML outside /v1) get the same message as a small HTML page.
"""

from __future__ import annotations

import html
import logging
import threading
from collections import Counter

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.openapi import allowed_methods
from modelroll.errors import ModelrollError, Unavailable

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
DATABASE_DOWN = "the database is unreachable or not answering: retry in a few seconds (GET /readyz shows what is down)"
INTERNAL = "internal error: nothing in the request explains it; the controller's log has the details"


class ErrorCounts:
    """Answers the controller gave for failures it did not expect a caller to cause, by reason (exported)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def items(self) -> list[tuple[str, int]]:
        with self._lock:
            return sorted(self._counts.items())


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached or cannot answer now (not that the request was wrong)."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
                        sa_exc.DisconnectionError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


def validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts) + " (see /docs for the accepted shape)"


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/v1") and "text/html" in request.headers.get("accept", "")


def error_response(request: Request, status_code: int, message: str,
                   headers: dict[str, str] | None = None) -> Response:
    """The envelope: JSON `{"error"}`, or for a browser on a status page the same message in HTML."""
    headers = dict(headers or {})
    if status_code == 503:
        headers.setdefault("Retry-After", str(RETRY_AFTER_S))
    if status_code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    if _wants_html(request):
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>modelroll: {status_code}</title></head>"
                f"<body><h1>{status_code}</h1><p>{html.escape(message)}</p><p><a href='/'>Overview</a></p>"
                "</body></html>")
        return HTMLResponse(page, status_code=status_code, headers=headers)
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def install(app: FastAPI, counts: ErrorCounts) -> None:
    """Mount the handlers: the only place the controller turns an exception into an answer."""

    @app.exception_handler(ModelrollError)
    async def _modelroll_error(request: Request, exc: ModelrollError) -> Response:
        if isinstance(exc, Unavailable):
            counts.add("unavailable")
        return error_response(request, exc.status_code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return error_response(request, 400, validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            message = f"{message}: no such endpoint; see /docs for the API"
        if exc.status_code == 405 and (allowed := allowed_methods(app, request.url.path)) is not None:
            headers["Allow"] = allowed
            message = f"{message}: {request.url.path} answers {allowed}"
        return error_response(request, exc.status_code, message, headers)

    async def _database(request: Request, exc: Exception) -> Response:
        if is_database_unavailable(exc):
            counts.add("database")
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            log.warning("database unavailable path=%s why=%s: %s", request.url.path, type(exc).__name__, first)
            return error_response(request, 503, DATABASE_DOWN)
        counts.add("internal")
        log.error("database error path=%s", request.url.path, exc_info=exc)
        return error_response(request, 500, INTERNAL)

    # Handled here rather than by the catch-all below, which Starlette re-raises after answering: a database
    # that is down is an expected condition, logged once per request as a warning, not a traceback.
    app.add_exception_handler(sa_exc.SQLAlchemyError, _database)
    app.add_exception_handler(psycopg.Error, _database)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Starlette calls this last (ServerErrorMiddleware) and re-raises afterwards, so the server logs the traceback.
        counts.add("internal")
        return error_response(request, 500, INTERNAL)
