"""The verbs a CI/CD pipeline gates on: `rollout wait` (follows a rollout, exit code = its outcome) and
`rollout report --markdown` (the offline table and the live criteria, for a pull request).

Exit codes (modelroll/cli.py): 0 promoted, 1 rolled back / aborted / failed, 3 timed out, 4 waiting for approval
(with --until-approval).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from controller.cli_api import Api, TokenOpt, UrlOpt
from modelroll.report_table import stored_table_lines
from modelroll.settings import Settings

TERMINAL_OUTCOMES = {"promoted": 0, "rolled_back": 1, "aborted": 1, "failed": 1}


def waiting_for_approval(rollout: dict[str, Any]) -> bool:
    """True while the rollout holds at an approval step (the API says so in `approval.waiting`)."""
    approval = rollout.get("approval")
    return isinstance(approval, dict) and bool(approval.get("waiting"))


def live_line(rollout: dict[str, Any]) -> str:
    """One line of where the rollout is and what each criterion says, for a terminal or a CI log."""
    weights = ", ".join(f"{v} {float(w):g} %" for v, w in (rollout.get("weights") or {}).items())
    criteria = " ".join(f"{r['criterion']}={r['verdict']}" for r in rollout.get("results") or [])
    step = f"step {rollout['step_index'] + 1}/{rollout['steps_total']}"
    waiting = " (waiting for approval)" if waiting_for_approval(rollout) else ""
    return f"rollout {rollout['id']}: {rollout['phase']}{waiting}, {step}, {weights}" + (
        f"; {criteria}" if criteria else "")


def follow(read: Callable[[], dict[str, Any]], emit: Callable[[str], None], *, timeout_s: float,
           interval_s: float, until_approval: bool, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> tuple[int, dict[str, Any]]:
    """Poll the rollout until it ends (or waits for approval, if asked), printing each change; (exit code, last)."""
    from modelroll.cli import EXIT_AWAITING_APPROVAL, EXIT_TIMEOUT

    deadline = clock() + timeout_s
    last_line = ""
    while True:
        rollout = read()
        line = live_line(rollout)
        if line != last_line:
            emit(line)
            last_line = line
        if rollout["phase"] in TERMINAL_OUTCOMES:
            return TERMINAL_OUTCOMES[rollout["phase"]], rollout
        if until_approval and waiting_for_approval(rollout):
            return EXIT_AWAITING_APPROVAL, rollout
        if clock() >= deadline:
            return EXIT_TIMEOUT, rollout
        sleep(min(interval_s, max(0.0, deadline - clock())))


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def rollout_markdown(rollout: dict[str, Any], events: list[dict[str, Any]], optimization: dict[str, Any] | None,
                     page_url: str) -> str:
    """The pull-request report: decision and why, the live criteria, the optimizer's table, the events."""
    lines = [f"### Rollout {rollout['id']} of `{rollout['model']}`: `{rollout['candidate']}` vs "
             f"`{rollout['baseline']}` — **{rollout['phase'].replace('_', ' ')}**", "",
             f"**Why:** {rollout.get('reason') or 'no decision yet'}", "",
             f"Status page: {page_url}", "", "#### Live criteria", ""]
    results = rollout.get("results") or []
    if results:
        lines += ["| criterion | verdict | estimate [interval] | threshold | samples (baseline / candidate) |",
                  "|---|---|---|---|---|"]
        for r in results:
            interval = (f"{r['estimate']:.3g} [{r['ci_low']:.3g}, {r['ci_high']:.3g}]"
                        if None not in (r.get("estimate"), r.get("ci_low"), r.get("ci_high")) else "-")
            lines.append(f"| {r['criterion']} | {r['verdict']} | {interval} | {r['threshold']:.3g} | "
                         f"{r['baseline_n']} / {r['candidate_n']} |")
        lines += ["", *[f"- {r['criterion']}: {_cell(r['message'])}" for r in results]]
    else:
        lines.append("Not evaluated yet.")
    lines += ["", "#### Offline (optimizer)", ""]
    job = optimization or {}
    report = next((r for r in job.get("reports", []) if r.get("variant") == rollout["candidate"]), None)
    if report is None or not report.get("candidate"):
        lines.append("No optimizer report for this candidate (registered by hand or not measured).")
    else:
        verdict = "passed every gate" if report["passed"] else "failed a gate"
        lines += [f"Optimization job {job.get('id')}: {verdict}"
                  f" (recipe `{(report.get('recipe') or {}).get('recipe', '-')}`).", "",
                  "| metric | original | optimized | improvement | gate |", "|---|---|---|---|---|"]
        for line in stored_table_lines(report["baseline"], report["candidate"], report.get("gates") or {}):
            lines.append(f"| {line.metric} | {line.original} | {line.optimized} | {_cell(line.improvement)} | "
                         f"{line.gate} |")
    lines += ["", "#### Events", ""]
    lines += [f"{e['seq']}. {e['ts'][:19]} UTC, {e['actor']}: {_cell(e['reason'])}" for e in events]
    return "\n".join(lines) + "\n"


def register_pipeline(rollout: typer.Typer, settings_of: Callable[[typer.Context], Settings]) -> None:
    """Add `wait` and `report` to the `rollout` group."""

    @rollout.command("wait")
    def wait(ctx: typer.Context, rollout_id: Annotated[int, typer.Argument(help="Rollout id.")],
             timeout: Annotated[float, typer.Option("--timeout", min=1, max=7 * 86400,
                                                    help="Give up after this many seconds (exit 3).")] = 3600,
             interval: Annotated[float, typer.Option("--interval", min=0.2, max=60,
                                                     help="Seconds between looks.")] = 2.0,
             until_approval: Annotated[bool, typer.Option(
                 "--until-approval", help="Also stop (exit 4) when the rollout waits for an approval.")] = False,
             url: UrlOpt = None, token: TokenOpt = None) -> None:
        """Follow a rollout until it ends, one line per change. Exit 0 promoted; 1 rolled back, aborted or
        failed; 3 timed out; 4 waiting for approval (with --until-approval)."""
        api = Api(settings_of(ctx), url, token)
        code, last = follow(lambda: api.call("GET", f"/v1/rollouts/{rollout_id}").json(), typer.echo,
                            timeout_s=timeout, interval_s=interval, until_approval=until_approval)
        if code != 0:
            typer.echo(f"rollout {rollout_id} {last['phase'].replace('_', ' ')}: {last.get('reason') or ''}"
                       if code == 1 else f"rollout {rollout_id}: stopped waiting ({live_line(last)})", err=True)
        raise typer.Exit(code)

    @rollout.command("report")
    def report(ctx: typer.Context, rollout_id: Annotated[int, typer.Argument(help="Rollout id.")],
               markdown: Annotated[bool, typer.Option("--markdown", help="Markdown, the only format (accepted for "
                                                                           "symmetry with optimize report).")] = False,
               url: UrlOpt = None, token: TokenOpt = None) -> None:
        """The rollout as Markdown for a pull request: decision and why, live criteria, the optimizer's table."""
        api = Api(settings_of(ctx), url, token)
        rollout_json = api.call("GET", f"/v1/rollouts/{rollout_id}").json()
        events = api.call("GET", f"/v1/rollouts/{rollout_id}/events").json()["events"]
        created = next((e for e in events if e["kind"] == "created"), None)
        job = ((created or {}).get("evidence") or {}).get("offline", {}).get("job")
        optimization = api.call("GET", f"/v1/optimizations/{job}").json() if job else None
        typer.echo(rollout_markdown(rollout_json, events, optimization, f"{api.base}/rollouts/{rollout_id}"),
                   nl=False)
