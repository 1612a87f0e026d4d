"""Model registration and listing on a migrated PostgreSQL (and the embedded SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from modelroll import catalog, migrate
from modelroll.artifacts import ArtifactStore
from modelroll.db import ArtifactRow, ModelRow, VariantRow, make_engine, make_session_factory
from modelroll.errors import Conflict, InvalidInput, NotFound
from modelroll.settings import Settings
from tests.tiny_onnx import write_linear, write_unsorted_graph


@pytest.fixture(params=["postgresql", "sqlite"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    settings = Settings(home=tmp_path / "home", database_url=url)
    migrate.ensure_schema(settings)
    engine = make_engine(settings)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture()
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def _counts(sessions: sessionmaker[Session]) -> tuple[int, int, int]:
    with sessions() as session:
        return tuple(session.scalar(select(func.count()).select_from(table)) or 0  # type: ignore[return-value]
                     for table in (ModelRow, VariantRow, ArtifactRow))


def _register(sessions: sessionmaker[Session], store: ArtifactStore, path: Path, name: str,
              description: str = "") -> tuple[ModelRow, VariantRow]:
    with sessions() as session, session.begin():
        return catalog.register_model(session, store, path, name, description)


def test_register_records_model_baseline_and_artifact(sessions: sessionmaker[Session], store: ArtifactStore,
                                                      tmp_path: Path) -> None:
    path = write_linear(tmp_path / "digits.onnx")
    model, variant = _register(sessions, store, path, "digits", "8x8 digits")
    assert (model.name, variant.name, variant.role) == ("digits", "baseline", "baseline")
    with sessions() as session:
        [info] = catalog.list_models(session)
        baseline = catalog.get_variant(session, "digits", "baseline")
    assert info.name == "digits" and info.description == "8x8 digits"
    assert info.created_at.tzinfo is UTC
    assert info.variants == (baseline,)
    assert (baseline.format, baseline.size_bytes, baseline.parent) == ("onnx", path.stat().st_size, None)
    assert store.read_bytes(baseline.sha256) == path.read_bytes()


def test_duplicate_name_is_a_conflict_naming_when_the_first_was_registered(
        sessions: sessionmaker[Session], store: ArtifactStore, tmp_path: Path) -> None:
    _register(sessions, store, write_linear(tmp_path / "a.onnx"), "digits")
    before = _counts(sessions)
    with pytest.raises(Conflict, match=r"model 'digits' already exists \(registered 20\d\d-\d\d-\d\d .* UTC\)"):
        _register(sessions, store, write_linear(tmp_path / "b.onnx", seed=1), "digits")
    assert _counts(sessions) == before


@pytest.mark.parametrize("case", ["missing", "folder", "text", "unchecked", "bad-name", "long-description"])
def test_bad_input_is_refused_and_nothing_is_written(sessions: sessionmaker[Session], store: ArtifactStore,
                                                    tmp_path: Path, case: str) -> None:
    path, name, description, expected = tmp_path / "model.onnx", "digits", "", ""
    if case == "missing":
        expected = f"no file at {path}"
    elif case == "folder":
        path.mkdir()
        expected = "is not a file; modelroll accepts ONNX files"
    elif case == "text":
        path.write_text("not a model")
        expected = "is not a valid ONNX model: .*; modelroll accepts ONNX files"
    elif case == "unchecked":
        write_unsorted_graph(path)
        expected = "is not a valid ONNX model: .*topologically sorted.*; modelroll accepts ONNX files"
    elif case == "bad-name":
        write_linear(path)
        name, expected = "Digits!", "model 'Digits!' is not a valid name"
    else:
        write_linear(path)
        description, expected = "x" * 2001, "description must be text of at most 2000 characters"
    with pytest.raises(InvalidInput, match=expected):
        _register(sessions, store, path, name, description)
    assert _counts(sessions) == (0, 0, 0)
    assert not store.root.exists() or not any(p.is_file() for p in store.root.rglob("*"))


def test_add_variant_records_lineage_and_shares_identical_artifacts(sessions: sessionmaker[Session],
                                                                     store: ArtifactStore, tmp_path: Path) -> None:
    _register(sessions, store, write_linear(tmp_path / "digits.onnx"), "digits")
    int8 = write_linear(tmp_path / "int8.onnx", seed=7)
    with sessions() as session, session.begin():
        row = catalog.add_variant(session, store, "digits", "int8", int8, recipe={"quantize": "int8-dynamic"})
        stored = store.put_file(int8, "onnx")
        catalog.add_variant(session, store, "digits", "int8-again", stored, parent="int8")
    with sessions() as session:
        info = catalog.get_model(session, "digits")
    by_name = {v.name: v for v in info.variants}
    assert [v.name for v in info.variants] == ["baseline", "int8", "int8-again"]
    assert by_name["int8"].id == row.id
    assert by_name["int8"].parent == "baseline" and by_name["int8-again"].parent == "int8"
    assert by_name["int8"].recipe == {"quantize": "int8-dynamic"}
    assert by_name["int8"].sha256 == by_name["int8-again"].sha256 != by_name["baseline"].sha256
    assert _counts(sessions) == (1, 3, 2)


def test_add_variant_refuses_bad_input(sessions: sessionmaker[Session], store: ArtifactStore, tmp_path: Path) -> None:
    _register(sessions, store, write_linear(tmp_path / "digits.onnx"), "digits")
    path = write_linear(tmp_path / "c.onnx", seed=3)
    cases: list[tuple[dict[str, object], type[Exception], str]] = [
        ({"model": "nope"}, NotFound, "no model named 'nope' \\(registered models: digits\\)"),
        ({"parent": "ghost"}, NotFound, "model 'digits' has no variant 'ghost': its variants are baseline"),
        ({"name": "baseline"}, Conflict, "variant 'baseline' of model 'digits' already exists"),
        ({"role": "champion"}, InvalidInput, "role 'champion' is not valid"),
        ({"parent": None}, InvalidInput, "needs a parent variant"),
        ({"recipe": {"when": object()}}, InvalidInput, "must be JSON"),
        ({"artifact": tmp_path / "missing.onnx"}, InvalidInput, "no file at"),
    ]
    for overrides, error, message in cases:
        arguments: dict[str, object] = {"model": "digits", "name": "int8", "artifact": path, **overrides}
        with pytest.raises(error, match=message), sessions() as session, session.begin():
            catalog.add_variant(session, store, **arguments)  # type: ignore[arg-type]
    assert _counts(sessions) == (1, 1, 1)


def test_get_variant_of_unknown_names_is_not_found(sessions: sessionmaker[Session], store: ArtifactStore,
                                                   tmp_path: Path) -> None:
    with sessions() as session, pytest.raises(NotFound, match="no model is registered yet"):
        catalog.get_variant(session, "digits", "baseline")
    _register(sessions, store, write_linear(tmp_path / "digits.onnx"), "digits")
    with sessions() as session, pytest.raises(NotFound, match="has no variant 'int8': its variants are baseline"):
        catalog.get_variant(session, "digits", "int8")
