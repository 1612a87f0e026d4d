"""`modelroll up` (router, controller and worker in one process) and `modelroll demo` (the whole story)."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from modelroll.cli import settings_of

    @app.command("up")
    def up_command(
        ctx: typer.Context,
        no_worker: Annotated[bool, typer.Option("--no-worker", help="Do not run an optimizer worker.")] = False,
    ) -> None:
        """Run router, controller and worker together (embedded by default; backends from MODELROLL_* settings)."""
        from modelroll_app import up

        settings = settings_of(ctx)
        services = up.start(settings, worker=not no_worker, log_level=settings.log_level.lower())
        typer.echo(f"router     {services.router_url}/v2  (Open Inference Protocol)")
        typer.echo(f"controller {services.controller_url}/  (status page, ops API under /v1, docs at /docs)")
        typer.echo("mode       " + ("embedded (SQLite, in-process live channel)" if settings.embedded
                                    else "distributed (database and Redis from settings)"))
        stopped = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopped.set())
        stopped.wait()
        typer.echo("stopping...")
        services.stop()

    @app.command("demo")
    def demo_command(
        ctx: typer.Context,
        keep_running: Annotated[bool, typer.Option("--keep-running", help="Leave the services up at the end.")] = False,
        router_port: Annotated[int, typer.Option(min=0, max=65535, help="Router port (0 = any free).")] = 8080,
        controller_port: Annotated[int, typer.Option(min=0, max=65535, help="Status page and API port.")] = 8081,
    ) -> None:
        """Optimize the digits model, roll a good and an over-pruned candidate out on live traffic, and let
        the controller promote or roll back each from its statistics. Embedded, one process, localhost only."""
        import logging

        from rich.console import Console

        from modelroll_app import demo

        settings = demo.demo_settings(settings_of(ctx), router_port, controller_port)
        if settings.log_level.upper() == "INFO":  # the default: the demo's own output tells the story
            logging.getLogger().setLevel(logging.WARNING)
        console = Console()
        outcome = demo.run(settings, demo.DemoConfig(), console, keep_running=keep_running)
        if outcome.failed_requests:
            raise typer.Exit(1)

    @app.command("traffic")
    def traffic_command(
        ctx: typer.Context,
        seconds: Annotated[float, typer.Option(min=1, max=3600, help="How long to send (bounded).")] = 60.0,
        clients: Annotated[int, typer.Option(min=1, max=16, help="Concurrent clients.")] = 2,
        url: Annotated[str | None, typer.Option("--url", help="Router base URL (loopback); default from settings.")]
        = None,
    ) -> None:
        """Send the digits model real labelled rows (scikit-learn's held-out digits, pixels scaled to [0, 1]) with
        sticky routing keys, and each label a second later to /v1/feedback, so a rollout has traffic to decide
        on. Loopback only; prints which variant answered."""
        import time

        from modelroll.errors import InvalidInput
        from modelroll_app.traffic import Traffic
        from optimizer.sources import digits_eval_set

        settings = settings_of(ctx)
        base = (url or f"http://{settings.router_host}:{settings.router_port}").rstrip("/")
        inputs, labels = digits_eval_set()
        try:
            load = Traffic(base, "digits", inputs, labels, clients=clients)
        except ValueError as exc:
            raise InvalidInput(f"--url: {exc}") from None
        load.start()
        ends = time.monotonic() + seconds
        try:
            while time.monotonic() < ends:
                time.sleep(min(5.0, max(0.0, ends - time.monotonic())))
                stats = load.stats
                served = ", ".join(f"{v} {n}" for v, n in sorted(stats.served_by.items())) or "none yet"
                typer.echo(f"sent {stats.sent}, failed {stats.failed}, labels joined {stats.labels_joined}; "
                           f"answered by: {served}")
        except KeyboardInterrupt:
            pass
        finally:
            load.stop()
        if load.stats.failed:
            raise typer.Exit(1)

