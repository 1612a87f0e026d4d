"""The demo's whole flow, shortened by settings (shorter steps, fewer timing runs), not by faking anything.

Real digits model, real optimizer jobs, real router and controller in one process, real traffic over
HTTP with late labels: the controller must promote the good candidate and roll back the over-pruned one,
each with the statistics' evidence recorded.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from modelroll.db import RolloutEventRow, RolloutRow
from modelroll.settings import Settings
from modelroll.types import Step
from modelroll_app import demo

pytestmark = pytest.mark.timeout(600)

QUICK = demo.DemoConfig(
    batch_sizes=(1,),
    steps=(Step(0, shadow=True, min_duration_s=2, min_samples=200), Step(50, min_duration_s=2, min_samples=200),
           Step(100, min_duration_s=2, min_samples=200)),
    rollout_timeout_s=180,
)


def test_demo_promotes_the_good_candidate_and_rolls_back_the_over_pruned_one(tmp_path: Path) -> None:
    base = Settings(home=tmp_path / "home", eval_max_time_s=2.0, eval_min_runs=30, router_memory_interval_s=0.5)
    settings = demo.demo_settings(base, router_port=0, controller_port=0)
    out = io.StringIO()
    outcome = demo.run(settings, QUICK, Console(file=out, width=200))
    printed = out.getvalue()

    phases = sorted(d.phase for d in outcome.decisions)
    assert phases == ["promoted", "rolled_back"], printed
    assert outcome.failed_requests == 0, printed
    assert outcome.labels_joined > 0
    assert "What the controller decided, and why" in printed

    engine = create_engine(settings.effective_database_url)
    with Session(engine) as session:
        for rollout in session.scalars(select(RolloutRow)):
            final = session.scalars(select(RolloutEventRow).where(RolloutEventRow.rollout_id == rollout.id)
                                    .order_by(RolloutEventRow.seq.desc())).first()
            assert final is not None and final.to_phase == rollout.phase
            results = {r["criterion"]: r for r in final.evidence["results"]}
            if rollout.phase == "rolled_back":
                assert rollout.spec["candidate"].startswith("prune0.6"), printed
                failing = [name for name, r in results.items() if r["verdict"] == "fail"]
                assert failing and all(name in final.reason for name in failing), printed
                accuracy = results["accuracy"]["estimate"]
                assert accuracy is None or accuracy < 0, printed  # over-pruned: less accurate on the live labels
            else:
                assert rollout.spec["candidate"].startswith("prune0.5-distill")
                assert {r["verdict"] for r in results.values()} == {"pass"}
                assert results["latency_p50"]["ci_high"] <= 0.5
                assert results["memory"]["ci_high"] <= 0.4
    engine.dispose()
