"""Status page shaping of memory: exact readings are charted, runners that cannot measure are named, never drawn."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from controller.charts import interval_chart, line_chart
from controller.status_view import criterion_cards, series_from_windows
from modelroll.db import SampleWindowRow


def window(variant: str, start: float, data: dict[str, Any]) -> SampleWindowRow:
    return SampleWindowRow(rollout_id=1, variant=variant, step_index=0, window_start=datetime.fromtimestamp(start, UTC),
                           window_end=datetime.fromtimestamp(start + 10, UTC), requests=0, errors=0, labelled=0,
                           correct=0, data=data)


def test_memory_chart_draws_exact_readings_only_and_names_runners_that_cannot_measure() -> None:
    legacy = window("fp32", 0, {"memory_bytes": [100 * 2**20]})  # written before exact readings: maybe an estimate
    inline = window("int8", 10, {"memory_exact_bytes": [], "memory_unmeasured": {"inline": 4}})
    series = series_from_windows([legacy, inline])
    assert not series.memory_mib and series.memory_note == "not measurable here (inline runner)"
    chart = line_chart("Runner memory per variant (exact readings)", series.memory_mib, str, empty=series.memory_note)
    assert chart == ('<p class="nodata">Runner memory per variant (exact readings): '
                     "not measurable here (inline runner)</p>")
    exact = series_from_windows([window("fp32", 0, {"memory_exact_bytes": [2**20, 3 * 2**20]}), inline])
    assert [p.value for p in exact.memory_mib["fp32"]] == [3.0] and exact.memory_note == ""
    assert "no data yet" in line_chart("Runner memory", {}, str)


def test_cards_say_offline_or_not_measurable_and_old_evaluations_read_as_live() -> None:
    base = {"criterion": "memory", "verdict": "pass", "message": "m", "estimate": 0.25, "ci_low": None,
            "ci_high": None, "threshold": 0.4, "baseline_value": 80 * 2**20, "candidate_value": 20 * 2**20,
            "baseline_n": 1, "candidate_n": 1, "method": "offline: ..."}
    offline, unmeasurable, old = criterion_cards([
        {**base, "source": "offline"},
        {**base, "verdict": "undecided", "source": "unmeasurable", "baseline_value": None, "candidate_value": None,
         "baseline_n": 0, "candidate_n": 0},
        {k: v for k, v in base.items() if k != "method"} | {"baseline_n": 40, "candidate_n": 41}])  # no "source"
    assert (offline.badge, offline.baseline_value, offline.candidate_value) == ("offline", "80.0 MiB (offline)",
                                                                               "20.0 MiB (offline)")
    assert offline.samples == "the optimizer's figures (offline), no live readings"
    assert (unmeasurable.badge, unmeasurable.baseline_value, unmeasurable.samples) == (
        "not measurable here", "-", "0 baseline, 0 candidate exact readings")
    assert (old.source, old.badge, old.samples) == ("live", "", "40 baseline, 41 candidate exact readings")


def test_an_offline_figure_is_described_as_a_figure_not_an_interval() -> None:
    svg = str(interval_chart(None, 0.25, None, 0.4, True, lambda v: f"{v:.2f}×"))
    assert 'aria-label="figure 0.25×, needs ≤ 0.40×"' in svg
    assert 'aria-label="interval [0.20×, 0.30×], needs ≤ 0.40×"' in str(
        interval_chart(0.2, 0.25, 0.3, 0.4, True, lambda v: f"{v:.2f}×"))
