"""The Grafana dashboard the chart ships: valid PromQL, only metrics the services export, the panels on-call needs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests import helm_tools

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "modelroll"
DASHBOARD = CHART / "dashboards" / "modelroll.json"
_DECLARATION = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|CounterMetricFamily|GaugeMetricFamily|HistogramMetricFamily)"
    r"\(\s*\"(modelroll_\w+)\"")


def exported_metrics() -> set[str]:
    """Series names the services' code declares, as Prometheus sees them (_total, _bucket...)."""
    names: set[str] = set()
    for folder in ("modelroll", "router", "controller", "optimizer"):
        for source in (ROOT / folder).rglob("*.py"):
            for kind, name in _DECLARATION.findall(source.read_text()):
                if kind.startswith("Counter"):
                    names.add(name.removesuffix("_total") + "_total")
                elif kind.startswith(("Histogram", "Summary")):
                    names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
                else:
                    names.add(name)
    return names


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def expressions(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p["targets"]]


def metric_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in re.findall(r"\bmodelroll_\w+", expr)}


def test_every_query_parses_with_prometheus_own_promql_grammar() -> None:
    try:
        assert helm_tools.promql_errors(["sum(rate(x[5m])"]), "the parser must refuse a broken query"
        # Grafana replaces $__rate_interval before Prometheus sees the query; label matchers take $vars as text.
        exprs = [e.replace("$__rate_interval", "1m") for e in expressions(dashboard())]
        variables = [v["query"]["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]
        selectors = [re.fullmatch(r"label_values\((.+), \w+\)", q).group(1) for q in variables]  # type: ignore[union-attr]
        errors = helm_tools.promql_errors(exprs + selectors)
    except helm_tools.ToolUnavailable as exc:
        pytest.skip(str(exc))
    assert errors == [], [(exprs + selectors)[i] + " -> " + message for i, message in errors]


def test_dashboard_reads_only_metrics_the_services_export() -> None:
    exported = exported_metrics()
    used = metric_names(expressions(dashboard()))
    unknown = used - exported
    assert not unknown, f"not exported by any service: {sorted(unknown)}"
    # The exported series on-call reads, each on some panel.
    assert {"modelroll_requests_total", "modelroll_request_duration_seconds_bucket", "modelroll_fallbacks_total",
            "modelroll_runner_memory_bytes", "modelroll_variant_weight_pct", "modelroll_rollout_weight_pct",
            "modelroll_rollout_phase", "modelroll_controller_leader", "modelroll_samples_dropped_total",
            "modelroll_model_latency_seconds_bucket", "modelroll_feedback_total",
            "modelroll_feedback_items_total"} <= used


def test_panels_cover_latency_quantiles_errors_accuracy_memory_weights_fallbacks_and_phase() -> None:
    board = dashboard()
    by_title = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels(board)}

    def panel(word: str) -> str:
        found = [expr for title, expr in by_title.items() if word.lower() in title.lower()]
        assert found, f"no panel titled with {word!r}: {sorted(by_title)}"
        return " ".join(found)

    for quantile in ("histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,"):
        assert quantile in panel("latency")
    assert "by (model, variant, le)" in panel("latency")
    assert 'code=~"5.."' in panel("error rate")
    # Accuracy from the join counters (correct / joined), summed over routers: a per-pod ratio would not add up.
    assert 'modelroll_feedback_total{' in panel("accuracy") and 'result="correct"' in panel("accuracy")
    assert "modelroll_model_latency_seconds_bucket" in panel("model latency")
    assert "modelroll_runner_memory_bytes" in panel("memory")
    assert "modelroll_variant_weight_pct" in panel("split")
    assert "modelroll_fallbacks_total" in panel("fallbacks")
    assert "modelroll_rollout_phase" in panel("phase")
    for expr in expressions(board):
        if "modelroll_controller" not in expr and "modelroll_worker" not in expr and "samples_" not in expr \
                and "modelroll_live_channel" not in expr and "decisions" not in expr \
                and "feedback_items" not in expr:
            assert 'model=~"$model"' in expr, f"per-model panel ignores the model picker: {expr}"


def test_panels_use_the_datasource_variable_and_do_not_overlap() -> None:
    board = dashboard()
    names = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace", "model", "status_page"} <= names
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["description"], p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
    for expr in expressions(board):
        for var in re.findall(r"\$(\w+)", expr):
            assert var in names or var.startswith("__"), f"${var} is not a dashboard variable"


@pytest.mark.parametrize(("values", "status_page"), [
    ([], "http://mr-modelroll-controller.ml.svc:8081/"),
    (["-f", str(CHART / "ci" / "monitoring-values.yaml")], "https://modelroll.example.com/"),
])
def test_chart_ships_the_dashboard_linked_to_the_status_page(values: list[str], status_page: str) -> None:
    try:
        helm = helm_tools.helm_binary()
    except helm_tools.ToolUnavailable as exc:
        pytest.skip(str(exc))
    docs = helm_tools.render(helm, CHART, "--set", "grafanaDashboard.enabled=true", *values)
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap" and "modelroll.json" in d.get("data", {})]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(config_map["data"]["modelroll.json"])
    [variable] = [v for v in shipped["templating"]["list"] if v["name"] == "status_page"]
    assert variable["query"] == variable["current"]["value"] == status_page
    assert shipped["links"][0]["url"] == "${status_page}"
    # Apart from the link target, the shipped dashboard is the file in the repository.
    assert shipped["panels"] == dashboard()["panels"]
    assert not [d for d in helm_tools.render(helm, CHART) if "modelroll.json" in (d.get("data") or {})]
