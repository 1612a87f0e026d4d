"""The status pages on-call reads: an overview of every rollout and one page per rollout.

Server-rendered (Jinja2), readable without JavaScript, refreshed every few seconds. Action buttons go
through the same state machine and version check as the ops API and are shown to operators and admins only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from controller import aggregate, serving_view
from controller import status_view as view
from controller.api import ApiContext, context
from controller.api_production import RollbackIn, roll_back
from controller.api_rollouts import apply_command
from controller.auth import ANONYMOUS, ROLES, Principal, authenticate
from controller.charts import interval_chart, line_chart
from controller.machine import COMMANDS
from modelroll.catalog import newest_report
from modelroll.db import RolloutRow
from modelroll.errors import ModelrollError, NotFound, Unauthorized
from modelroll.types import Phase

COOKIE = "modelroll_token"
REFRESH_S = 5
ACTIONS = {"approve": "operator", "pause": "operator", "resume": "operator", "set_weight": "operator",
           "abort": "operator", "promote": "admin"}

templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
templates.env.globals.update(interval_chart=interval_chart, refresh_s=REFRESH_S)


def _who(request: Request, ctx: ApiContext) -> Principal | None:
    """The page's viewer from the login cookie; None when a login is needed."""
    token = request.cookies.get(COOKIE)
    try:
        return authenticate(ctx.settings, ctx.session_factory, f"Bearer {token}" if token else None)
    except Unauthorized:
        return None


def _can(who: Principal, action: str) -> bool:
    return ROLES.index(who.role) >= ROLES.index(ACTIONS[action])


def _login_redirect(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def _mib(value: float) -> str:
    return f"{value:.0f} MiB"


def _fmt_for(criterion: str):  # type: ignore[no-untyped-def]
    if criterion in ("accuracy", "errors"):
        return lambda v: f"{v * 100:+.1f} pt"
    return lambda v: f"{v:.2f}×"


def pages_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> Response:
        ctx = context(request)
        who = _who(request, ctx)
        if who is None:
            return _login_redirect(request)
        now = datetime.now(UTC)
        with ctx.session_factory() as session:
            rollouts = view.list_rollouts(session, now)
            serving = serving_view.serving_lines(session, now)
        return templates.TemplateResponse(request, "overview.html", {
            "who": who, "rollouts": rollouts, "serving": serving, "now": now, "anonymous": who.actor == ANONYMOUS,
            "can_undo": ROLES.index(who.role) >= ROLES.index("admin"),
            "done": request.query_params.get("done", ""), "error": request.query_params.get("error", "")})

    @router.post("/models/{name}/actions/rollback")
    def undo(request: Request, name: str, expected_revision: Annotated[int, Form(ge=0)],
             abort_active: Annotated[bool, Form()] = False,
             reason: Annotated[str, Form(max_length=500)] = "") -> Response:
        ctx = context(request)
        who = _who(request, ctx)
        if who is None:
            return _login_redirect(request)
        body = RollbackIn(expected_revision=expected_revision, abort_active=abort_active,
                          reason=reason or "from the status page")
        try:
            out = roll_back(ctx, who, name, body)
        except ModelrollError as exc:
            return RedirectResponse(f"/?error={quote(exc.message)}", status_code=303)
        done = f"{name} is served by {out['production']['variant']} again (revision {out['production']['revision']})"
        return RedirectResponse(f"/?done={quote(done)}", status_code=303)

    @router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
    def rollout_page(request: Request, rollout_id: int) -> Response:
        ctx = context(request)
        who = _who(request, ctx)
        if who is None:
            return _login_redirect(request)
        now = datetime.now(UTC)
        with ctx.session_factory() as session:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFound(f"rollout {rollout_id} does not exist; the overview at / lists them all")
            summary = view.summarize(row, now)
            evaluation = row.evaluation or {}
            cards = view.criterion_cards(evaluation.get("results", []))
            lines = view.events(session, rollout_id)
            series = view.series_from_windows(aggregate.load_windows(session, rollout_id))
            report = newest_report(session, row.candidate_variant_id)
            report_lines = view.report_lines(report)
            timeline = view.timeline(row.spec or {}, row.step_index, row.phase)
            offline = serving_view.created_offline(session, rollout_id, row.created_by)
            approval = view.approval_text(row, now)
        markers = view.step_markers(lines)
        classes = {summary.baseline: "baseline", summary.candidate: "candidate"}
        charts = [
            line_chart("Latency p50 per variant", series.latency_p50_ms, _ms, markers, classes),
            line_chart("Latency p95 per variant", series.latency_p95_ms, _ms, markers, classes),
            line_chart("Error rate per variant", series.error_rate, _pct, markers, classes),
            line_chart("Accuracy from feedback per variant", series.accuracy, _pct, markers, classes),
            line_chart("Runner memory per variant (exact readings)", series.memory_mib, _mib, markers, classes,
                       empty=series.memory_note),
        ]
        phase = Phase(summary.phase)
        actions = [a for a in ACTIONS if _can(who, a) and phase in COMMANDS[a].phases]
        return templates.TemplateResponse(request, "rollout.html", {
            "who": who, "r": summary, "cards": cards, "fmt_for": _fmt_for, "events": list(reversed(lines)),
            "charts": charts, "report": report, "report_lines": report_lines, "timeline": timeline, "actions": actions,
            "evaluation": evaluation, "offline": offline, "done": request.query_params.get("done", ""),
            "approval": approval,
            "error": request.query_params.get("error", ""), "anonymous": who.actor == ANONYMOUS,
        })

    @router.post("/rollouts/{rollout_id}/actions/{action}")
    def act(request: Request, rollout_id: int, action: str, version: Annotated[int, Form()],
            reason: Annotated[str, Form(max_length=500)] = "",
            weight_pct: Annotated[float | None, Form()] = None) -> Response:
        ctx = context(request)
        who = _who(request, ctx)
        if who is None:
            return _login_redirect(request)
        if action not in ACTIONS:
            raise NotFound(f"unknown action {action!r}; accepted: {', '.join(ACTIONS)}")
        target = f"/rollouts/{rollout_id}"
        if action == "approve" and not reason.strip():
            return RedirectResponse(f"{target}?error={quote('an approval needs a reason: say why it may go on')}",
                                    status_code=303)
        try:
            apply_command(ctx, who, rollout_id, version, action, reason or "from the status page", weight_pct)
        except ModelrollError as exc:
            return RedirectResponse(f"{target}?error={quote(exc.message)}", status_code=303)
        return RedirectResponse(f"{target}?done={quote(action.replace('_', '-'))}", status_code=303)

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> Response:
        return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": ""})

    @router.post("/login")
    def login(request: Request, token: Annotated[str, Form(max_length=200)],
              next: Annotated[str, Form(max_length=200)] = "/") -> Response:
        ctx = context(request)
        try:
            authenticate(ctx.settings, ctx.session_factory, f"Bearer {token.strip()}")
        except ModelrollError as exc:
            return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": exc.message},
                                              status_code=401)
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict")
        return response

    @router.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    return router


def _safe_next(target: str) -> str:
    """Only local paths: a login must never redirect to another site."""
    return target if target.startswith("/") and not target.startswith("//") else "/"

