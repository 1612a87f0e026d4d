"""The ops API's shared pieces: the context every handler gets, auth dependencies, If-Match, row → JSON.

The routes live in api_rollouts.py (rollouts, events) and api_models.py (models, variants, optimizations,
audit); `api_router()` mounts them all under /v1.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy.orm import Session

from controller.auth import Principal, authenticate
from controller.webhooks import WebhookNotifier
from modelroll.db import RolloutRow
from modelroll.errors import InvalidInput, ModelrollError
from modelroll.live.base import LiveChannel
from modelroll.settings import Settings
from modelroll.types import NAME_PATTERN

MAX_ID = 2**31 - 1


class PreconditionRequired(ModelrollError):
    status_code = 428


@dataclass(slots=True)
class ApiContext:
    settings: Settings
    channel: LiveChannel | None
    session_factory: Callable[[], Session]
    notifier: WebhookNotifier | None = None


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


BEARER = "HTTPBearer"
# Reads are declared under a scheme of their own, only so that the OpenAPI document can say that they need no token
# when MODELROLL_ALLOW_ANONYMOUS_VIEWER is on (controller/openapi.py rewrites it to "bearer, or none").
READ_BEARER = "HTTPBearerOrAnonymous"
_bearer = HTTPBearer(auto_error=False, scheme_name=BEARER, description=(
    "A token from `modelroll tokens create --role ROLE` (viewer < operator < admin)."))
_read_bearer = HTTPBearer(auto_error=False, scheme_name=READ_BEARER)


def _principal(request: Request,
               _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None) -> Principal:
    ctx = context(request)
    return authenticate(ctx.settings, ctx.session_factory, request.headers.get("authorization"))


def _reader(request: Request,
            _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_read_bearer)] = None) -> Principal:
    ctx = context(request)
    return authenticate(ctx.settings, ctx.session_factory, request.headers.get("authorization"))


def role(name: str) -> Callable[..., Principal]:
    if name == "viewer":
        def read(principal: Annotated[Principal, Depends(_reader)]) -> Principal:
            return principal.require(name)
        return read

    def change(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
        return principal.require(name)
    return change


Ctx = Annotated[ApiContext, Depends(context)]
Viewer = Annotated[Principal, Depends(role("viewer"))]
Operator = Annotated[Principal, Depends(role("operator"))]
Admin = Annotated[Principal, Depends(role("admin"))]


# Names are checked by modelroll.types.check_name, whose message says what is accepted; the schema states the same.
NAME_DOC: dict[str, Any] = {"pattern": NAME_PATTERN.pattern}


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# The schema says what _no_nul checks (its message is clearer than a failed pattern's).
SafeStr = Annotated[str, AfterValidator(_no_nul), Field(json_schema_extra={"pattern": "^[^\\u0000]*$"})]

_IF_MATCH = re.compile(r'^\s*(?:W/)?"?(\d{1,9})"?\s*$')


IF_MATCH_PATTERN = _IF_MATCH.pattern
# Declared here rather than as a FastAPI Header parameter, which would answer a missing one 400, not 428.
IF_MATCH_DOC: dict[str, Any] = {"parameters": [{
    "name": "If-Match", "in": "header", "required": True,
    "description": 'The rollout\'s version as GET /v1/rollouts/{rollout_id} gives it in its ETag, e.g. "3": '
                   "428 without it, 409 if the rollout changed since.",
    "schema": {"type": "string", "pattern": IF_MATCH_PATTERN, "example": '"1"'}}]}


def if_match(request: Request, rollout_id: int) -> int:
    """The version the caller last saw, from `If-Match: "<version>"` (the ETag of GET /v1/rollouts/{id})."""
    header = request.headers.get("if-match")
    if header is None:
        raise PreconditionRequired(
            f'this change needs If-Match: "<version>"; GET /v1/rollouts/{rollout_id} and send its ETag')
    match = _IF_MATCH.match(header)
    if match is None:
        raise InvalidInput(f'If-Match must be a rollout version like "3" (the ETag), got {header[:40]!r}')
    return int(match.group(1))


def etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def rollout_json(row: RolloutRow) -> dict[str, Any]:
    spec = row.spec or {}
    steps = spec.get("steps", [])
    state = row.state or {}
    current = steps[row.step_index] if 0 <= row.step_index < len(steps) else None
    evaluation = row.evaluation or {}
    return {
        "id": row.id, "name": row.name, "model": spec.get("model"), "baseline": spec.get("baseline"),
        "candidate": spec.get("candidate"), "phase": row.phase, "version": row.version,
        "step_index": row.step_index, "steps_total": len(steps), "step": current,
        "weights": dict(row.weights or {}),
        "shadow": spec.get("candidate") if current and current.get("shadow") and row.phase in (
            "shadow", "paused", "waiting_approval") and state.get("started_at") and not state.get("weight_pct")
        else None,
        "hold": state.get("hold", ""), "reason": row.last_reason, "created_by": row.created_by,
        "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at),
        "started_at": state.get("started_at"), "step_started_at": state.get("step_started_at"),
        "verdict": evaluation.get("verdict"), "results": evaluation.get("results", []),
        "evaluation": evaluation, "spec": spec, "approval": approval_json(row.phase, current, state),
    }


def approval_json(phase: str, step: dict[str, Any] | None, state: dict[str, Any]) -> dict[str, Any]:
    """Whether the rollout waits at an approval step, since when, and until when (its timeout and policy)."""
    step = step or {}
    waiting = phase == "waiting_approval"
    since = state.get("waiting_since") if waiting else None
    timeout_s = step.get("timeout_s") if step.get("approval") else None
    until = None
    if since and timeout_s is not None:
        until = (datetime.fromisoformat(since) + timedelta(seconds=float(timeout_s))).isoformat()
    return {"waiting": waiting, "step_is_approval": bool(step.get("approval")), "since": since,
            "timeout_s": timeout_s, "times_out_at": until,
            "on_timeout": step.get("on_timeout", "rollback") if timeout_s is not None else None}


class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong and what is accepted.")


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in (
        (400, "Invalid input: the message names the field and what is accepted"),
        (401, "No, unknown or revoked bearer token"), (403, "The token's role is too low"),
        (404, "Unknown model, variant, rollout or job"),
        (408, "The request body did not arrive within MODELROLL_CONTROLLER_READ_TIMEOUT_S"),
        (409, "Stale If-Match version, an active rollout already exists, or the command does not apply"),
        (413, "The request body is over MODELROLL_CONTROLLER_MAX_BODY_BYTES"),
        (428, "If-Match missing on a change"),
        (503, "The database (or the live channel) is unreachable: retry after the Retry-After seconds"))
}


def api_router() -> APIRouter:
    from controller import api_apply, api_models, api_production, api_rollouts

    router = APIRouter(prefix="/v1", responses=_ERRORS)
    router.include_router(api_rollouts.router)
    router.include_router(api_apply.router)
    router.include_router(api_models.router)
    router.include_router(api_production.router)
    return router
