"""`modelroll optimize` in embedded mode (SQLite, in-process worker): the report, and bad input that leaves
nothing behind — one `error:` line, exit code 2, no traceback, no model or job row written."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from modelroll_app.main import app
from tests.integration.test_worker import tiny_mlp
from tests.tiny_onnx import write_unsorted_graph

QUICK = {"MODELROLL_EVAL_MAX_TIME_S": "0.3", "MODELROLL_EVAL_MIN_RUNS": "20"}


class Cli:
    def __init__(self, home: Path) -> None:
        self.home = home

    def __call__(self, *args: str, **env: str) -> Result:
        environment: dict[str, str | None] = {"MODELROLL_HOME": str(self.home), "MODELROLL_DATABASE_URL": None,
                                              "MODELROLL_REDIS_URL": None, "MODELROLL_ARTIFACTS_DIR": None,
                                              "MODELROLL_LOG_LEVEL": "WARNING", **QUICK, **env}
        result = CliRunner().invoke(app, list(args), env=environment)
        for text in (result.stdout, result.stderr):
            assert "Traceback" not in text, text
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    def rows(self, table: str) -> int:
        db = self.home / "modelroll.db"
        if not db.exists():
            return 0
        with sqlite3.connect(db) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.fixture()
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")


@pytest.fixture()
def model(tmp_path: Path) -> tuple[Path, Path]:
    tiny_mlp(tmp_path / "tiny.onnx")
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "eval.npz", x=rng.random((48, 64), dtype=np.float32), labels=rng.integers(0, 10, 48))
    return tmp_path / "tiny.onnx", tmp_path / "eval.npz"


def test_optimize_prints_the_report_and_report_reprints_it(cli: Cli, model: tuple[Path, Path]) -> None:
    onnx_path, eval_path = model
    result = cli("optimize", str(onnx_path), "--eval-data", str(eval_path), "-t", "int8", "--batch-sizes", "1",
                 "--gates", "latency=0.1,memory=0.1,accuracy=0.05", "--json")
    report = json.loads(result.stdout)
    # 0 when a candidate passes every gate, 5 when the job ran and none does (a pipeline stops there)
    assert result.exit_code == (0 if report["candidates"][0]["passed"] else 5), result.stderr
    assert report["status"] == "succeeded" and report["model"] == "tiny" and report["baseline"] == "baseline"
    assert report["criteria"]["latency_reduction_min"] == 0.1
    (candidate,) = report["candidates"]
    assert candidate["status"] == "measured" and candidate["variant"] == f"int8-j{report['job_id']}"
    assert {row["metric"] for row in candidate["table"]} >= {"size on disk", "latency p50, batch 1", "accuracy",
                                                            "memory (model), batch 1", "CPU per request, batch 1"}
    assert candidate["gates"]["latency_p50_b1"]["threshold"] == pytest.approx(0.9)
    markdown = cli("optimize", "report", str(report["job_id"]), "--markdown")
    assert markdown.exit_code == 0
    assert "| metric | original | optimized | improvement | gate |" in markdown.stdout
    table = cli("optimize", "report", str(report["job_id"]))
    assert "int8 vs baseline" in table.stdout and f"job {report['job_id']}: succeeded" in table.stdout


def test_optimize_exits_5_when_the_job_runs_but_no_candidate_passes(cli: Cli, model: tuple[Path, Path]) -> None:
    onnx_path, eval_path = model
    result = cli("optimize", str(onnx_path), "--eval-data", str(eval_path), "-t", "int8", "--batch-sizes", "1",
                 "--gates", "latency=0.99", "--json")
    report = json.loads(result.stdout)
    assert report["status"] == "succeeded" and not report["candidates"][0]["passed"]
    assert result.exit_code == 5, result.stderr


def _refused(cli: Cli, result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert cli.rows("optimization_jobs") == 0 and cli.rows("models") == 0 and cli.rows("variants") == 0


def test_a_file_that_is_not_onnx_is_refused(cli: Cli, tmp_path: Path, model: tuple[Path, Path]) -> None:
    (tmp_path / "notes.onnx").write_text("not a model")
    _refused(cli, cli("optimize", str(tmp_path / "notes.onnx"), "--eval-data", str(model[1])),
             "is not a valid ONNX model")


def test_a_model_failing_the_onnx_checker_is_refused(cli: Cli, tmp_path: Path, model: tuple[Path, Path]) -> None:
    write_unsorted_graph(tmp_path / "broken.onnx")
    _refused(cli, cli("optimize", str(tmp_path / "broken.onnx"), "--eval-data", str(model[1])),
             "is not a valid ONNX model")


def test_eval_data_of_the_wrong_shape_is_refused(cli: Cli, tmp_path: Path, model: tuple[Path, Path]) -> None:
    np.savez(tmp_path / "wrong.npz", x=np.zeros((8, 32), np.float32))
    _refused(cli, cli("optimize", str(model[0]), "--eval-data", str(tmp_path / "wrong.npz")),
             "'x' has shape [8, 32]", "expects ['?', 64]")


def test_an_unknown_technique_is_refused(cli: Cli, model: tuple[Path, Path]) -> None:
    _refused(cli, cli("optimize", str(model[0]), "--eval-data", str(model[1]), "-t", "int4"),
             "unknown technique 'int4'", "accepted")


def test_a_gate_outside_its_range_is_refused(cli: Cli, model: tuple[Path, Path]) -> None:
    _refused(cli, cli("optimize", str(model[0]), "--eval-data", str(model[1]), "--gates", "memory=1.2"),
             "memory_reduction_min must be in [0.0, 1.0)")


def test_pruning_without_a_torch_model_is_refused(cli: Cli, model: tuple[Path, Path]) -> None:
    _refused(cli, cli("optimize", str(model[0]), "--eval-data", str(model[1]), "-t", "prune:0.5,int8"),
             "need the torch model", "ONNX file only")


def test_a_model_without_eval_data_is_refused(cli: Cli, model: tuple[Path, Path]) -> None:
    _refused(cli, cli("optimize", str(model[0])), "has no eval set of its own", "give eval_data", "--eval-data")


def test_no_wait_needs_a_shared_queue(cli: Cli, model: tuple[Path, Path]) -> None:
    _refused(cli, cli("optimize", str(model[0]), "--eval-data", str(model[1]), "--no-wait"),
             "--no-wait needs a shared queue")


def test_report_of_an_unknown_job_is_not_found(cli: Cli) -> None:
    result = cli("optimize", "report", "99")
    assert result.exit_code == 1 and "optimization job 99 does not exist" in result.stderr


def test_worker_needs_redis(cli: Cli) -> None:
    result = cli("worker")
    assert result.exit_code == 2 and "needs MODELROLL_REDIS_URL" in result.stderr


def test_optimize_list_shows_jobs_newest_first_with_the_candidates_that_pass(cli: Cli,
                                                                            model: tuple[Path, Path]) -> None:
    assert "no optimization job yet" in cli("optimize", "list").stdout
    onnx_path, eval_path = model
    done = cli("optimize", str(onnx_path), "--eval-data", str(eval_path), "-t", "int8", "--batch-sizes", "1",
               "--gates", "latency=0.99")
    assert done.exit_code == 5
    listed = json.loads(cli("optimize", "list", "--json").stdout)
    assert [(j["id"], j["model"], j["status"], j["techniques"], j["passing"]) for j in listed] == [
        (1, "tiny", "succeeded", ["int8"], [])]
    assert "job 1  tiny  succeeded  int8  passing: none" in cli("optimize", "list").stdout
    missing = cli("optimize", "report", "7")
    assert missing.exit_code == 1 and "list them with `modelroll optimize list`" in missing.stderr
