"""examples/pipeline.sh against a running embedded instance, as a CI job runs it: a good candidate ends with exit 0
(promoted by the statistics on live traffic); an over-pruned one, let through the optimizer by a loose offline
accuracy gate (as the demo does), is rolled back live on accuracy and the pipeline exits 1."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelroll.artifacts import ArtifactStore
from modelroll.settings import Settings
from modelroll_app import up
from modelroll_app.traffic import Traffic
from tests.e2e.processes import MODELROLL, cli
from tests.e2e.test_lifecycle import _cache

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
ADMIN = "pipeline-admin-secret"
FAST = """apiVersion: modelroll/v1
kind: Rollout
metadata:
  name: digits-candidate
spec:
  model: digits
  candidate: candidate
  steps:
    - {weight_pct: 0, shadow: true, min_duration_s: 5, min_samples: 200}
    - {weight_pct: 50, min_duration_s: 5, min_samples: 200}
    - {weight_pct: 100, min_duration_s: 5, min_samples: 200}
"""


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[tuple[up.Services, dict[str, str]]]:
    from optimizer.baselines import register_builtin
    from optimizer.sources import digits_eval_set

    settings = Settings(home=tmp_path / "home", router_port=0, controller_port=0, admin_token=ADMIN)
    services = up.start(settings)
    with services.session_factory() as session, session.begin():
        register_builtin(session, ArtifactStore.from_settings(settings), "digits", _cache())
    inputs, labels = digits_eval_set()
    traffic = Traffic(services.router_url, "digits", inputs, labels, clients=2, feedback_delay_s=0.5)
    traffic.start()
    env = {**os.environ, "MODELROLL_HOME": str(settings.home), "MODELROLL_TOKEN": ADMIN, "MODELROLL": MODELROLL,
           "MODELROLL_CONTROLLER_URL": services.controller_url, "WAIT_S": "300"}
    try:
        yield services, env
    finally:
        traffic.stop()
        services.stop()


def _pipeline(env: dict[str, str], tmp_path: Path, recipe: str, gates: str = "") -> int:
    spec = tmp_path / "rollout.yaml"
    spec.write_text(FAST)
    done = subprocess.run([str(REPO / "examples" / "pipeline.sh")],
                          env={**env, "RECIPE": recipe, "SPEC": str(spec), "GATES": gates},
                          cwd=tmp_path, capture_output=True, text=True, timeout=800)
    print(done.stderr[-2000:])
    return done.returncode


def test_the_pipeline_promotes_a_good_candidate_and_stops_at_a_bad_one(
        running: tuple[up.Services, dict[str, str]], tmp_path: Path) -> None:
    _, env = running
    assert _pipeline(env, tmp_path, "prune:0.6,int8", gates="accuracy=0.1") == 1  # ~5 points less accurate
    assert "— **rolled back**" in (tmp_path / "modelroll-report.md").read_text()
    assert _pipeline(env, tmp_path, "prune:0.5,distill,int8") == 0
    report = (tmp_path / "modelroll-report.md").read_text()
    assert "— **promoted**" in report and "| metric | original | optimized | improvement | gate |" in report
    rollouts = cli(env, "rollout", "list", "--url", env["MODELROLL_CONTROLLER_URL"])
    assert [r["phase"] for r in rollouts] == ["promoted", "rolled_back"]
