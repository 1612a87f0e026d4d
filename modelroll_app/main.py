"""The `modelroll` command: the kernel's verbs (modelroll/cli.py) plus each service's, registered here.

A service exposes `register(app: typer.Typer) -> None` in its own `<service>/cli.py`; this module adds it.
Inside a verb: `settings_of(ctx)` for the Settings, `session_scope(settings)` for the database; raise modelroll
errors, ModelrollGroup prints them. Keep heavy imports (torch, onnxruntime) inside the verb functions so
`modelroll --help` stays fast.
"""

from __future__ import annotations

from controller.cli import register as register_controller
from modelroll.cli import app, models_app
from modelroll.cli_gc import register as register_gc
from modelroll_app.cli_up import register as register_up
from optimizer.cli import register as register_optimizer
from router.cli import register as register_router

register_router(app)
register_controller(app)
register_optimizer(app)
register_up(app)
register_gc(app, models_app)

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point `modelroll` (pyproject); errors and exit codes are handled by ModelrollGroup."""
    app()
