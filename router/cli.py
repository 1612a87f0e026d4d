"""`modelroll router`: serve the Open Inference Protocol data plane under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("router")
    def router_command(
        ctx: typer.Context,
        host: Annotated[str | None, typer.Option(help="Address to bind (default: MODELROLL_ROUTER_HOST).")] = None,
        port: Annotated[int | None, typer.Option(help="Port (default: MODELROLL_ROUTER_PORT).")] = None,
        workers: Annotated[int, typer.Option(min=1, max=64, help="uvicorn worker processes (>1 needs Redis).")] = 1,
        variant: Annotated[list[str] | None, typer.Option(
            "--variant", help="Serve MODEL/VARIANT=PATH.onnx or MODEL/VARIANT=http://host:port[#remote_model] "
                              "instead of the catalog (repeat; the variant named 'baseline' is the baseline).")] = None,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    ) -> None:
        """Serve inference (V2 protocol) with the live split, shadow, fallback, samples and feedback."""
        from modelroll.cli import settings_of
        from router.serve import parse_variant, serve

        settings = settings_of(ctx)
        updates = {k: v for k, v in (("router_host", host), ("router_port", port)) if v is not None}
        settings = settings.model_copy(update=updates)
        specs = [parse_variant(v) for v in variant or []]
        serve(settings, workers, specs, log_level)
