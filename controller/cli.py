"""CLI verbs of the controller: `controller` (API + reconciler), `rollout ...` (over the HTTP API), `tokens ...`.

The rollout verbs mirror the API one for one and take `--json` for scripts; a change reads the rollout's
version first and sends it as If-Match, so a concurrent change still answers 409.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller.cli_api import Api, JsonOpt, ReasonOpt, TokenOpt, UrlOpt
from controller.cli_apply import register as register_apply
from controller.cli_pipeline import register_pipeline
from modelroll.errors import InvalidInput, NotFound
from modelroll.types import MemorySource, criteria_option


def parse_steps(text: str, min_duration_s: float | None, min_samples: int | None) -> list[dict[str, Any]]:
    """"shadow,1,5,25,50,100" → the API's steps."""
    steps: list[dict[str, Any]] = []
    for part in (p.strip() for p in text.split(",")):
        if part == "shadow":
            step: dict[str, Any] = {"weight_pct": 0, "shadow": True}
        else:
            try:
                step = {"weight_pct": float(part.rstrip("%"))}
            except ValueError:
                raise InvalidInput(f"--steps: {part!r} is not a percentage or 'shadow'; "
                                   "e.g. --steps shadow,1,5,25,50,100") from None
        if min_duration_s is not None:
            step["min_duration_s"] = min_duration_s
        if min_samples is not None:
            step["min_samples"] = min_samples
        steps.append(step)
    return steps


def _memory_gate(value: str) -> str:
    accepted = [m.value for m in MemorySource]
    if value not in accepted:
        raise InvalidInput(f"--memory-gate {value!r} is not one of {accepted}: 'live' gates memory on the routers' "
                           "exact readings (MODELROLL_ROUTER_RUNNER=subprocess), 'offline' on the optimizer's figures")
    return value


def _criteria_object(criteria: Any) -> dict[str, Any]:
    if criteria is None:
        return {}
    if not isinstance(criteria, dict):
        raise InvalidInput(f"--criteria must be a JSON object, got {type(criteria).__name__}")
    return criteria


def _emit(data: Any, as_json: bool, console: Console, text: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        console.print(text)


def _split(rollout: dict[str, Any]) -> str:
    split = ", ".join(f"{v} {w:g} %" for v, w in rollout["weights"].items())
    return split + (f" (shadow: {rollout['shadow']})" if rollout.get("shadow") else "")


def _line(r: dict[str, Any]) -> str:
    return (f"rollout {r['id']} of {r['model']} ({r['candidate']} vs {r['baseline']}): {r['phase']}, "
            f"step {r['step_index'] + 1} of {r['steps_total']}, {_split(r)} [version {r['version']}]")


def print_status(console: Console, rollout: dict[str, Any], events: list[dict[str, Any]]) -> None:
    console.print(f"[bold]{_line(rollout)}[/bold]")
    if rollout.get("reason"):
        console.print(f"  why: {rollout['reason']}")
    verdict = rollout.get("verdict") or "not evaluated yet"
    console.print(f"  verdict: {verdict}")
    for result in rollout.get("results", []):
        source = result.get("source", "live")  # offline figures and unmeasurable criteria say so
        label = result["criterion"] if source == "live" else f"{result['criterion']} ({source})"
        console.print(f"  - {label}: {result['verdict']}: {result['message']}")
    if events:
        table = Table("seq", "time", "event", "actor", "reason", title="last events", title_justify="left")
        for e in events[-5:]:
            table.add_row(str(e["seq"]), e["ts"][:19], e["kind"], e["actor"], e["reason"])
        console.print(table)


def register(app: typer.Typer) -> None:
    from modelroll.cli import settings_of

    rollout = typer.Typer(help="Create, watch and steer rollouts (through the controller's API).",
                          no_args_is_help=True)
    tokens = typer.Typer(help="API bearer tokens (written directly to the database).", no_args_is_help=True)
    app.add_typer(rollout, name="rollout")
    app.add_typer(tokens, name="tokens")
    console = Console(highlight=False, width=None if Console().is_terminal else 200)

    @app.command("controller")
    def controller(ctx: typer.Context,
                   host: Annotated[str | None, typer.Option(help="Bind address; default from settings.")] = None,
                   port: Annotated[int | None, typer.Option(help="Port; default from settings.")] = None,
                   no_reconcile: Annotated[bool, typer.Option("--no-reconcile",
                                                              help="API only: never lead.")] = False) -> None:
        """Run the controller: the ops API and (unless --no-reconcile) the reconciler, one leader at a time."""
        from controller.serve import serve

        settings = settings_of(ctx)
        serve(settings, host or settings.controller_host, settings.controller_port if port is None else port,
              reconcile=not no_reconcile)

    @rollout.command("create")
    def create(ctx: typer.Context, model: Annotated[str, typer.Option(help="Model name.")],
               candidate: Annotated[str, typer.Option(help="Candidate variant.")],
               baseline: Annotated[str | None, typer.Option(
                   help="What serves now (the default); naming another variant is refused.")] = None,
               steps: Annotated[str | None, typer.Option(help="e.g. shadow,1,5,25,50,100")] = None,
               min_duration_s: Annotated[float | None, typer.Option(help="Every step's minimum duration.")] = None,
               min_samples: Annotated[int | None, typer.Option(help="Every step's minimum samples.")] = None,
               on_deadline: Annotated[str, typer.Option(help="hold or rollback")] = "hold",
               criteria: Annotated[str | None, typer.Option(
                   help="The gates, as optimize --gates and spec documents name them: latency=0.5,alpha=0.01 (or "
                        "JSON); names: latency, memory, accuracy, errors or the full field names.")] = None,
               memory_gate: Annotated[str | None, typer.Option(
                   help="live (default): gate memory on the routers' exact readings (subprocess runner); "
                        "offline: on the optimizer's figures (for inline or remote runners).")] = None,
               force: Annotated[bool, typer.Option(
                   "--force", help="Roll out a candidate that failed its offline gates or has no report "
                                   "(recorded with your name).")] = False,
               url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
        """Create a rollout of CANDIDATE against what serves MODEL now."""
        body: dict[str, Any] = {"model": model, "candidate": candidate, "on_deadline": on_deadline, "force": force}
        if baseline is not None:
            body["baseline"] = baseline
        if steps is not None:
            body["steps"] = parse_steps(steps, min_duration_s, min_samples)
        if criteria is not None:
            body["criteria"] = criteria_option(criteria, "--criteria")
        if memory_gate is not None:
            body["criteria"] = {**_criteria_object(body.get("criteria")), "memory_source": _memory_gate(memory_gate)}
        r = Api(settings_of(ctx), url, token).call("POST", "/v1/rollouts", json=body).json()
        _emit(r, as_json, console, f"created {_line(r)}")

    @rollout.command("list")
    def list_(ctx: typer.Context, model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
              active: Annotated[bool, typer.Option("--active", help="Only unfinished rollouts.")] = False,
              url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
        """List rollouts, newest first."""
        params: dict[str, Any] = {"model": model} if model else {}
        if active:
            params["active"] = "true"
        rows = Api(settings_of(ctx), url, token).call("GET", "/v1/rollouts", params=params).json()["rollouts"]
        _emit(rows, as_json, console, "\n".join(_line(r) for r in rows) or "no rollouts")

    @rollout.command("status")
    def status(ctx: typer.Context, rollout_id: Annotated[int, typer.Argument(help="Rollout id.")],
               url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
        """Phase, split, step n of m, each criterion's verdict and the last events."""
        api = Api(settings_of(ctx), url, token)
        r = api.call("GET", f"/v1/rollouts/{rollout_id}").json()
        events = api.call("GET", f"/v1/rollouts/{rollout_id}/events").json()["events"]
        if as_json:
            _emit({**r, "events": events}, True, console, "")
        else:
            print_status(console, r, events)

    def _verb(name: str, verb: str, doc: str) -> None:
        def run(ctx: typer.Context, rollout_id: Annotated[int, typer.Argument(help="Rollout id.")],
                reason: ReasonOpt = "", url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
            r = Api(settings_of(ctx), url, token).command(rollout_id, verb, {"reason": reason})
            already = "" if r["changed"] else f"rollout {rollout_id} is already {r['phase']}: nothing to do\n"
            _emit(r, as_json, console, already + _line(r))
        run.__doc__ = doc
        rollout.command(name)(run)

    _verb("pause", "pause", "Pause: hold the schedule at the current split.")
    _verb("resume", "resume", "Resume the schedule at the current step.")
    _verb("promote", "promote", "Promote now (admin; recorded as an override).")
    _verb("abort", "abort", "Abort: all traffic back to the baseline.")

    register_pipeline(rollout, settings_of)
    register_apply(app, rollout, settings_of)

    # ignore_unknown_options: "-5" is a (refused) number, not an unknown option
    @rollout.command("set-weight", context_settings={"ignore_unknown_options": True})
    def set_weight(ctx: typer.Context, rollout_id: Annotated[int, typer.Argument(help="Rollout id.")],
                   weight_pct: Annotated[float, typer.Argument(help="Candidate share, 0-100.")],
                   reason: ReasonOpt = "", url: UrlOpt = None, token: TokenOpt = None,
                   as_json: JsonOpt = False) -> None:
        """Set the candidate's weight; the schedule holds until `resume`."""
        r = Api(settings_of(ctx), url, token).command(rollout_id, "weight",
                                                      {"weight_pct": weight_pct, "reason": reason})
        _emit(r, as_json, console, _line(r))

    @tokens.command("create")
    def tokens_create(ctx: typer.Context, role: Annotated[str, typer.Option(help="viewer, operator or admin")],
                      name: Annotated[str, typer.Option(help="Who or what uses it, e.g. ci-deployer.")],
                      as_json: JsonOpt = False) -> None:
        """Create a token and print its secret once (only its sha256 is stored)."""
        from controller.auth import create_token
        from modelroll.cli import session_scope

        with session_scope(settings_of(ctx)) as session:
            secret = create_token(session, name, role)
        _emit({"name": name, "role": role, "token": secret}, as_json, console, secret)

    from modelroll.cli import models_app

    @models_app.command("rollback")
    def models_rollback(
            ctx: typer.Context, model: Annotated[str, typer.Argument(help="Model name.")],
            to: Annotated[str | None, typer.Option("--to", help="The variant to serve again.")] = None,
            revision: Annotated[int | None, typer.Option("--revision", help="Serve revision N's variant.")] = None,
            abort_active: Annotated[bool, typer.Option(
                "--abort-active", help="Abort the model's active rollout first (else refused).")] = False,
            reason: ReasonOpt = "", url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
        """Undo: make an earlier production variant serve MODEL again, at once (admin; default: the one before)."""
        body: dict[str, Any] = {"reason": reason, "abort_active": abort_active}
        if to is not None:
            body["to"] = to
        if revision is not None:
            body["revision"] = revision
        r = Api(settings_of(ctx), url, token).call("POST", f"/v1/models/{model}/rollback", json=body).json()
        new, old = r["production"], r["previous"]
        aborted = f"; aborted rollout {r['aborted_rollout']}" if r.get("aborted_rollout") else ""
        _emit(r, as_json, console, f"{model}: {new['variant']} serves (revision {new['revision']}), "
                                   f"was {old['variant']} (revision {old['revision']}){aborted}")

    @models_app.command("history")
    def models_history(ctx: typer.Context, model: Annotated[str, typer.Argument(help="Model name.")],
                       url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
        """What served MODEL, newest first: revision, variant, how (registered, promoted, rollback), who, why."""
        rows = Api(settings_of(ctx), url, token).call("GET", f"/v1/models/{model}/revisions").json()["revisions"]
        lines = [f"revision {r['revision']}  {r['variant']}  {r['action']}"
                 + (f" (rollout {r['rollout_id']})" if r["rollout_id"] else "")
                 + f"  by {r['actor']} at {r['created_at'][:19]}  {r['reason']}" for r in rows]
        _emit(rows, as_json, console, "\n".join(lines))

    @tokens.command("revoke")
    def tokens_revoke(ctx: typer.Context, name: Annotated[str, typer.Option(help="The token's name.")]) -> None:
        """Revoke every token of that name."""
        from controller.auth import revoke_token
        from modelroll.cli import session_scope

        with session_scope(settings_of(ctx)) as session:
            count = revoke_token(session, name)
        if not count:
            raise NotFound(f"no active token named {name!r}")
        console.print(f"revoked {count} token(s) named {name!r}")
