"""The `modelroll` command line: the kernel's verbs (version, db, models) and the block where services add theirs.

`ModelrollGroup` is the one place that turns errors into a single `error: ...` line on
stderr and an exit code (0 ok, 1 failed, 2 bad usage), for every verb, added later too.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, NoReturn

import pydantic
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session
from typer._click.core import Context as ClickContext  # typer (pinned) vendors click; its Context types invoke()
from typer._click.exceptions import NoArgsIsHelpError
from typer.core import TyperGroup

from modelroll import __version__, catalog, migrate
from modelroll.artifacts import ArtifactStore
from modelroll.db import make_engine, make_session_factory
from modelroll.errors import InvalidInput, ModelrollError, PayloadTooLarge, Unavailable
from modelroll.settings import Settings

# Exit codes a pipeline can branch on (README, "From a pipeline"): 0 ok; 1 failed (a rollout rolled back, aborted
# or failed; a job failed); 2 bad usage; 3 timed out waiting; 4 waiting for an approval; 5 no candidate passed its
# gates (the job itself succeeded).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_AWAITING_APPROVAL, EXIT_NO_CANDIDATE = 0, 1, 2, 3, 4, 5


def exit_code_of(error: ModelrollError) -> int:
    """Bad input is bad usage (2); anything else that went wrong is a failure (1)."""
    return EXIT_USAGE if isinstance(error, (InvalidInput, PayloadTooLarge)) else EXIT_FAILED


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


class ModelrollGroup(TyperGroup):
    """The root group: every verb runs inside `invoke`, every usage error passes through `main`."""

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except ModelrollError as exc:
            _fail(exc.message, exit_code_of(exc))
        except (OperationalError, InterfaceError) as exc:
            reason = str(exc.orig).strip() if exc.orig is not None else str(exc)
            _fail(Unavailable(f"cannot use the database: {reason}").message, EXIT_FAILED)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else EXIT_OK  # an Exit's code; verbs return None
        except NoArgsIsHelpError as exc:  # `modelroll` or `modelroll db` alone: the help, as is
            typer.echo(exc.format_message(), err=True)
            code = exc.exit_code
        except typer.TyperException as exc:  # usage errors: missing argument, unknown option or verb
            context = getattr(exc, "ctx", None)
            hint = f" (see `{context.command_path} --help`)" if context is not None else ""
            typer.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
            code = exc.exit_code
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            code = EXIT_FAILED
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="modelroll", cls=ModelrollGroup, no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Build faster, smaller candidates of a production model and roll the best one out on live traffic.",
)


def load_settings() -> Settings:
    try:
        settings = Settings()
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = "MODELROLL_" + "_".join(str(part) for part in first["loc"]).upper()
        raise InvalidInput(f"{field}={first.get('input')!r} is not valid: {first['msg']}") from None
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        raise InvalidInput(
            f"MODELROLL_LOG_LEVEL={settings.log_level!r} is not valid: use DEBUG, INFO, WARNING or ERROR"
        )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    # Alembic narrates every connection at INFO; the db verbs print the outcome themselves.
    # So do httpx (one line per request) and onnxruntime's quantizer (through the root logger).
    for chatty in ("alembic", "httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(level if level <= logging.DEBUG else logging.WARNING)
    return settings


@app.callback()
def _root(ctx: typer.Context) -> None:
    ctx.obj = load_settings()


def settings_of(ctx: typer.Context) -> Settings:
    """The Settings read once at start-up, for any verb of any service."""
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings), "the root callback sets ctx.obj"
    return settings


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """One unit of work on a migrated database: committed if the block succeeds, rolled back if not."""
    migrate.ensure_schema(settings)
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session, session.begin():
            yield session
    finally:
        engine.dispose()


def human_bytes(size_bytes: int) -> str:
    value = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@app.command()
def version() -> None:
    """Print modelroll's version."""
    typer.echo(f"modelroll {__version__}")


db_app = typer.Typer(no_args_is_help=True, help="Create, upgrade and verify the database schema (Alembic).")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: Annotated[str, typer.Option(help="Target revision.")] = "head") -> None:
    """Apply the schema revisions up to REVISION (default: the newest)."""
    settings = settings_of(ctx)
    migrate.upgrade(settings, revision)
    typer.echo(f"database at revision {migrate.current(settings)} (head is {migrate.head(settings)})")


@db_app.command("downgrade")
def db_downgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision: base, -1, or a revision id.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: downgrading drops tables and their data.")] = False,
) -> None:
    """Undo schema revisions down to REVISION; `base` drops every modelroll table."""
    if not yes:
        raise InvalidInput("downgrade drops tables and the data in them: re-run with --yes to confirm")
    settings = settings_of(ctx)
    migrate.downgrade(settings, revision)
    typer.echo(f"database at revision {migrate.current(settings) or 'none (empty)'}")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Show the revision the database is at."""
    settings = settings_of(ctx)
    at, newest = migrate.current(settings), migrate.head(settings)
    if at is None:
        typer.echo(f"database has no revision (empty): run `modelroll db upgrade` (head is {newest})")
    else:
        typer.echo(f"database at revision {at}" + (" (head)" if at == newest else f" (head is {newest})"))


@db_app.command("check")
def db_check(ctx: typer.Context) -> None:
    """Fail unless the database is at head and matches modelroll's models exactly."""
    settings = settings_of(ctx)
    migrate.check(settings)
    typer.echo(f"schema matches modelroll's models at revision {migrate.current(settings)}")


models_app = typer.Typer(no_args_is_help=True, help=(
    "Register models, list them with their variants and what serves each, undo a promotion (rollback)."))


@models_app.command("register")
def models_register(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="The model as an ONNX file (.onnx).", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="Model name: lowercase letters, digits, '.', '_', '-'.")],
    description: Annotated[str, typer.Option(help="One line about the model.")] = "",
) -> None:
    """Register an ONNX file as a new model; it becomes the model's `baseline` variant."""
    settings = settings_of(ctx)
    store = ArtifactStore.from_settings(settings)
    with session_scope(settings) as session:
        catalog.register_model(session, store, path, name, description)
        baseline = catalog.get_variant(session, name, catalog.BASELINE_VARIANT)
    typer.echo(f"registered model {name!r} with variant {baseline.name!r}: {baseline.format}, "
               f"{human_bytes(baseline.size_bytes)}, sha256 {baseline.sha256[:12]}…")


def _model_json(model: catalog.ModelInfo) -> dict[str, Any]:
    return {
        "name": model.name, "description": model.description, "created_at": model.created_at.isoformat(),
        "production": model.production,
        "variants": [
            {"name": v.name, "role": v.role, "parent": v.parent, "format": v.format, "size_bytes": v.size_bytes,
             "sha256": v.sha256, "recipe": dict(v.recipe), "created_at": v.created_at.isoformat(),
             "retired": v.retired}
            for v in model.variants
        ],
    }


@models_app.command("list")
def models_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="Also list retired variants.")] = False,
) -> None:
    """List models and their variants (role, parent, size, sha256); `serves` marks each model's production
    variant, the one routers answer with outside a rollout."""
    with session_scope(settings_of(ctx)) as session:
        models = catalog.list_models(session)
    models = [replace(m, variants=tuple(v for v in m.variants if show_all or not v.retired)) for m in models]
    if as_json:
        typer.echo(json.dumps([_model_json(m) for m in models], indent=2))
        return
    if not models:
        typer.echo("no models registered yet: modelroll models register PATH --name NAME")
        return
    models = [replace(m, variants=tuple(replace(v, role=f"retired {v.role}") if v.retired else v
                                        for v in m.variants)) for m in models]
    table = Table(box=None)
    for column in ("model", "variant", "serves", "role", "parent", "format", "size", "sha256", "created (UTC)"):
        table.add_column(column, no_wrap=True)
    for model in models:
        for v in model.variants:
            table.add_row(model.name, v.name, "production" if v.name == model.production else "", v.role,
                          v.parent or "-", v.format, human_bytes(v.size_bytes), v.sha256[:12],
                          f"{v.created_at:%Y-%m-%d %H:%M}")
    console = Console()
    # Piped output is for reading later or grepping: never cut it to a guessed terminal width.
    (console if console.is_terminal else Console(width=200)).print(table)


# ─── Verbs ────────────────────────────────────────────────────────────────────────────────────────────
# The kernel's own groups; each service's verbs (and up/demo/traffic) are added by the composition root,
# modelroll_app/main.py, so that the kernel imports no service.
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
