"""A database that goes away: every route of the ops API answers 503 `{"error"}` with Retry-After, the status pages
503 in HTML, never a plain-text 500; liveness and the metrics scrape still answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.errors import RETRY_AFTER_S
from modelroll.db import make_engine, make_session_factory
from modelroll.live import open_channel
from modelroll.settings import Settings
from tests.integration.controller_world import World, make_world
from tests.loopback import free_port

pytestmark = pytest.mark.timeout(120)

ADMIN = "s3cret-admin"
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/rollouts"): {"model": "digits", "candidate": "int8"},
    ("POST", "/v1/rollouts/{rollout_id}/weight"): {"weight_pct": 5},
    ("POST", "/v1/models/{name}/rollback"): {"to": "fp32"},
    ("POST", "/v1/optimizations"): {"model": "digits"},
    ("POST", "/v1/rollouts/{rollout_id}/approve"): {"reason": "looks good"},
    ("POST", "/v1/apply"): {"apiVersion": "modelroll/v1", "kind": "Rollout", "metadata": {"name": "r1"},
                            "spec": {"model": "digits", "candidate": "int8"}},
}
PATH_VALUES = {"{rollout_id}": "1", "{job_id}": "1", "{name}": "digits", "{variant}": "int8"}


@pytest.fixture()
def world(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[World]:
    for world in make_world(pg_url, redis_url, redis_prefix):
        world.settings = world.settings.model_copy(update={"admin_token": ADMIN})
        yield world


class Client(TestClient):
    """A client that gets the answer a real server would send (not the exception re-raised), and its app."""

    def __init__(self, app: FastAPI) -> None:
        super().__init__(app, raise_server_exceptions=False)
        self.app_under_test = app


def unraised_client(world: World) -> Client:
    return Client(create_app(world.settings, world.channel, world.session_factory))


def api_calls(app: FastAPI) -> list[tuple[str, str, Any]]:
    """(method, path, body) of every /v1 operation the app documents, with valid path values and bodies."""
    calls = []
    for template, operations in app.openapi()["paths"].items():
        if not template.startswith("/v1"):
            continue
        for method in sorted(operations):
            path = template
            for placeholder, value in PATH_VALUES.items():
                path = path.replace(placeholder, value)
            body = BODIES.get((method.upper(), template))
            required = operations[method].get("requestBody", {}).get("required", False)
            assert body is not None or not required, f"give BODIES a valid body for {method.upper()} {template}"
            calls.append((method.upper(), path, body))
    assert len(calls) >= 15, calls
    return calls


def assert_every_route_is_503(client: Client) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}", "If-Match": '"1"'}
    for method, path, body in api_calls(client.app_under_test):
        r = client.request(method, path, headers=headers, json=body)
        assert r.status_code == 503, (method, path, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json", (method, path, r.headers)
        assert "database is unreachable" in r.json()["error"], (method, path, r.text)
        assert r.headers["retry-after"] == str(RETRY_AFTER_S), (method, path)
    # an ordinary token must be looked up in the database: that is a 503 too, not a 401 nor a 500
    r = client.get("/v1/models", headers={"Authorization": "Bearer mr_some-token"})
    assert r.status_code == 503 and r.json()["error"], r.text
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["database"]["ok"] is False
    assert client.get("/healthz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and 'modelroll_controller_errors_total{reason="database"}' in metrics.text


def assert_pages_are_503_html(client: Client) -> None:
    client.cookies.set("modelroll_token", ADMIN)
    html = {"Accept": "text/html,application/xhtml+xml"}
    for method, path, form in (("GET", "/", None), ("GET", "/rollouts/1", None),
                               ("POST", "/rollouts/1/actions/pause", {"version": "1"}),
                               ("POST", "/models/digits/actions/rollback", {"expected_revision": "1"})):
        r = client.request(method, path, headers=html, data=form, follow_redirects=False)
        assert r.status_code == 503, (method, path, r.status_code, r.text)
        assert r.headers["content-type"].startswith("text/html") and "database is unreachable" in r.text, r.text
        assert r.headers["retry-after"] == str(RETRY_AFTER_S)
    client.cookies.clear()
    r = client.post("/login", data={"token": "mr_not-the-admin"}, headers=html, follow_redirects=False)
    assert r.status_code == 503 and "database is unreachable" in r.text, r.text


def test_a_dropped_database_is_503_with_retry_after_on_every_route(world: World, pg_admin_url: str) -> None:
    with unraised_client(world) as client:
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        name = world.settings.database_url.rsplit("/", 1)[1]
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        assert_every_route_is_503(client)
        assert_pages_are_503_html(client)


def test_a_database_nobody_listens_on_is_503_with_retry_after(tmp_path: Any, redis_url: str,
                                                              redis_prefix: str) -> None:
    settings = Settings(home=tmp_path, database_url=f"postgresql+psycopg://modelroll:x@127.0.0.1:{free_port()}/gone",
                        redis_url=redis_url, redis_prefix=redis_prefix, admin_token=ADMIN,
                        allow_anonymous_viewer=True)
    engine = make_engine(settings)
    channel = open_channel(settings)
    try:
        with Client(create_app(settings, channel, make_session_factory(engine))) as client:
            assert_every_route_is_503(client)
            r = client.get("/v1/rollouts")  # anonymous viewer: the read itself needs the database
            assert r.status_code == 503 and r.headers["retry-after"] == str(RETRY_AFTER_S)
            assert_pages_are_503_html(client)
    finally:
        channel.close()
        engine.dispose()


def test_routes_that_need_no_database_still_answer(world: World, pg_admin_url: str) -> None:
    with unraised_client(world) as client:
        name = world.settings.database_url.rsplit("/", 1)[1]
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        for path in ("/healthz", "/metrics", "/openapi.json", "/docs", "/login"):
            assert client.get(path).status_code == 200, path
