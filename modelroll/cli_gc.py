"""`modelroll models retire MODEL VARIANT` and `modelroll gc [--dry-run]`: straight to the database and the store,
like the other `models` verbs (the ops API has the same retire, and the controller leader runs gc hourly)."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from modelroll.cleanup import Report


def cli_actor() -> str:
    """Who a CLI change is recorded as: the login name, as the audit shows it."""
    return f"cli:{os.environ.get('USER') or os.environ.get('LOGNAME') or 'unknown'}"


def report_lines(report: Report) -> list[str]:
    from modelroll.cli import human_bytes

    verb = "would delete" if report.dry_run else "deleted"
    lines = [f"retention ({report.retention_days} days, before {report.cutoff:%Y-%m-%d %H:%M} UTC): {verb} "
             f"{report.windows} sample window(s) of finished rollouts and {report.notifications} delivered "
             "webhook notification(s)"]
    for artifact in report.artifacts:
        owners = ", ".join(artifact["owners"]) or "no variant"
        lines.append(f"artifact {artifact['sha256'][:12]}… ({artifact['format']}, "
                     f"{human_bytes(artifact['size_bytes'])}): {verb} — used only by retired {owners}")
    for what, names in (("stored file(s) nothing live names (eval data of finished jobs, leftovers)", report.orphans),
                        ("extracted folder(s) (re-extracted when next used)", report.trees),
                        ("temporary file(s)", report.scratch)):
        if names:
            lines.append(f"{len(names)} {what}: {verb}")
    if report.trees_kept_for_jobs:
        jobs = ", ".join(str(j) for j in report.trees_kept_for_jobs)
        lines.append(f"kept the extracted folders of live artifacts: optimization job(s) {jobs} not finished")
    for sha256 in report.missing:
        lines.append(f"warning: artifact {sha256[:12]}… of a live variant is missing from the store: re-register it")
    lines += [f"warning: {error}" for error in report.errors]
    if report.database_bytes_before is not None and report.database_bytes_after is not None:
        lines.append(f"database file: {human_bytes(report.database_bytes_before)} → "
                     f"{human_bytes(report.database_bytes_after)}")
    lines.append(f"{'would free' if report.dry_run else 'freed'} {human_bytes(report.freed_bytes)}")
    return lines


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    from modelroll.cli import settings_of

    @models_app.command("retire")
    def models_retire(
        ctx: typer.Context,
        model: Annotated[str, typer.Argument(help="Model name.", show_default=False)],
        variant: Annotated[str, typer.Argument(help="Variant to retire.", show_default=False)],
        reason: Annotated[str, typer.Option(help="Why; recorded in the audit.")] = "",
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    ) -> None:
        """Retire a variant: it stops serving and cannot be rolled out; `modelroll gc` then frees its files.

        Refused for the production variant, a variant of an unfinished rollout or optimization job.
        Retiring a retired variant changes nothing (exit 0)."""
        from modelroll.cli import session_scope
        from modelroll.retire import retire_variant

        with session_scope(settings_of(ctx)) as session:
            retired = retire_variant(session, model, variant, actor=cli_actor(), reason=reason)
        if as_json:
            typer.echo(json.dumps(retired.to_dict(), indent=2))
        elif retired.already:
            typer.echo(f"variant {variant!r} of model {model!r} was already retired "
                       f"({retired.retired_at:%Y-%m-%d %H:%M} UTC): nothing changed")
        else:
            typer.echo(f"retired variant {variant!r} of model {model!r}: routers stop loading it; "
                       "`modelroll gc` frees its artifacts (the controller leader also does it hourly)")

    @app.command("gc")
    def gc_command(
        ctx: typer.Context,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go; delete nothing.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    ) -> None:
        """Free disk now: purge sample windows of finished rollouts past MODELROLL_RETENTION_DAYS, delete the
        artifacts only retired variants used, stale scratch files and extracted folders, shrink an SQLite file."""
        from modelroll import migrate
        from modelroll.cleanup import collect
        from modelroll.db import make_engine, make_session_factory

        settings = settings_of(ctx)
        migrate.ensure_schema(settings)
        engine = make_engine(settings)
        try:
            report = collect(make_session_factory(engine), settings.effective_artifacts_dir,
                             retention_days=settings.retention_days, actor=cli_actor(), dry_run=dry_run)
        finally:
            engine.dispose()
        typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else "\n".join(report_lines(report)))
        if report.errors:
            raise typer.Exit(1)
