"""Run router, controller and worker together in one process (`modelroll up`, `modelroll demo`).

This is the composition root of the embedded mode: one in-process live channel shared by the three
services, each HTTP service under its own uvicorn server on a background thread. The services are
imported here lazily; `modelroll/` itself depends on none of them.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelroll import migrate
from modelroll.artifacts import ArtifactStore
from modelroll.db import make_engine, make_session_factory
from modelroll.errors import Unavailable
from modelroll.live import open_channel
from modelroll.live.base import LiveChannel
from modelroll.settings import Settings

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 = any free port), bound before the server starts so its URL is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror}; pick another port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class Services:
    """What `start` started; `stop()` ends all of it, in reverse order."""

    settings: Settings
    channel: LiveChannel
    router_url: str = ""
    controller_url: str = ""
    session_factory: Any = None
    _stoppers: list[Callable[[], None]] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def stop(self) -> None:
        for stopper in reversed(self._stoppers):
            try:
                stopper()
            except Exception as exc:  # stopping must reach every service; report what failed
                log.warning("stopping a service failed why=%s", exc)
        for thread in self._threads:
            thread.join(timeout=15)


def _serve(app: Any, sock: socket.socket, name: str, services: Services, log_level: str) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    services._threads.append(thread)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()

    services._stoppers.append(stop)


def start(settings: Settings, *, router: bool = True, controller: bool = True, worker: bool = True,
          channel: LiveChannel | None = None, log_level: str = "warning") -> Services:
    """Start the chosen services on the settings' hosts and ports; returns once each is listening."""
    migrate.ensure_schema(settings)
    engine = make_engine(settings)
    session_factory = make_session_factory(engine)
    channel = channel or open_channel(settings)
    services = Services(settings=settings, channel=channel, session_factory=session_factory)
    services._stoppers.append(engine.dispose)
    try:
        if worker:
            _start_worker(settings, channel, services)
        if controller:
            _start_controller(settings, channel, session_factory, services, log_level)
        if router:
            _start_router(settings, channel, session_factory, services, log_level)
    except BaseException:
        services.stop()
        raise
    return services


def _start_worker(settings: Settings, channel: LiveChannel, services: Services) -> None:
    from optimizer.worker import run_worker

    stop_event = threading.Event()
    thread = threading.Thread(target=run_worker, args=(settings, channel, stop_event), name="worker", daemon=True,
                              kwargs={"serve_metrics": False})
    thread.start()
    services._threads.append(thread)
    services._stoppers.append(stop_event.set)


def _start_controller(settings: Settings, channel: LiveChannel, session_factory: Any, services: Services,
                      log_level: str) -> None:
    from controller.app import create_app
    from controller.housekeeping import Housekeeping
    from controller.reconcile import Reconciler
    from controller.webhooks import WebhookNotifier

    notifier = WebhookNotifier(settings.webhook_url, session_factory, pages_url=settings.status_page_url)
    reconciler = Reconciler(settings, channel, session_factory, notifier=notifier)
    app = create_app(settings, channel, session_factory, reconciler=reconciler, notifier=notifier)
    sock = bind(settings.controller_host, settings.controller_port)
    services.controller_url = url_of(sock)
    reconciler.start()
    housekeeping = Housekeeping(settings, session_factory, lambda: reconciler.leading)
    housekeeping.start()
    services._stoppers.append(notifier.close)
    services._stoppers.append(reconciler.stop)
    services._stoppers.append(housekeeping.stop)
    _serve(app, sock, "controller", services, log_level)


def _start_router(settings: Settings, channel: LiveChannel, session_factory: Any, services: Services,
                  log_level: str) -> None:
    from router.app import create_app
    from router.variants import CatalogVariantSource

    app = create_app(settings, channel, CatalogVariantSource(session_factory, ArtifactStore.from_settings(settings)),
                     token_sessions=session_factory)
    sock = bind(settings.router_host, settings.router_port)
    services.router_url = url_of(sock)
    services._stoppers.append(app.close)
    _serve(app, sock, "router", services, log_level)
