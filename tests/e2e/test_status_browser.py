"""The status pages in a real browser: they show what the database holds, hide actions from viewers,
pause for an operator after a confirmation, work from the keyboard and refresh themselves.

Served by uvicorn over real PostgreSQL and Redis; driven by Debian's chromium through Playwright.
Every page visited must log no console error (checked by the `browsing` fixture).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Dialog, Page, expect
from sqlalchemy import select

from modelroll.db import CandidateReportRow, RolloutEventRow, RolloutRow
from modelroll.report_table import fmt_ms, stored_table_lines
from tests.e2e.conftest import Browsing, StatusSite

pytestmark = pytest.mark.timeout(120)

MAX_TABS = 12
CHART_TITLES = ["Latency p50 per variant", "Latency p95 per variant", "Error rate per variant",
                "Accuracy from feedback per variant", "Runner memory per variant (exact readings)"]


def login(page: Page, site: StatusSite, role: str, next_path: str) -> None:
    """Log in through the /login form, as a person would, and land on `next_path`."""
    page.goto(f"{site.url}/login?next={next_path}")
    page.get_by_label("Token").fill(site.world.tokens[role])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{site.url}{next_path}")


def stored(site: StatusSite) -> tuple[RolloutRow, list[RolloutEventRow]]:
    with site.world.session_factory() as session:
        row = session.get(RolloutRow, site.rollout_id)
        assert row is not None
        events = list(session.scalars(select(RolloutEventRow).where(RolloutEventRow.rollout_id == row.id)))
        session.expunge_all()
        return row, events


def wait_for_phase(site: StatusSite, phase: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (seen := stored(site)[0].phase) != phase:
        assert time.monotonic() < deadline, f"rollout {site.rollout_id} is still {seen!r} after {timeout_s} s"
        time.sleep(0.05)


def screenshots(page: Page, folder: Path, name: str) -> None:
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.screenshot(path=str(folder / f"{name}-{scheme}.png"), full_page=True)
    page.emulate_media(color_scheme="light")


def check_report(page: Page, site: StatusSite) -> None:
    """The optimizer's table shows the stored figures, the kernel's lines all there, and each gate's stored verdict."""
    with site.world.session_factory() as session:
        report = session.scalars(select(CandidateReportRow).order_by(CandidateReportRow.id.desc())).first()
        assert report is not None  # the newest: the page shows the candidate's newest report
    base, cand, gates = report.baseline_figures, report.candidate_figures, report.gates
    table = page.locator("#report tbody")
    expect(table.locator("tr")).to_have_count(len(stored_table_lines(base, cand, gates)))

    def verdict(gate: dict[str, Any]) -> str:
        return f"{'pass' if gate['passed'] else 'FAIL'} (≤ {gate['threshold']:.2f})"

    for bl, cl in zip(base["latency"], cand["latency"], strict=True):
        for which in ("p50", "p95"):
            line = table.locator("tr", has_text=f"latency {which}, batch {bl['batch_size']}")
            gate = gates[f"latency_{which}_b{bl['batch_size']}"]
            expect(line.locator("td")).to_have_text([
                f"latency {which}, batch {bl['batch_size']}", fmt_ms(bl[which + "_ms"]),
                fmt_ms(cl[which + "_ms"]), re.compile(rf"^{(1 - gate['value']) * 100:.1f}% lower"), verdict(gate)])
    for bm in base["memory"]:
        gate = gates[f"memory_b{bm['batch_size']}"]
        line = table.locator("tr", has_text=f"memory (model), batch {bm['batch_size']}")
        expect(line.locator("td").nth(4)).to_have_text(verdict(gate))
        expect(line.locator(".verdict")).to_have_attribute("title", gate["message"])  # hover: the figures
    assert {g["passed"] for g in gates.values()} == {True, False}  # the seeded report has both verdicts
    accuracy = table.locator("tr", has_text=re.compile(r"^\s*accuracy"))
    expect(accuracy).to_contain_text(f"{base['quality']['accuracy'] * 100:.2f}%")
    expect(accuracy).to_contain_text(f"{cand['quality']['accuracy'] * 100:.2f}%")


def test_viewer_sees_the_stored_values_and_no_buttons(status_site: StatusSite, browsing: Browsing,
                                                      artifacts_dir: Path) -> None:
    page, site = browsing.page, status_site
    row, events = stored(site)
    assert row.phase == "shadow" and row.evaluation["results"] and events  # what the fixture seeded
    steps_total = len(row.spec["steps"])
    split = [f"{name} {float(pct):g} %" for name, pct in row.weights.items()]
    assert split == ["fp32 100 %", "int8 0 %"]

    login(page, site, "viewer", "/")
    line = page.locator(f'tr[data-rollout="{site.rollout_id}"]')
    expect(line.locator(".phase")).to_have_text("in shadow (mirrored, not served)")
    expect(line.locator(".phase")).to_have_class(re.compile(r"\bphase-shadow\b"))
    expect(line.locator("td.split")).to_have_text(" / ".join(split) + " (+ int8 mirrored)")
    expect(line).to_contain_text(f"step {row.step_index + 1} of {steps_total} (shadow)")
    expect(line.locator("td.why")).to_have_text(row.last_reason)
    screenshots(page, artifacts_dir, "overview")

    line.get_by_role("link", name=str(site.rollout_id)).click()
    page.wait_for_url(f"{site.url}/rollouts/{site.rollout_id}")
    expect(page.locator("#phase")).to_have_text("in shadow (mirrored, not served)")
    expect(page.locator("#split")).to_have_text(" / ".join(split) + " (+ int8 mirrored)")
    expect(page.locator("#step")).to_have_text(f"step {row.step_index + 1} of {steps_total} (shadow)")
    expect(page.locator("#why")).to_contain_text(row.last_reason)
    for result in row.evaluation["results"]:
        card = page.locator(f'article[data-criterion="{result["criterion"]}"]')
        expect(card).to_be_visible()
        expect(card).to_contain_text(result["message"])
        expect(card.locator("h3 .verdict")).to_have_text(result["verdict"])
        expect(card.locator("svg.interval line.threshold")).to_have_count(1)
    history = page.locator("#events")
    for event in events:  # each event as a sentence: "The controller started at ...", "Created by ..."
        expect(history).to_contain_text(re.compile(re.escape(event.reason), re.IGNORECASE))
    assert [int(v) for v in history.locator(":scope > li").evaluate_all("lis => lis.map(li => li.value)")] \
        == [e.seq for e in reversed(events)]  # numbered by the event's own sequence, newest first
    expect(page.locator("figure figcaption.chart-title")).to_have_text(CHART_TITLES)
    assert page.locator("svg.chart polyline").count() >= 2, "the charts over time drew no line"
    check_report(page, site)
    expect(page.locator('form[action*="/actions/"]')).to_have_count(0)
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    screenshots(page, artifacts_dir, "rollout-viewer")


def test_operator_pauses_after_confirming_and_a_dismissed_confirm_sends_nothing(
        status_site: StatusSite, browsing: Browsing, artifacts_dir: Path) -> None:
    page, site = browsing.page, status_site
    path = f"/rollouts/{site.rollout_id}"
    login(page, site, "operator", path)
    posted: list[str] = []
    page.on("request", lambda request: posted.append(request.url) if request.method == "POST" else None)

    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Abort").click()
    expect(page.get_by_role("button", name="Abort")).to_be_visible()
    assert posted == [] and stored(site)[0].phase == "shadow"  # no confirmation, no request

    messages: list[str] = []

    def accept(dialog: Dialog) -> None:
        messages.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.get_by_role("button", name="Pause").click()
    wait_for_phase(site, "paused")
    assert messages == [f"Pause rollout {site.rollout_id} of digits?"]
    assert posted == [f"{site.url}{path}/actions/pause"]
    page.wait_for_url(re.compile(rf"{re.escape(site.url + path)}\?done=pause$"))
    expect(page.locator("#phase")).to_have_text("paused")
    expect(page.locator("#phase")).to_have_class(re.compile(r"\bphase-paused\b"))
    expect(page.get_by_role("status")).to_have_text("Done: pause.")
    events = stored(site)[1]
    assert events[-1].kind == "paused" and events[-1].actor == "token:operator-1"
    expect(page.locator("#events li").first).to_contain_text(re.compile(re.escape(events[-1].reason), re.I))
    screenshots(page, artifacts_dir, "rollout-operator-paused")


def test_pause_button_is_reachable_with_tab_and_shows_its_focus(status_site: StatusSite,
                                                                 browsing: Browsing) -> None:
    page, site = browsing.page, status_site
    login(page, site, "operator", f"/rollouts/{site.rollout_id}")
    pause = page.get_by_role("button", name="Pause")
    presses = 0
    while not pause.evaluate("button => button === document.activeElement"):
        if presses == MAX_TABS:
            focused = page.evaluate("document.activeElement && document.activeElement.outerHTML.slice(0, 120)")
            pytest.fail(f"Pause never took the focus in {MAX_TABS} tabs; focus is on {focused}")
        page.keyboard.press("Tab")
        presses += 1
    assert presses <= 6, f"Pause took {presses} tabs: the actions should come right after the header"
    outline = pause.evaluate("b => getComputedStyle(b).outlineStyle + ' ' + getComputedStyle(b).outlineWidth")
    assert not outline.startswith("none") and outline != "solid 0px", f"focused Pause shows no outline: {outline}"


def test_page_refreshes_itself_and_shows_a_change_made_elsewhere(status_site: StatusSite,
                                                                 browsing: Browsing) -> None:
    page, site = browsing.page, status_site
    login(page, site, "viewer", f"/rollouts/{site.rollout_id}")
    expect(page.locator("#phase")).to_have_text("in shadow (mirrored, not served)")
    version = stored(site)[0].version
    with site.world.client() as client:  # an operator pauses through the API, not through this page
        r = client.post(f"/v1/rollouts/{site.rollout_id}/pause", json={"reason": "paused by the API"},
                        headers={**site.world.auth("operator"), "If-Match": f'"{version}"'})
        assert r.status_code == 200, r.text
    expect(page.locator("#phase")).to_have_text("in shadow (mirrored, not served)")  # nothing moved yet
    with page.expect_navigation():
        browsing.context.clock.run_for(5_000)  # the page's refresh interval
    expect(page.locator("#phase")).to_have_text("paused")
    expect(page.locator("#events")).to_contain_text("paused by the API")
