"""POST /v1/optimizations reads only files inside the input root: an operator cannot make the controller copy a
file from elsewhere on the host into the artifact store, nor learn from the answer whether such a file exists."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from modelroll.artifacts import ArtifactStore
from modelroll.catalog import register_model
from modelroll.db import OptimizationJobRow
from tests.integration.controller_world import World, make_world
from tests.tiny_onnx import write_linear

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def world(tmp_path: Path, pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[World]:
    for world in make_world(pg_url, redis_url, redis_prefix):
        world.settings = world.settings.model_copy(update={"home": tmp_path / "home"})
        store = ArtifactStore(world.settings.effective_artifacts_dir)
        with world.session_factory() as session, session.begin():
            register_model(session, store, write_linear(tmp_path / "linear.onnx"), "linear")
        yield world


def eval_npz(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((16, 4), dtype=np.float32), labels=rng.integers(0, 3, 16))
    return path


def stored_files(world: World) -> list[Path]:
    root = world.settings.effective_artifacts_dir
    return sorted(p for p in root.rglob("*") if p.is_file() and ".tmp" not in p.parts) if root.exists() else []


def post(client: TestClient, world: World, eval_data: str) -> tuple[int, str]:
    r = client.post("/v1/optimizations", headers=world.auth("operator"),
                    json={"model": "linear", "techniques": ["int8"], "eval_data": eval_data})
    return r.status_code, r.json().get("error", "") if r.status_code >= 400 else ""


def test_eval_data_outside_the_input_root_is_refused_alike_and_never_read(world: World, tmp_path: Path) -> None:
    root = world.settings.effective_input_dir
    root.mkdir(parents=True)
    secret = eval_npz(tmp_path / "outside" / "secret.npz")  # a valid eval set: only the policy can refuse it
    missing = tmp_path / "outside" / "nothing.npz"
    (root / "leak.npz").symlink_to(secret)
    (root / "dangling.npz").symlink_to(missing)
    depth = len(root.resolve().parts)
    attempts = [str(secret), str(missing), "../../outside/secret.npz", "../../outside/nothing.npz",
                "../" * depth + str(secret).lstrip("/"), "../" * depth + str(missing).lstrip("/"),
                "leak.npz", "dangling.npz"]
    before = stored_files(world)
    answers = set()
    with world.client() as client:
        for raw in attempts:
            status, error = post(client, world, raw)
            assert status == 400, (raw, status, error)
            answers.add(error.replace(repr(raw), "<path>"))
    assert len(answers) == 1, answers  # the same words for a file that exists and one that does not
    assert "MODELROLL_INPUT_DIR" in answers.pop()
    assert stored_files(world) == before, "a refused path must not be copied into the artifact store"
    with world.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(OptimizationJobRow).where(
            OptimizationJobRow.request["model"].as_string() == "linear")) == 0


def test_eval_data_inside_the_input_root_is_stored_by_its_hash(world: World) -> None:
    path = eval_npz(world.settings.effective_input_dir / "linear" / "eval.npz")
    with world.client() as client:
        status, error = post(client, world, "linear/missing.npz")
        assert status == 404 and "no such .npz file in the controller's input root" in error, error
        r = client.post("/v1/optimizations", headers=world.auth("operator"),
                        json={"model": "linear", "techniques": ["int8"], "eval_data": "linear/eval.npz"})
        assert r.status_code == 202, r.text
    request = r.json()["request"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert request["eval_data"] == "linear/eval.npz" and request["eval_sha256"] == digest
    assert ArtifactStore(world.settings.effective_artifacts_dir).exists(digest)
