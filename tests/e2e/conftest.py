"""Browser fixtures: Debian's chromium driven by Playwright, and the controller served for real by uvicorn.

The browser is launched once per module; each test gets a fresh context whose console errors and page
errors are collected and must be empty when the test ends. The page's own auto-refresh timer is frozen
(Playwright's clock) so a reload never lands in the middle of a click; tests advance it when they mean to.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Error, Page, ViewportSize, sync_playwright

from controller.app import create_app
from modelroll.db import make_engine, make_session_factory
from modelroll.live import open_channel
from modelroll.settings import Settings
from tests.integration.controller_world import World, add_report, make_world, own_database, start_rollout
from tests.loopback import ServedApp
from tests.services import drop_redis_keys

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}


def ensure_chromium() -> Path:
    """Debian's chromium; installed with apt-get when missing (never a downloaded browser)."""
    if CHROMIUM.exists():
        return CHROMIUM
    steps = (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=900,
                              env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        if done.returncode != 0:
            pytest.fail(f"{CHROMIUM} is missing and `{' '.join(step)}` failed (exit {done.returncode}): "
                        f"{done.stderr.strip()[-800:]}; install Debian's chromium package to run the browser tests",
                        pytrace=False)
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} is still missing", pytrace=False)
    return CHROMIUM


# Module scope, not session: Playwright's sync API keeps an event loop running on the main thread while it
# is open, and every later test that calls asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = ensure_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Browsing:
    """One browser context for one test, with every console error and uncaught page error it met."""

    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    visited: list[str] = field(default_factory=list)


@pytest.fixture()
def browsing(browser: Browser) -> Iterator[Browsing]:
    context = browser.new_context(viewport=VIEWPORT)
    context.clock.install()
    context.clock.pause_at(time.time() * 1000 + 1000)  # timers fire only when a test runs the clock
    page = context.new_page()
    out = Browsing(context, page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            out.errors.append(f"console error on {page.url}: {message.text}")

    def on_page_error(error: Error) -> None:
        out.errors.append(f"uncaught error on {page.url}: {error.message}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("framenavigated", lambda frame: out.visited.append(frame.url) if frame == page.main_frame else None)
    try:
        yield out
    finally:
        context.close()
    assert out.visited, "the test visited no page"
    assert not out.errors, "\n".join(out.errors)


@dataclass
class StatusSite:
    url: str
    world: World
    rollout_id: int


@dataclass(frozen=True)
class Seeded:
    """A database holding a started rollout, used as the template each test's own database is copied from."""

    database: str
    rollout_id: int
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def seeded(pg_admin_url: str, redis_url: str) -> Iterator[Seeded]:
    """Seeded and evaluated once per module (the statistics take seconds); every test gets a copy."""
    prefix = f"modelroll-test:{uuid.uuid4().hex[:12]}:"
    for url in own_database(pg_admin_url):
        try:
            with contextmanager(make_world)(url, redis_url, prefix, leader_lease_s=3.0) as world:
                rollout_id = start_rollout(world, "browser-tests")
                add_report(world)
                tokens = dict(world.tokens)
        finally:
            drop_redis_keys(redis_url, prefix)
        yield Seeded(url.rsplit("/", 1)[1], rollout_id, tokens)


@pytest.fixture()
def status_site(seeded: Seeded, pg_admin_url: str, redis_url: str, redis_prefix: str) -> Iterator[StatusSite]:
    """The controller app under uvicorn over this test's copy of the seeded database and its own Redis prefix."""
    import psycopg

    name = f"modelroll_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{seeded.database}"')
    url = pg_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    # The same settings as make_world: no anonymous viewer, tokens only.
    settings = Settings(database_url=url, redis_url=redis_url, redis_prefix=redis_prefix,
                        allow_anonymous_viewer=False, admin_token="", leader_lease_s=3.0)
    engine = make_engine(settings)
    channel = open_channel(settings)
    world = World(settings, engine, make_session_factory(engine), channel, dict(seeded.tokens))
    served = ServedApp(create_app(settings, channel, world.session_factory), "status-pages")
    try:
        yield StatusSite(served.url, world, seeded.rollout_id)
    finally:
        served.stop()
        channel.close()
        engine.dispose()
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Screenshots of the browser tests (gitignored; CI keeps them as artifacts)."""
    shutil.rmtree(ARTIFACTS / "status-pages", ignore_errors=True)
    (ARTIFACTS / "status-pages").mkdir(parents=True)
    return ARTIFACTS / "status-pages"
