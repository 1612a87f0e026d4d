"""Alembic revisions against real PostgreSQL and SQLite: upgrade matches the models, downgrade undoes it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from modelroll import migrate
from modelroll.db import Base
from modelroll.errors import Conflict, InvalidInput, Unavailable
from modelroll.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _execute(url: str, *statements: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "postgresql":
        return Settings(home=tmp_path / "home", database_url=request.getfixturevalue("pg_url"))
    return Settings(home=tmp_path / "home")


def test_upgrade_creates_every_model_table_and_check_finds_no_drift(settings: Settings) -> None:
    assert migrate.current(settings) is None
    migrate.upgrade(settings)
    assert _tables(settings.effective_database_url) == set(Base.metadata.tables) | {"alembic_version"}
    assert migrate.current(settings) == migrate.head(settings)
    migrate.check(settings)
    command.check(migrate.alembic_config(settings))  # Alembic's own `alembic check`, not only ours


def test_downgrade_to_base_leaves_only_alembic_version_and_upgrade_works_again(settings: Settings) -> None:
    migrate.upgrade(settings)
    migrate.downgrade(settings, "base")
    assert _tables(settings.effective_database_url) == {"alembic_version"}
    assert migrate.current(settings) is None
    migrate.upgrade(settings)
    migrate.check(settings)


def test_check_reports_a_schema_that_drifted_from_the_models(settings: Settings) -> None:
    migrate.upgrade(settings)
    _execute(settings.effective_database_url, "CREATE TABLE stray (id INTEGER)",
             "ALTER TABLE models ADD COLUMN stray_note TEXT")
    with pytest.raises(Conflict, match=r"remove_table stray.*remove_column models\.stray_note"):
        migrate.check(settings)


def test_check_refuses_a_database_behind_head(settings: Settings) -> None:
    with pytest.raises(Conflict, match="run `modelroll db upgrade`"):
        migrate.check(settings)


def test_unknown_revision_is_invalid_input(settings: Settings) -> None:
    with pytest.raises(InvalidInput, match="unknown revision 'nope'"):
        migrate.upgrade(settings, "nope")
    with pytest.raises(InvalidInput, match="unknown revision"):
        migrate.downgrade(settings, "../etc")


def test_ensure_schema_creates_the_embedded_home_from_any_directory(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = Settings(home=tmp_path / "deep" / "home")
    migrate.ensure_schema(settings)
    migrate.ensure_schema(settings)  # idempotent: a second start is a no-op
    assert (tmp_path / "deep" / "home" / "modelroll.db").is_file()
    migrate.check(settings)


def test_processes_starting_together_on_postgresql_apply_the_revision_once(pg_url: str, tmp_path: Path) -> None:
    """Three services calling ensure_schema at once: the advisory lock serialises them, none fails."""
    code = "from modelroll import migrate; from modelroll.settings import Settings; migrate.ensure_schema(Settings())"
    env = {**os.environ, "MODELROLL_DATABASE_URL": pg_url, "MODELROLL_HOME": str(tmp_path / "home")}
    starts = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
              for _ in range(3)]
    outcomes = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in starts]
    assert [rc for rc, _ in outcomes] == [0, 0, 0], outcomes
    migrate.check(Settings(home=tmp_path / "home", database_url=pg_url))


def test_threads_of_one_process_can_call_ensure_schema_together(pg_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", database_url=pg_url)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            migrate.ensure_schema(settings)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    migrate.check(settings)


def test_unreachable_database_is_unavailable_with_the_password_hidden(tmp_path: Path) -> None:
    # Port 1 on loopback refuses at once; nothing listens there.
    settings = Settings(home=tmp_path, database_url="postgresql+psycopg://u:secret@127.0.0.1:1/x")
    with pytest.raises(Unavailable) as caught:
        migrate.current(settings)
    assert "secret" not in caught.value.message
    assert "127.0.0.1:1" in caught.value.message


def test_alembic_command_line_reads_modelroll_settings(tmp_path: Path) -> None:
    """`alembic -c alembic.ini upgrade head` with only MODELROLL_HOME set targets the embedded SQLite."""
    env = {**os.environ, "MODELROLL_HOME": str(tmp_path / "home")}
    env.pop("MODELROLL_DATABASE_URL", None)
    alembic = Path(sys.executable).parent / "alembic"
    done = subprocess.run([str(alembic), "-c", str(REPO / "alembic.ini"), "upgrade", "head"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    migrate.check(Settings(home=tmp_path / "home"))
