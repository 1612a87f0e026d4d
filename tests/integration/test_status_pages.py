"""The status pages show what the database holds, hide actions from viewers, and act for operators."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import pytest
from markupsafe import escape
from sqlalchemy import update

from controller.reconcile import Reconciler
from modelroll.db import CandidateReportRow, RolloutRow
from modelroll.live.base import Sample
from optimizer.report import lines
from tests.integration.controller_world import (
    World,
    add_report,
    drop_reports,
    good_samples,
    make_world,
    start_rollout,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def world(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[World]:
    yield from make_world(pg_url, redis_url, redis_prefix, leader_lease_s=3.0)


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
    rid = start_rollout(world, "pages")
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


def _report_rows(page: str) -> list[list[str]]:
    """The cells of the page's optimizer table, as text (tags dropped, entities decoded)."""
    table = re.search(r'<table id="report">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert table is not None, "the rollout page shows no optimizer table"
    return [[html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in re.findall(r"<td>(.*?)</td>", tr, re.S)]
            for tr in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)]


def test_rollout_page_shows_the_optimizer_report_line_for_line(world: World) -> None:
    drop_reports(world)
    rid = start_rollout(world, "pages", force=True)
    with world.client() as client:
        _login(client, world.tokens["viewer"])
        assert "registered by hand" in client.get(f"/rollouts/{rid}").text
        report = add_report(world)
        page = client.get(f"/rollouts/{rid}").text
    expected = [[x.metric, x.original, x.optimized, x.improvement, x.gate] for x in lines(report)]
    assert _report_rows(page) == expected  # the rows, in the words, of `modelroll optimize report`
    assert len(expected) == 18 and expected[0][0] == "runtime"
    assert expected[2][:3] == ["latency p50, batch 1", "2.000 ms", "0.500 ms"]
    failed = [g for g in report.gates if not g.passed]
    assert [g.name for g in failed] == ["memory_b32"]
    assert f'class="verdict verdict-fail" title="{escape(failed[0].message)}">FAIL' in page


def test_rollout_page_says_so_when_the_stored_figures_cannot_be_read(world: World) -> None:
    rid = start_rollout(world, "pages")
    add_report(world)
    with world.session_factory() as session, session.begin():  # figures of some other schema
        session.execute(update(CandidateReportRow).values(candidate_figures={"size_bytes": 1}))
    with world.client() as client:
        _login(client, world.tokens["viewer"])
        page = client.get(f"/rollouts/{rid}")
    assert page.status_code == 200
    assert "stored figures for this candidate could not be read" in page.text and 'id="report"' not in page.text


def test_operator_sees_buttons_and_pause_pauses(world: World) -> None:
    rid = start_rollout(world, "pages")
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
    rid = start_rollout(world, "pages")
    with world.client() as client:
        _login(client, world.tokens["admin"])
        assert client.post(f"/rollouts/{rid}/actions/explode", data={"version": 1}).status_code == 404
        assert client.post(f"/rollouts/{rid}/actions/pause", data={}).status_code == 400
        assert client.get("/rollouts/99999").status_code == 404
        login = client.post("/login", data={"token": world.tokens["admin"], "next": "https://evil.example"},
                            follow_redirects=False)
        assert login.headers["location"] == "/"


def _rollout_with_inline_memory(world: World, criteria: dict[str, object]) -> tuple[int, Reconciler]:
    """A started rollout whose routers ran every variant inline: their memory samples carry no figure."""
    with world.client() as client:
        r = client.post("/v1/rollouts", headers=world.auth("operator"), json={
            "model": "digits", "baseline": "fp32", "candidate": "int8", "criteria": criteria,
            "steps": [{"weight_pct": 0, "shadow": True, "min_duration_s": 600, "min_samples": 100},
                      {"weight_pct": 100, "min_duration_s": 0, "min_samples": 100}]})
        assert r.status_code == 201, r.text
        rid = int(r.json()["id"])
    reconciler = world.reconciler("pages")
    assert reconciler.elector.poll() is not None
    reconciler.tick()
    samples = [s for s in good_samples(rid, 0, 1500, world.clock.now.timestamp(), shadow=True) if s.kind != "memory"]
    samples += [Sample(kind="memory", model="digits", variant=v, ts=world.clock.now.timestamp() + i, rollout_id=rid,
                       step=0, runner="inline") for i in range(30) for v in ("fp32", "int8")]
    world.channel.append_samples(samples)
    reconciler.tick()
    return rid, reconciler


def _memory_card(page: str) -> str:
    card = re.search(r'<article class="card" data-criterion="memory">(.*?)</article>', page, re.S)
    assert card is not None, "the rollout page shows no memory card"
    return html.unescape(card.group(1))


def test_memory_from_inline_routers_shows_not_measurable_here_never_a_figure(world: World) -> None:
    rid, _ = _rollout_with_inline_memory(world, {})
    with world.client() as client:
        _login(client, world.tokens["viewer"])
        page = client.get(f"/rollouts/{rid}").text
    card = _memory_card(page)
    assert '<span class="badge source-unmeasurable">not measurable here</span>' in card
    assert "not measurable here (inline runner): " in card and "MODELROLL_ROUTER_RUNNER=subprocess" in card
    assert "UNDECIDED" in card.upper() and "<svg" not in card  # no interval drawn for what was not measured
    assert "baseline - · candidate -" in card
    assert "Runner memory per variant (exact readings): not measurable here (inline runner)" in html.unescape(page)


def test_memory_gated_offline_is_labelled_offline(world: World) -> None:
    rid, reconciler = _rollout_with_inline_memory(world, {"memory_source": "offline"})
    with world.session_factory() as s:
        memory = next(r for r in s.get(RolloutRow, rid).evaluation["results"]  # type: ignore[union-attr]
                      if r["criterion"] == "memory")
    assert memory["source"] == "unmeasurable" and "no optimizer report" in memory["message"]  # no figures yet
    add_report(world)  # the optimizer measured both: 80 MiB and 20 MiB at batch 1, 80 and 40 at batch 32
    reconciler.tick()
    with world.client() as client:
        _login(client, world.tokens["viewer"])
        card = _memory_card(client.get(f"/rollouts/{rid}").text)
    assert '<span class="badge source-offline">offline</span>' in card
    # gated where the candidate saves least: batch 32, which the optimizer's own table fails
    assert "candidate memory is 0.50× baseline offline (40.0 MiB vs 80.0 MiB, the optimizer's figures)" in card
    assert "baseline 80.0 MiB (offline) · candidate 40.0 MiB (offline)" in card
    assert "the optimizer's figures (offline), no live readings" in card and "figure 0.50×, needs ≤ 0.40×" in card


def _serving_row(page: str, model: str) -> str:
    row = re.search(rf'<tr data-model="{model}">(.*?)</tr>', page, re.S)
    assert row is not None, f"the overview shows no 'what serves' row for {model}"
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", row.group(1)))).strip()


def test_the_overview_shows_what_serves_and_an_admin_can_undo_from_it(world: World) -> None:
    rid = start_rollout(world, "pages")
    with world.client() as client:
        _login(client, world.tokens["admin"])
        page = client.get(f"/rollouts/{rid}").text
        assert 'id="offline">passed every offline gate (optimization job' in page
        etag = client.get(f"/v1/rollouts/{rid}", headers=world.auth("admin")).headers["etag"]
        assert client.post(f"/v1/rollouts/{rid}/promote", headers={**world.auth("admin"), "If-Match": etag}
                           ).status_code == 200
        overview = client.get("/").text
        assert _serving_row(overview, "digits").startswith(
            f"digits int8 revision 2 0 s ago promoted by rollout {rid} (token:admin-1)")
        assert "Serve fp32 again" in overview
        stale = client.post("/models/digits/actions/rollback", data={"expected_revision": "1"})
        assert "Not done: model &#39;digits&#39; is at revision 2 (int8), you expected revision 1" in stale.text
        done = client.post("/models/digits/actions/rollback", data={"expected_revision": "2"})
        assert "Done: digits is served by fp32 again (revision 3)." in done.text
        assert "rolled back by token:admin-1: from the status page" in _serving_row(done.text, "digits")
    assert dict(world.channel.get_splits()["digits"].weights) == {"fp32": 100.0}
    with world.client() as client:
        _login(client, world.tokens["operator"])
        overview = client.get("/").text
        assert "Serve int8 again" not in overview  # undo is an admin's
        refused = client.post("/models/digits/actions/rollback", data={"expected_revision": "3"})
        assert "Not done: this needs the admin role" in refused.text


def test_the_rollout_page_shows_a_forced_candidates_offline_verdict(world: World) -> None:
    drop_reports(world)
    rid = start_rollout(world, "pages", force=True)
    with world.client() as client:
        _login(client, world.tokens["viewer"])
        page = client.get(f"/rollouts/{rid}").text
    assert ('id="offline">no offline report (registered by hand); rolled out with force by token:operator-1'
            in page)
