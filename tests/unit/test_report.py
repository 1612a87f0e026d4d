"""The report's gates and its three renderings (JSON, Markdown, rich) from hand-made figures."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from rich.console import Console

from modelroll.figures import Figures, LatencyFigures, MemoryFigures, QualityFigures
from modelroll.types import Criteria
from optimizer.report import (
    CandidateReport,
    JobReport,
    evaluate_gates,
    job_report_from_dict,
    lines,
    summary,
    to_markdown,
    to_rich,
)

MIB = 2**20


def figures(*, p50: float, p95: float, memory_mib: float, size_mib: float, accuracy: float,
            memory_32_mib: float | None = None) -> Figures:
    return Figures(
        size_bytes=int(size_mib * MIB),
        latency=(LatencyFigures(1, p50, p95, p95 * 1.2, p50 * 1.05, p50 * 0.98, 300, True),
                 LatencyFigures(32, p50 * 20, p95 * 20, p95 * 24, p50 * 21, p50 * 19.5, 100, True)),
        memory=(MemoryFigures(1, int(memory_mib * MIB), int((memory_mib + 50) * MIB)),
                MemoryFigures(32, int((memory_32_mib or memory_mib) * MIB),
                              int(((memory_32_mib or memory_mib) + 50) * MIB))),
        quality=QualityFigures("accuracy", 360, accuracy=accuracy, top1_agreement=1.0),
        runtime_bytes=50 * MIB, load_ms=12.0, threads=1, onnxruntime="1.32.0",
    )


BASE = figures(p50=4.0, p95=5.0, memory_mib=100, size_mib=90, accuracy=0.97)


def test_candidate_meeting_every_default_gate_passes() -> None:
    cand = figures(p50=1.6, p95=2.0, memory_mib=30, size_mib=23, accuracy=0.962)
    gates = evaluate_gates(BASE, cand, Criteria())
    assert {g.name for g in gates} == {"latency_p50_b1", "latency_p95_b1", "latency_p50_b32", "latency_p95_b32",
                                       "memory_b1", "memory_b32", "accuracy"}
    assert all(g.passed for g in gates), [g.message for g in gates if not g.passed]
    p50 = next(g for g in gates if g.name == "latency_p50_b1")
    assert p50.value == pytest.approx(0.4) and p50.threshold == pytest.approx(0.5)


def test_each_gate_fails_on_its_own_figure() -> None:
    slow = figures(p50=2.4, p95=2.0, memory_mib=30, size_mib=23, accuracy=0.97)
    fat = figures(p50=1.6, p95=2.0, memory_mib=30, memory_32_mib=45, size_mib=23, accuracy=0.97)
    wrong = figures(p50=1.6, p95=2.0, memory_mib=30, size_mib=23, accuracy=0.949)
    failed = {name: {g.name for g in evaluate_gates(BASE, c, Criteria()) if not g.passed}
              for name, c in (("slow", slow), ("fat", fat), ("wrong", wrong))}
    assert failed == {"slow": {"latency_p50_b1", "latency_p50_b32"}, "fat": {"memory_b32"}, "wrong": {"accuracy"}}


def test_gate_thresholds_follow_the_criteria() -> None:
    cand = figures(p50=3.0, p95=3.5, memory_mib=80, size_mib=80, accuracy=0.90)
    lenient = Criteria(latency_reduction_min=0.2, memory_reduction_min=0.1, accuracy_drop_max=0.1)
    assert all(g.passed for g in evaluate_gates(BASE, cand, lenient))
    assert not any(g.passed for g in evaluate_gates(BASE, cand, Criteria()))


def test_accuracy_drop_is_in_points_and_named_in_the_message() -> None:
    cand = figures(p50=1.0, p95=1.0, memory_mib=10, size_mib=10, accuracy=0.94)
    gate = next(g for g in evaluate_gates(BASE, cand, Criteria()) if g.name == "accuracy")
    assert gate.value == pytest.approx(0.03) and not gate.passed
    assert "3.00 points" in gate.message


def test_zero_baseline_memory_fails_the_gate_with_a_reason_instead_of_dividing_by_zero() -> None:
    base = figures(p50=4.0, p95=5.0, memory_mib=0, size_mib=90, accuracy=0.97)
    gate = next(g for g in evaluate_gates(base, BASE, Criteria()) if g.name == "memory_b1")
    assert not gate.passed and "no ratio" in gate.message


def _job() -> JobReport:
    good = figures(p50=1.6, p95=2.0, memory_mib=30, size_mib=23, accuracy=0.962)
    slow = figures(p50=3.9, p95=5.0, memory_mib=30, size_mib=23, accuracy=0.97)
    crit = Criteria()
    return JobReport(job_id=7, model="digits", baseline="baseline", criteria=crit, status="succeeded", candidates=(
        CandidateReport("int8", {"technique": "int8-dynamic"}, "measured", BASE, good,
                        evaluate_gates(BASE, good, crit), variant="int8-j7"),
        CandidateReport("slow", {"technique": "prune", "sparsity": 0.3}, "measured", BASE, slow,
                        evaluate_gates(BASE, slow, crit), variant="slow-j7"),
        CandidateReport("broken", {"technique": "int8-static"}, "failed", BASE, None,
                        error="measurement process killed by SIGKILL before writing its figures"),
    ))


def test_table_has_the_research_report_columns_and_improvements() -> None:
    rows = {line.metric: line for line in lines(_job().candidates[0])}
    assert rows["size on disk"].original == "90.0 MiB" and rows["size on disk"].optimized == "23.0 MiB"
    assert rows["size on disk"].improvement.startswith("74.4% smaller")
    assert rows["latency p50, batch 1"].improvement.startswith("60.0% lower")
    assert rows["latency p50, batch 1"].gate.startswith("pass")
    assert rows["accuracy"].improvement == "-0.80 points"
    assert rows["CPU share while timed, batch 1"].original == "93%"
    assert rows["CPU share while timed, batch 1"].improvement == ""
    assert lines(_job().candidates[2]) == []


def test_json_round_trips_and_lists_what_passed() -> None:
    job = _job()
    data = json.loads(json.dumps(job.to_dict()))
    assert data["passed"] == ["int8"]
    assert data["candidates"][2]["error"].startswith("measurement process killed")
    assert data["candidates"][0]["gates"]["memory_b1"]["passed"] is True
    again = job_report_from_dict(data)
    assert again == job
    assert summary(again.candidates) is not None and summary(again.candidates).name == "int8"  # type: ignore[union-attr]


def test_markdown_and_rich_show_every_candidate_with_its_verdict() -> None:
    md = to_markdown(_job())
    assert "| metric | original | optimized | improvement | gate |" in md
    assert "passes every gate" in md and "fails: latency_p50_b1" in md and "FAILED: measurement process" in md
    assert "`technique=prune, sparsity=0.3`" in md
    console = Console(width=200, record=True)
    for table in to_rich(_job()):
        console.print(table)
    text = console.export_text()
    assert text.count("metric") == 3 and "60.0% lower" in text


def test_embedding_quality_gate_reads_the_mean_cosine_and_shows_nn_agreement_beside() -> None:
    cand_quality = QualityFigures("cosine_mean", 512, cosine_mean=0.9927, nn_agreement=0.83)
    cand = figures(p50=1.6, p95=2.0, memory_mib=30, size_mib=23, accuracy=0.0)
    base = replace(BASE, quality=QualityFigures("cosine_mean", 512, cosine_mean=1.0, nn_agreement=1.0))
    cand = replace(cand, quality=cand_quality)
    gate = next(g for g in evaluate_gates(base, cand, Criteria(accuracy_drop_max=0.01)) if g.name == "accuracy")
    assert gate.passed and gate.value == pytest.approx(0.0073)
    assert not next(g for g in evaluate_gates(base, cand, Criteria(accuracy_drop_max=0.005))
                    if g.name == "accuracy").passed
    rows = {line.metric: line for line in lines(CandidateReport("int8", {}, "measured", base, cand,
                                                                 evaluate_gates(base, cand, Criteria())))}
    assert rows["cosine mean with baseline"].optimized == "0.9927"
    assert rows["cosine mean with baseline"].gate.startswith("pass")
    assert rows["nn agreement with baseline"].improvement == "-17.00 points"
    assert rows["nn agreement with baseline"].gate == ""
