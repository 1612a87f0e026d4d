"""Run one controller process: the ops API under uvicorn and, unless API-only, the reconciler beside it."""

from __future__ import annotations

import logging

import uvicorn

from controller.app import create_app
from controller.housekeeping import Housekeeping
from controller.reconcile import Reconciler
from controller.webhooks import WebhookNotifier
from modelroll import migrate
from modelroll.db import make_engine, make_session_factory
from modelroll.live import open_channel
from modelroll.settings import Settings

log = logging.getLogger(__name__)


def serve(settings: Settings, host: str, port: int, *, reconcile: bool = True) -> None:
    """Serve until SIGINT/SIGTERM; on the way out the reconciler releases the leader lock for a quick handover."""
    migrate.ensure_schema(settings)
    engine = make_engine(settings)
    channel = open_channel(settings)
    session_factory = make_session_factory(engine)
    notifier = WebhookNotifier(settings.webhook_url, session_factory)
    reconciler = Reconciler(settings, channel, session_factory, notifier=notifier) if reconcile else None
    app = create_app(settings, channel, session_factory, reconciler=reconciler, notifier=notifier)
    housekeeping = None
    if reconciler is not None:
        reconciler.start()
        housekeeping = Housekeeping(settings, session_factory, lambda: reconciler.leading)
        housekeeping.start()
        log.info("controller started holder=%s lease_s=%s", reconciler.elector.holder, settings.leader_lease_s)
    try:
        uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False)
    finally:
        if housekeeping is not None:
            housekeeping.stop()
        if reconciler is not None:
            reconciler.stop()
        notifier.close()
        channel.close()
        engine.dispose()
