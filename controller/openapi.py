"""The controller's OpenAPI document, made to say what the API does (a schemathesis run with every check holds it).

FastAPI's generated document is adjusted once, on first use: validation errors are 400 `{"error"}` (never 422);
reads need no token when MODELROLL_ALLOW_ANONYMOUS_VIEWER is on (their security is "bearer, or none"), while every
change needs one (401 without it); the error answers every operation can give are listed on each.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request

from controller.api import BEARER, READ_BEARER
from modelroll.errors import InvalidInput
from modelroll.settings import Settings


def _adjust(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    schemes = schema.get("components", {}).get("securitySchemes", {})
    schemes.pop(READ_BEARER, None)
    read_security: list[dict[str, list[str]]] = [{BEARER: []}]
    if settings.allow_anonymous_viewer:
        read_security = [{}, {BEARER: []}]  # OpenAPI: an empty requirement means "no credentials needed"
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
            security = operation.get("security")
            if security is not None and any(READ_BEARER in requirement for requirement in security):
                operation["security"] = read_security
    return schema


def document(app: FastAPI, settings: Settings) -> None:
    """Serve the adjusted document at /openapi.json (and to /docs)."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _adjust(FastAPI.openapi(app), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _operations(app: FastAPI, path: str) -> dict[str, Any] | None:
    """The document's operations (by method) for a concrete `path`, or None for a path it does not list."""
    table: list[tuple[re.Pattern[str], dict[str, Any]]] | None = getattr(app.state, "openapi_paths", None)
    if table is None:
        table = [(re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))), operations)
                 for template, operations in app.openapi().get("paths", {}).items()]
        app.state.openapi_paths = table
    return next((operations for pattern, operations in table if pattern.fullmatch(path)), None)


def allowed_methods(app: FastAPI, path: str) -> str | None:
    """The methods the document lists for `path` (the Allow header of a 405); None for a path it does not list.

    Starlette names only the methods of the first route that matches the path; a path served by several routes
    (GET and POST /v1/rollouts) must list them all."""
    operations = _operations(app, path)
    return None if operations is None else ", ".join(sorted(method.upper() for method in operations))


def reject_unknown_query(request: Request) -> None:
    """A query parameter the operation does not document is refused (400 naming those it takes), not ignored: a
    misspelt filter (`?phse=promoted`) would otherwise answer as if there were none."""
    operations = _operations(request.app, request.url.path)
    if operations is None or not request.query_params:
        return
    operation = operations.get(request.method.lower(), {})
    accepted = sorted(p["name"] for p in operation.get("parameters", []) if p.get("in") == "query")
    unknown = sorted(set(request.query_params) - set(accepted))
    if unknown:
        raise InvalidInput(f"unknown query parameter(s) {[name[:40] for name in unknown[:5]]}: "
                           f"{request.method} {request.url.path} takes {accepted or 'none'}")
