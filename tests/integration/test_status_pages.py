"""The status pages show what the database holds, hide actions from viewers, and act for operators."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from modelroll.db import RolloutRow
from tests.integration.controller_world import World, good_samples, make_world

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def world(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[World]:
    yield from make_world(pg_url, redis_url, redis_prefix, leader_lease_s=3.0)


def _started_rollout(world: World) -> int:
    with world.client() as client:
        r = client.post("/v1/rollouts", headers=world.auth("operator"), json={
            "model": "digits", "baseline": "fp32", "candidate": "int8",
            "steps": [{"weight_pct": 0, "shadow": True, "min_duration_s": 600, "min_samples": 100},
                      {"weight_pct": 100, "min_duration_s": 0, "min_samples": 100}]})
        assert r.status_code == 201, r.text
        rid = int(r.json()["id"])
    rec = world.reconciler("pages")
    assert rec.elector.poll() is not None
    rec.tick()
    world.channel.append_samples(good_samples(rid, 0, 1500, world.clock.now.timestamp(), shadow=True))
    rec.tick()
    return rid


def _login(client, token: str) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text


def test_pages_need_a_login_when_anonymous_viewers_are_off(world: World) -> None:
    with world.client() as client:
        r = client.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        bad = client.post("/login", data={"token": "mr_wrong"})
        assert bad.status_code == 401 and "unknown or revoked token" in bad.text


def test_overview_and_rollout_page_show_the_stored_values(world: World) -> None:
    rid = _started_rollout(world)
    with world.session_factory() as s:
        row = s.get(RolloutRow, rid)
        assert row is not None
        reason, results = row.last_reason, row.evaluation["results"]
    with world.client() as client:
        _login(client, world.tokens["viewer"])
        overview = client.get("/")
        assert overview.status_code == 200
        assert f'href="/rollouts/{rid}"' in overview.text
        assert "in shadow (mirrored, not served)" in overview.text
        assert "fp32 100\u00a0% / int8 0\u00a0% (+ int8 mirrored)" in overview.text
        assert "step 1 of 2 (shadow)" in overview.text
        page = client.get(f"/rollouts/{rid}")
        assert page.status_code == 200
        assert reason in page.text
        for result in results:  # every criterion card carries the statistics' own sentence
            assert f'data-criterion="{result["criterion"]}"' in page.text
            assert result["message"].replace("≤", "&le;") in page.text or result["message"] in page.text
        assert page.text.count("<svg") >= len(results) + 1
        assert "started at step 1 of 2" in page.text  # the event history in sentences
        # viewers get no buttons
        assert "/actions/" not in page.text


def test_operator_sees_buttons_and_pause_pauses(world: World) -> None:
    rid = _started_rollout(world)
    with world.client() as client:
        _login(client, world.tokens["operator"])
        page = client.get(f"/rollouts/{rid}")
        actions = set(re.findall(rf"/rollouts/{rid}/actions/(\w+)", page.text))
        assert actions == {"pause", "set_weight", "abort"}  # promote is admin-only; resume is for paused ones
        version = int(re.search(r'name="version" value="(\d+)"', page.text).group(1))  # type: ignore[union-attr]
        r = client.post(f"/rollouts/{rid}/actions/pause", data={"version": version}, follow_redirects=False)
        assert r.status_code == 303 and "done=pause" in r.headers["location"]
        stale = client.post(f"/rollouts/{rid}/actions/resume", data={"version": version}, follow_redirects=False)
        assert "error=" in stale.headers["location"]  # the version moved: a stale page cannot act
    with world.session_factory() as s:
        assert s.get(RolloutRow, rid).phase == "paused"  # type: ignore[union-attr]


def test_page_actions_refuse_bad_input(world: World) -> None:
    rid = _started_rollout(world)
    with world.client() as client:
        _login(client, world.tokens["admin"])
        assert client.post(f"/rollouts/{rid}/actions/explode", data={"version": 1}).status_code == 404
        assert client.post(f"/rollouts/{rid}/actions/pause", data={}).status_code == 400
        assert client.get("/rollouts/99999").status_code == 404
        login = client.post("/login", data={"token": world.tokens["admin"], "next": "https://evil.example"},
                            follow_redirects=False)
        assert login.headers["location"] == "/"
