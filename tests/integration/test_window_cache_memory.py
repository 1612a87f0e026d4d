"""The leader's window cache holds an active rollout's windows for its whole life: it must cost the values it keeps
(8 bytes a latency, an id's bytes a label), not a Python object per value (issue 15: the controller grew with every
request it saw, ~1.7 KB each under a shadow step)."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from controller import aggregate
from modelroll.db import SampleWindowRow
from tests.integration.controller_world import World, good_samples

pytestmark = pytest.mark.timeout(120)

WINDOWS = 20  # a side
PER_WINDOW = 300  # shadow requests per window: two latencies and two labels each
OBJECTS_PER_WINDOW = 2048  # bytes: the window's own objects (its arrays' headers, its dicts), whatever it holds


def test_the_window_cache_costs_the_values_it_holds_not_an_object_per_value(world: World) -> None:
    with world.client() as client:
        r = client.post("/v1/rollouts", headers=world.auth("operator"), json={
            "model": "digits", "baseline": "fp32", "candidate": "int8",
            "steps": [{"weight_pct": 0, "shadow": True, "min_duration_s": 600, "min_samples": 100},
                      {"weight_pct": 100, "min_duration_s": 0, "min_samples": 100}]})
        assert r.status_code == 201, r.text
        rollout_id = int(r.json()["id"])
    route = aggregate.Route(rollout_id, "digits", "fp32", "int8", 0)
    t0 = world.clock.now.timestamp() // aggregate.WINDOW_S * aggregate.WINDOW_S
    for k in range(WINDOWS):
        samples = good_samples(rollout_id, 0, PER_WINDOW, t0 + k * aggregate.WINDOW_S, shadow=True, seed=k)
        windows, skipped = aggregate.fold(samples, {rollout_id: route}, {"digits": route})
        assert skipped == 0
        with world.session_factory() as session, session.begin():
            aggregate.store(session, windows, None)
    with world.session_factory() as session:
        rows = aggregate.load_windows(session, rollout_id)
        latencies = sum(len(w.data["latency_ms"]) for w in rows)
        readings = sum(len(w.data["memory_exact_bytes"]) for w in rows)
        # Each id as UTF-8 (ASCII here) + an end byte, as wide as the window's longest; and its label, a bool.
        label_bytes = sum(len(w.data["labels"]) * (max(map(len, w.data["labels"])) + 2) for w in rows)
        labels = sum(len(w.data["labels"]) for w in rows)
    assert len(rows) == 2 * WINDOWS and latencies == labels == 2 * WINDOWS * PER_WINDOW

    cache = aggregate.WindowCache()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with world.session_factory() as session:
            held = cache.load(session, rollout_id)
        gc.collect()
        cost = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(held) == 2 * WINDOWS
    values = 8 * (latencies + readings) + label_bytes
    per_request = cost / (WINDOWS * PER_WINDOW)
    print(f"\nwindow cache: {cost / 1024:.0f} KiB for {WINDOWS * PER_WINDOW} shadow requests "
          f"({per_request:.0f} B each; their values alone: {values / 1024:.0f} KiB)")
    assert cost <= values + OBJECTS_PER_WINDOW * len(held), \
        f"the cache holds {cost} bytes for {values} bytes of values in {len(held)} windows"
    assert sum(w.nbytes for w in held) == values
    # What it holds decides what the rows decide.
    with world.session_factory() as session:
        rows = session.query(SampleWindowRow).filter_by(rollout_id=rollout_id).all()
        assert aggregate.observations(held, "fp32", "int8").paired == \
            aggregate.observations(rows, "fp32", "int8").paired
