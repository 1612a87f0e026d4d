"""`modelroll models retire` and `modelroll gc` on the embedded SQLite: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelroll import catalog, production
from modelroll.artifacts import ArtifactStore
from modelroll.db import AuditEntryRow, RolloutRow, VariantRow, make_engine, make_session_factory
from modelroll.settings import Settings
from tests.tiny_onnx import write_linear
from tests.unit.test_cli import Cli, _one_error_line


@pytest.fixture()
def cli(tmp_path: Path) -> Cli:
    cli = Cli(tmp_path / "home")
    assert cli("models", "register", str(write_linear(tmp_path / "digits.onnx")), "--name", "digits").exit_code == 0
    settings = Settings(home=tmp_path / "home")
    engine = make_engine(settings)
    with make_session_factory(engine)() as session, session.begin():
        catalog.add_variant(session, ArtifactStore.from_settings(settings), "digits", "int8",
                            write_linear(tmp_path / "int8.onnx", seed=1))
    engine.dispose()
    return cli


def _sessions(cli: Cli) -> tuple[sessionmaker[Session], ArtifactStore]:
    settings = Settings(home=cli.home)
    return make_session_factory(make_engine(settings)), ArtifactStore.from_settings(settings)


def test_retire_answers_once_then_says_it_was_already_retired(cli: Cli) -> None:
    result = cli("models", "retire", "digits", "int8", "--reason", "slower than pruned", USER="ops-ana")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("retired variant 'int8' of model 'digits': routers stop loading it;")
    again = cli("models", "retire", "digits", "int8", "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout)["already_retired"] is True
    sessions, _ = _sessions(cli)
    with sessions() as session:
        [entry] = session.scalars(select(AuditEntryRow).where(AuditEntryRow.action == "variant.retire")).all()
    assert entry.actor == "cli:ops-ana" and entry.after["reason"] == "slower than pruned"


def test_refusals_and_bad_usage_have_their_exit_codes(cli: Cli) -> None:
    _one_error_line(cli("models", "retire", "digits", "baseline"), 1,
                    "variant 'baseline' serves model 'digits' in production (revision 1)")
    _one_error_line(cli("models", "retire", "digits", "int9"), 1, "its variants are baseline, int8")
    _one_error_line(cli("models", "retire", "digitz", "int8"), 1, "registered models: digits")
    _one_error_line(cli("models", "retire", "digits", "Int 8"), 2, "variant 'Int 8' is not a valid name")
    _one_error_line(cli("models", "retire", "digits", "int8", "--reason", "x" * 1001), 2,
                    "reason must be text of at most 1000 characters")
    _one_error_line(cli("models", "retire", "digits"), 2, "Missing argument 'variant'")
    _one_error_line(cli("gc", "--now"), 2, "No such option: --now")
    _one_error_line(cli("gc", MODELROLL_RETENTION_DAYS="-1"), 2,
                    "MODELROLL_RETENTION_DAYS='-1' is not valid: Input should be greater than or equal to 0")
    _one_error_line(cli("gc", MODELROLL_RETENTION_DAYS="a month"), 2, "MODELROLL_RETENTION_DAYS='a month' is not valid")


def test_a_variant_of_an_unfinished_rollout_is_refused_naming_the_rollout(cli: Cli) -> None:
    sessions, _ = _sessions(cli)
    with sessions() as session, session.begin():
        model = production.model_row(session, "digits")
        ids = {v.name: v.id for v in session.scalars(select(VariantRow))}
        row = RolloutRow(model_id=model.id, baseline_variant_id=ids["baseline"], candidate_variant_id=ids["int8"],
                         spec={}, phase="paused")
        session.add(row)
        session.flush()
        rollout_id = row.id
    _one_error_line(cli("models", "retire", "digits", "int8"), 1,
                    f"is the candidate of rollout {rollout_id}, which is paused: abort it "
                    f"(`modelroll rollout abort {rollout_id}`)")


def test_list_hides_retired_variants_unless_asked_and_gc_frees_their_files(cli: Cli) -> None:
    sha = json.loads(cli("models", "list", "--json").stdout)[0]["variants"][1]["sha256"]
    assert cli("models", "retire", "digits", "int8").exit_code == 0
    listed = cli("models", "list")
    assert "int8" not in listed.stdout and "baseline" in listed.stdout
    assert "retired candidate" in cli("models", "list", "--all").stdout
    [model] = json.loads(cli("models", "list", "--all", "--json").stdout)
    assert [(v["name"], v["retired"]) for v in model["variants"]] == [("baseline", False), ("int8", True)]

    _, store = _sessions(cli)
    dry = cli("gc", "--dry-run")
    assert dry.exit_code == 0
    assert f"artifact {sha[:12]}… (onnx, " in dry.stdout and "would delete — used only by retired digits/int8" \
        in dry.stdout
    assert store.exists(sha)
    done = cli("gc", "--json")
    assert done.exit_code == 0
    report = json.loads(done.stdout)
    assert [a["sha256"] for a in report["artifacts"]] == [sha] and report["freed_bytes"] > 0
    assert not store.exists(sha)
    assert cli("gc").stdout.splitlines()[0].startswith("retention (30 days, before ")
