"""Run one controller process: the ops API under uvicorn and, unless API-only, the reconciler beside it."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from controller.app import create_app
from controller.heap import return_large_frees
from controller.housekeeping import Housekeeping
from controller.reconcile import Reconciler
from controller.webhooks import WebhookNotifier
from modelroll import migrate
from modelroll.db import make_engine, make_session_factory
from modelroll.live import open_channel
from modelroll.settings import Settings

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stopped(Exception):
    """A stop signal, re-raised by uvicorn once its graceful shutdown is done (see `serve`)."""


def _stopped(signum: int, _frame: FrameType | None) -> None:
    raise _Stopped(signal.Signals(signum).name)


def serve(settings: Settings, host: str, port: int, *, reconcile: bool = True) -> None:
    """Serve until SIGINT/SIGTERM; on the way out the reconciler releases the leader lock for a quick handover."""
    migrate.ensure_schema(settings)
    engine = make_engine(settings)
    channel = open_channel(settings)
    session_factory = make_session_factory(engine)
    notifier = WebhookNotifier(settings.webhook_url, session_factory, pages_url=settings.status_page_url)
    reconciler = Reconciler(settings, channel, session_factory, notifier=notifier) if reconcile else None
    app = create_app(settings, channel, session_factory, reconciler=reconciler, notifier=notifier)
    housekeeping = None
    if reconciler is not None:
        return_large_frees()  # its looks' arrays grow with each rollout's age: freed, they leave the process
        reconciler.start()
        housekeeping = Housekeeping(settings, session_factory, lambda: reconciler.leading)
        housekeeping.start()
        log.info("controller started holder=%s lease_s=%s", reconciler.elector.holder, settings.leader_lease_s)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, restores the handlers it found and raises the signal again.
    # With the default handlers that kills the process before the leader lock is released (a standby then waits a
    # whole lease); with these, the signal becomes an exception and the clean-up below runs, leader lock first.
    previous = {sig: signal.signal(sig, _stopped) for sig in _STOP_SIGNALS}
    try:
        uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False)
    except _Stopped as stop:
        log.info("controller stopping on %s", stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if reconciler is not None:
            reconciler.stop()
        if housekeeping is not None:
            housekeeping.stop()
        notifier.close()
        channel.close()
        engine.dispose()
