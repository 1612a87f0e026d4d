"""`modelroll optimize MODEL`, `modelroll optimize report JOB` and `modelroll worker`.

In embedded mode (no MODELROLL_REDIS_URL) `optimize` runs the worker in this process; otherwise it
enqueues the job for the `modelroll worker` processes and follows its progress in the database.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from modelroll.errors import InvalidInput, Unavailable
from modelroll.types import Criteria, parse_criteria_pairs

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from modelroll.settings import Settings
    from optimizer.report import JobReport

POLL_S = 0.5


class OptimizeGroup(TyperGroup):
    """`optimize MODEL ...` runs the `run` verb; `optimize report JOB` is the other verb."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def parse_gates(text: str) -> Criteria:
    """'latency=0.5,memory=0.6,accuracy=0.02' (or the Criteria field names) into checked Criteria: the one criteria
    vocabulary (modelroll.types.CRITERIA_ALIASES), as `rollout create --criteria` and spec documents take it."""
    return parse_criteria_pairs(text, "--gates")


def _parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise InvalidInput(f"--batch-sizes must be integers separated by commas, like 1,32; got {text!r}") from None


def _sessions(settings: Settings) -> sessionmaker[Session]:
    from modelroll import migrate
    from modelroll.db import make_engine, make_session_factory

    migrate.ensure_schema(settings)
    return make_session_factory(make_engine(settings))


def _defaults(settings: Settings, session: Session, model: str, has_torch: bool) -> tuple[tuple[str, ...], str]:
    """The recipes for this kind of model and the runtimes installed here, and why."""
    from modelroll.artifacts import ArtifactStore
    from modelroll.db import ArtifactRow
    from modelroll.jobs import resolve_baseline
    from modelroll.runtimes import OPENVINO, installed_version
    from optimizer.model_kind import default_techniques, model_kind

    _, baseline = resolve_baseline(session, model, None)
    artifact = session.get(ArtifactRow, baseline.artifact_id)
    assert artifact is not None
    kind = model_kind(ArtifactStore.from_settings(settings).path_of(artifact.sha256))
    return default_techniques(kind, has_torch=has_torch, openvino=installed_version(OPENVINO) is not None)


def _ensure_model(session: Session, settings: Settings, model: str, name: str | None) -> tuple[str, bool]:
    """The registered model MODEL names (registering an .onnx path or a built-in first); (name, has torch)."""
    from sqlalchemy import select

    from modelroll import catalog
    from modelroll.artifacts import ArtifactStore
    from modelroll.db import ModelRow
    from modelroll.jobs import resolve_baseline

    store = ArtifactStore.from_settings(settings)
    path = Path(model)
    if model.endswith(".onnx") or path.is_file():
        model_name = name or path.stem.lower().replace(" ", "-")
        if session.scalar(select(ModelRow).where(ModelRow.name == model_name)) is None:
            catalog.register_model(session, store, path, model_name, description=f"registered from {path.name}")
        elif catalog.get_variant(session, model_name, catalog.BASELINE_VARIANT).sha256 != \
                catalog.store_onnx(store, path).sha256:
            raise InvalidInput(f"model {model_name!r} is already registered with a different ONNX file: "
                               "pass --name NEW_NAME, or optimize it by name")
    else:
        model_name = model
        if session.scalar(select(ModelRow).where(ModelRow.name == model_name)) is None:
            from optimizer.baselines import BUILTINS, register_builtin

            if model_name not in BUILTINS:
                raise InvalidInput(f"{model!r} is neither an .onnx file, a registered model nor a built-in model "
                                   f"({', '.join(BUILTINS)})")
            typer.echo(f"building the built-in model {model_name!r} (once; cached)...", err=True)
            register_builtin(session, store, model_name, settings.home / "cache")
    _, baseline = resolve_baseline(session, model_name, None)
    return model_name, baseline.source_artifact_id is not None


def _wait(sessions: sessionmaker[Session], job_id: int, worker: threading.Thread | None = None) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from modelroll.db import OptimizationJobRow
    from modelroll.jobs import TERMINAL_STATES

    # On stderr, so that --json / --markdown output on stdout stays clean for scripts.
    with Progress(TextColumn("job {task.fields[job]}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), TextColumn("{task.description}"), transient=True,
                  console=Console(stderr=True)) as progress:
        task = progress.add_task("queued", total=100, job=job_id)
        while True:
            with sessions() as session:
                row = session.get(OptimizationJobRow, job_id)
                assert row is not None
                status, fraction, message = row.status, row.progress, row.message
            progress.update(task, completed=fraction * 100, description=message)
            if status in TERMINAL_STATES:
                return
            if worker is not None and not worker.is_alive():
                raise Unavailable(f"the in-process worker stopped before job {job_id} finished: see the log above")
            time.sleep(POLL_S)


def _print(report: JobReport, as_json: bool, markdown: bool) -> None:
    from rich.console import Console

    from optimizer.report import to_markdown, to_rich

    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    if markdown:
        typer.echo(to_markdown(report))
        return
    console = Console()
    console = console if console.is_terminal else Console(width=160)
    for table in to_rich(report):
        console.print(table)
    tail = f"job {report.job_id}: {report.status}" + (f" — {report.error}" if report.error else "")
    passed = [c.variant or c.name for c in report.candidates if c.passed]
    console.print(tail + (f"; passing every gate: {', '.join(passed)}" if passed else "; no candidate passes"))


@contextmanager
def _job_log(settings: Settings, job_id: int) -> Iterator[Path]:
    """While the job runs in this process, log records (the runtimes' and libraries' included, and what the
    measurement and build children print) go to home/logs/job-N.log instead of breaking up the progress bar."""
    path = settings.home / "logs" / f"job-{job_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    children = logging.getLogger("optimizer.evaluate")  # the children's output, logged at debug level
    handlers, level, children_level = root.handlers[:], root.level, children.level
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(min(root.level, logging.INFO))
    children.setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        children.setLevel(children_level)
        handler.close()


def _run_embedded(settings: Settings, channel: Any, sessions: sessionmaker[Session], job_id: int) -> None:
    """Embedded mode: this process is the worker; stop it once the job is done."""
    from modelroll.db import OptimizationJobRow
    from modelroll.jobs import TERMINAL_STATES
    from optimizer.worker import run_worker

    # This process is the only worker: a crashed attempt can be retried as soon as it is noticed.
    settings = settings.model_copy(update={"job_visibility_timeout_s": 1.0})
    stop = threading.Event()

    def done() -> None:
        with sessions() as session:
            row = session.get(OptimizationJobRow, job_id)
            if row is None or row.status in TERMINAL_STATES:
                stop.set()

    with _job_log(settings, job_id) as log_path:
        thread = threading.Thread(target=run_worker, args=(settings, channel, stop),
                                  kwargs={"serve_metrics": False, "on_idle": done}, daemon=True, name="worker")
        thread.start()
        try:
            _wait(sessions, job_id, thread)
        finally:
            stop.set()
            thread.join(timeout=30)
    typer.echo(f"job {job_id}'s log: {log_path}", err=True)


def register(app: typer.Typer) -> None:
    optimize = typer.Typer(cls=OptimizeGroup, no_args_is_help=True, help=(
        "Build INT8/pruned candidates of a model, measure them, print the report. "
        "`modelroll optimize MODEL [OPTIONS]` is `optimize run` (see `modelroll optimize run --help`)."))

    @optimize.command("run")
    def optimize_run(
        ctx: typer.Context,
        model: Annotated[str, typer.Argument(
            help="An .onnx file, a registered model, or a built-in: digits, digits-cnn, minilm-l6.")],
        techniques: Annotated[list[str] | None, typer.Option(
            "--techniques", "-t", help="A recipe per candidate (repeat): int8, int8-static:entropy, ov-int8, "
                                       "ov-weights, prune:0.5,int8, drop-layers,distill,int8. Default: chosen for "
                                       "the kind of model (transformer, CNN, MLP) and the runtimes installed.")] = None,
        eval_data: Annotated[Path | None, typer.Option(
            help=".npz with one array per model input (named like the input, rows first) and optional 'labels' "
                 "(without: quality is agreement with the baseline). Built-ins bring their own.")] = None,
        gates: Annotated[str, typer.Option(help="e.g. latency=0.5,memory=0.6,accuracy=0.02 (fractions).")] = "",
        baseline: Annotated[str | None, typer.Option(help="Baseline variant (default: the model's).")] = None,
        name: Annotated[str | None, typer.Option(help="Model name when MODEL is a file (default: its stem).")] = None,
        batch_sizes: Annotated[str, typer.Option(help="Batch sizes to time, e.g. 1,32.")] = "1,32",
        threads: Annotated[int, typer.Option(help="Runtime threads during measurement.")] = 1,
        no_wait: Annotated[bool, typer.Option("--no-wait", help="Print the job id and return.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
        markdown: Annotated[bool, typer.Option("--markdown", help="Print the report as Markdown.")] = False,
    ) -> None:
        """Queue an optimization job for MODEL, follow it, and print its report.

        Exit codes: 0 at least one candidate passes every gate; 1 the job failed; 2 bad usage (a bad recipe or
        parameter is refused before anything is queued or built); 5 the job ran but no candidate passes.
        """
        from modelroll.cli import EXIT_FAILED, EXIT_NO_CANDIDATE, settings_of
        from modelroll.inputs import LOCAL
        from modelroll.jobs import OptimizationRequest, check_recipes, submit_job
        from modelroll.live import open_channel

        settings = settings_of(ctx)
        if no_wait and settings.embedded:
            raise InvalidInput("--no-wait needs a shared queue (MODELROLL_REDIS_URL) and `modelroll worker`; "
                               "in embedded mode the job runs in this process")
        criteria = parse_gates(gates) if gates else Criteria()
        sizes = _parse_batch_sizes(batch_sizes)
        if techniques:
            check_recipes(techniques)  # before a built-in model is built or anything queued
        sessions = _sessions(settings)
        channel = open_channel(settings)
        with sessions() as session:
            model_name, has_torch = _ensure_model(session, settings, model, name)
            recipes, why = (tuple(techniques), "") if techniques else \
                _defaults(settings, session, model_name, has_torch)
            request = OptimizationRequest(
                model=model_name, techniques=recipes, criteria=criteria, baseline=baseline,
                eval_data=str(eval_data.resolve()) if eval_data is not None else None,
                batch_sizes=sizes, threads=threads)
            # The CLI runs as its user on their own machine: --eval-data may be any file they can read.
            job_id = submit_job(session, channel, request, settings.effective_artifacts_dir, LOCAL).id
        if why:
            typer.echo(f"no -t given: {why}", err=True)
        typer.echo(f"queued optimization job {job_id} for model {model_name!r}: {', '.join(recipes)}", err=True)
        if no_wait:
            typer.echo(str(job_id))
            return
        if settings.embedded:
            _run_embedded(settings, channel, sessions, job_id)
        else:
            _wait(sessions, job_id)
        from optimizer.jobs import load_report  # torch and onnxruntime: only once there is a report to load

        with sessions() as session:
            report = load_report(session, job_id)
        _print(report, as_json, markdown)
        if report.status != "succeeded":
            raise typer.Exit(EXIT_FAILED)
        if not any(c.passed for c in report.candidates):
            raise typer.Exit(EXIT_NO_CANDIDATE)

    @optimize.command("report")
    def optimize_report(
        ctx: typer.Context,
        job: Annotated[int, typer.Argument(help="The job id.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        markdown: Annotated[bool, typer.Option("--markdown", help="Print Markdown.")] = False,
    ) -> None:
        """Print a job's report: metric, original, optimized, improvement and each gate, per candidate."""
        from modelroll.cli import settings_of
        from optimizer.jobs import load_report

        with _sessions(settings_of(ctx))() as session:
            report = load_report(session, job)
        _print(report, as_json, markdown)

    @optimize.command("list")
    def optimize_list(
        ctx: typer.Context,
        limit: Annotated[int, typer.Option(min=1, max=1000, help="Newest jobs first, at most this many.")] = 50,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Optimization jobs, newest first: status, model, recipes and the candidates that pass every gate."""
        from sqlalchemy import select

        from modelroll.cli import settings_of
        from modelroll.db import CandidateReportRow, ModelRow, OptimizationJobRow, VariantRow

        rows: list[dict[str, Any]] = []
        with _sessions(settings_of(ctx))() as session:
            for job in session.scalars(select(OptimizationJobRow).order_by(OptimizationJobRow.id.desc()).limit(limit)):
                model = session.get(ModelRow, job.model_id)
                passing = session.scalars(
                    select(VariantRow.name).join(CandidateReportRow, CandidateReportRow.variant_id == VariantRow.id)
                    .where(CandidateReportRow.job_id == job.id, CandidateReportRow.passed.is_(True))).all()
                rows.append({"id": job.id, "model": model.name if model else None, "status": job.status,
                             "techniques": list((job.request or {}).get("techniques", [])), "passing": list(passing),
                             "created_at": job.created_at.isoformat(), "error": job.error})
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            typer.echo("no optimization job yet: modelroll optimize MODEL -t RECIPE")
        for r in rows:
            passing = ", ".join(r["passing"]) or "none"
            typer.echo(f"job {r['id']}  {r['model']}  {r['status']}  {', '.join(r['techniques'])}  "
                       f"passing: {passing}  {r['created_at'][:19]}" + (f"  ({r['error']})" if r["error"] else ""))

    app.add_typer(optimize, name="optimize")

    @app.command("worker")
    def worker_command(ctx: typer.Context) -> None:
        """Run an optimizer worker: take jobs from the queue until SIGTERM (metrics on MODELROLL_WORKER_PORT)."""
        from modelroll import migrate
        from modelroll.cli import settings_of
        from modelroll.live import open_channel
        from optimizer.worker import run_worker

        settings = settings_of(ctx)
        if settings.embedded:
            raise InvalidInput("`modelroll worker` needs MODELROLL_REDIS_URL (a queue shared with the submitters); "
                               "in embedded mode `modelroll optimize` and `modelroll up` run the worker in-process")
        migrate.ensure_schema(settings)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        run_worker(settings, open_channel(settings), stop)
