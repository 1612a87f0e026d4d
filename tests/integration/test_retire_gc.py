"""Retire a variant and collect garbage on a migrated PostgreSQL and the embedded SQLite, with real stored files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from modelroll import catalog, migrate, production
from modelroll.artifacts import ArtifactStore, StoredArtifact
from modelroll.cleanup import Report, collect
from modelroll.db import (
    ArtifactRow,
    AuditEntryRow,
    ModelRow,
    OptimizationJobRow,
    RolloutEventRow,
    RolloutRow,
    SampleWindowRow,
    VariantRow,
    WebhookOutboxRow,
    make_engine,
    make_session_factory,
)
from modelroll.errors import Conflict, InvalidInput, NotFound
from modelroll.jobs import resolve_baseline
from modelroll.retire import Retired, retire_variant
from modelroll.settings import Settings
from router.variants import CatalogVariantSource
from tests.tiny_onnx import write_linear

NOW = datetime.now(UTC)


@dataclass
class Home:
    settings: Settings
    sessions: sessionmaker[Session]
    store: ArtifactStore
    tmp: Path
    eval_sha256: str = ""
    torch_sha256: str = ""

    def onnx(self, seed: int) -> Path:
        return write_linear(self.tmp / f"m{seed}.onnx", in_features=64, out_features=32, seed=seed)

    def sha(self, variant: str) -> str:
        with self.sessions() as session:
            return catalog.get_variant(session, "digits", variant).sha256

    def retire(self, variant: str, reason: str = "") -> Retired:
        with self.sessions() as session, session.begin():
            return retire_variant(session, "digits", variant, actor="tester", reason=reason)

    def gc(self, *, now: datetime = NOW, dry_run: bool = False, retention_days: int = 30) -> Report:
        return collect(self.sessions, self.store.root, retention_days=retention_days, actor="tester", now=now,
                       dry_run=dry_run)

    def stored(self, sha256: str) -> bool:
        return self.store.exists(sha256)

    def serve(self, variant: str) -> None:
        with self.sessions() as session, session.begin():
            model = production.model_row(session, "digits")
            row = session.scalars(select(VariantRow).where(VariantRow.name == variant)).one()
            production.set_production(session, model, row, action=production.PROMOTED, actor="tester")


@pytest.fixture(params=["postgresql", "sqlite"])
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Home]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    settings = Settings(home=tmp_path / "home", database_url=url)
    migrate.ensure_schema(settings)
    engine = make_engine(settings)
    h = Home(settings, make_session_factory(engine), ArtifactStore.from_settings(settings), tmp_path)
    torch_dir = tmp_path / "torch"
    torch_dir.mkdir()
    (torch_dir / "model.pt").write_bytes(os.urandom(50_000))
    with h.sessions() as session, session.begin():
        _, baseline = catalog.register_model(session, h.store, h.onnx(0), "digits")
        torch_row = catalog.stored_artifact_row(session, h.store.put_file(torch_dir, "torch"))
        h.eval_sha256 = h.store.put_bytes(os.urandom(20_000), "npz").sha256
        baseline.source_artifact_id, baseline.recipe = torch_row.id, {"eval_sha256": h.eval_sha256}
        h.torch_sha256 = torch_row.sha256
        int8 = h.store.put_file(h.onnx(1), "onnx")
        for name, artifact in (("int8", int8), ("twin", int8), ("pruned", h.store.put_file(h.onnx(2), "onnx"))):
            catalog.add_variant(session, h.store, "digits", name, artifact)
    yield h
    engine.dispose()


def _rollout(h: Home, candidate: str, phase: str, window_ends: list[datetime]) -> int:
    with h.sessions() as session, session.begin():
        model = production.model_row(session, "digits")
        ids = {v.name: v.id for v in session.scalars(select(VariantRow))}
        row = RolloutRow(model_id=model.id, baseline_variant_id=ids["baseline"], candidate_variant_id=ids[candidate],
                         spec={"model": "digits", "baseline": "baseline", "candidate": candidate}, phase=phase,
                         evaluation={"verdict": "pass"})
        session.add(row)
        session.flush()
        session.add(RolloutEventRow(rollout_id=row.id, seq=1, kind="promoted", actor="controller",
                                    evidence={"results": ["latency passes"]}))
        raw = {"latency_ms": [1.5] * 2000, "labels": {f"r{i}": True for i in range(500)}}
        for end in window_ends:
            session.add(SampleWindowRow(rollout_id=row.id, variant=candidate, step_index=0,
                                        window_start=end - timedelta(seconds=10), window_end=end, requests=2000,
                                        data=raw))
        return row.id


def _count(h: Home, table: type, *where: object) -> int:
    with h.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)  # type: ignore[arg-type]


def test_what_serves_or_is_in_an_unfinished_rollout_or_job_cannot_be_retired(home: Home) -> None:
    with pytest.raises(Conflict, match=r"'baseline' serves model 'digits' in production \(revision 1\): make another"):
        home.retire("baseline")
    rollout = _rollout(home, "int8", "progressing", [])
    with pytest.raises(Conflict, match=rf"'int8' of model 'digits' is the candidate of rollout {rollout}, which is "
                                       rf"progressing: abort it \(`modelroll rollout abort {rollout}`\)"):
        home.retire("int8")
    with home.sessions() as session, session.begin():
        twin = session.scalars(select(VariantRow).where(VariantRow.name == "twin")).one()
        job = OptimizationJobRow(model_id=twin.model_id, baseline_variant_id=twin.id, status="running")
        session.add(job)
    with pytest.raises(Conflict, match=r"'twin' of model 'digits' is the baseline of optimization job \d+, which"):
        home.retire("twin")
    assert _count(home, VariantRow, VariantRow.retired_at.is_not(None)) == 0
    assert _count(home, AuditEntryRow) == 0


def test_unknown_names_are_refused_with_the_known_ones(home: Home) -> None:
    with pytest.raises(NotFound, match=r"model 'digits' has no variant 'int9': its variants are baseline, int8, twin"):
        home.retire("int9")
    with home.sessions() as session, pytest.raises(NotFound, match=r"no model named 'digitz' \(registered models: "
                                                                   r"digits\)"):
        retire_variant(session, "digitz", "int8", actor="tester")
    with home.sessions() as session, pytest.raises(InvalidInput, match="variant 'Int 8' is not a valid name"):
        retire_variant(session, "digits", "Int 8", actor="tester")
    with pytest.raises(InvalidInput, match="reason must be text of at most 1000 characters"):
        home.retire("int8", reason="x" * 1001)


def test_retiring_twice_changes_nothing_and_says_when(home: Home) -> None:
    first = home.retire("int8", reason="slower than pruned")
    second = home.retire("int8")
    assert (first.already, second.already) == (False, True)
    assert second.retired_at == first.retired_at
    with home.sessions() as session:
        [entry] = session.scalars(select(AuditEntryRow)).all()
    assert (entry.actor, entry.action, entry.target_id) == ("tester", "variant.retire", "digits/int8")
    assert entry.after["reason"] == "slower than pruned"


def test_a_retired_variant_is_no_longer_served_nor_optimized_from(home: Home) -> None:
    home.retire("pruned")
    source = CatalogVariantSource(home.sessions, home.store)
    assert "pruned" not in {spec.name for spec in source.variants("digits")}
    with home.sessions() as session, pytest.raises(Conflict, match="variant 'pruned' of model 'digits' is retired"):
        resolve_baseline(session, "digits", "pruned")
    home.serve("int8")
    home.retire("baseline")
    with home.sessions() as session, pytest.raises(NotFound, match="model 'digits' has no live baseline variant"):
        resolve_baseline(session, "digits", None)  # the default never picks a retired one


def test_shared_content_stays_until_its_last_live_variant_is_retired(home: Home) -> None:
    sha = home.sha("int8")
    home.retire("int8")
    assert home.gc().artifacts == ()
    assert home.stored(sha)
    home.retire("twin")
    report = home.gc()
    assert [a["sha256"] for a in report.artifacts] == [sha]
    assert report.artifacts[0]["owners"] == ["digits/int8", "digits/twin"]
    assert not home.stored(sha)
    assert _count(home, ArtifactRow, ArtifactRow.sha256 == sha, ArtifactRow.removed_at.is_not(None)) == 1
    with home.sessions() as session:
        [entry] = session.scalars(select(AuditEntryRow).where(AuditEntryRow.action == "gc")).all()
    assert entry.actor == "tester" and entry.after["artifacts"] == [sha]
    assert home.gc().changed is False


def test_retiring_the_former_production_variant_frees_its_source_and_eval_data(home: Home) -> None:
    home.store.tree_of(home.torch_sha256)  # a worker extracted it
    baseline = home.sha("baseline")
    home.serve("pruned")
    home.retire("baseline")
    dry = home.gc(dry_run=True)
    assert {a["sha256"] for a in dry.artifacts} == {baseline, home.torch_sha256}
    assert home.stored(baseline) and (home.store.root / ".trees" / home.torch_sha256).is_dir()
    report = home.gc()
    assert report.orphans == (home.eval_sha256,)
    assert report.trees == (home.torch_sha256,)
    assert not any(home.stored(s) for s in (baseline, home.torch_sha256, home.eval_sha256))
    assert not (home.store.root / ".trees" / home.torch_sha256).exists()
    assert home.stored(home.sha("pruned")) and home.stored(home.sha("int8"))


def test_retention_purges_only_old_windows_of_finished_rollouts_and_keeps_their_decisions(home: Home) -> None:
    old, recent = NOW - timedelta(days=31), NOW - timedelta(days=1)
    finished = _rollout(home, "int8", "promoted", [old, old + timedelta(seconds=10), recent])
    active = _rollout(home, "twin", "progressing", [old])
    with home.sessions() as session, session.begin():
        session.add_all([WebhookOutboxRow(kind="promoted", body={}, delivered_at=old),
                         WebhookOutboxRow(kind="promoted", body={}, delivered_at=recent),
                         WebhookOutboxRow(kind="promoted", body={}, created_at=old)])  # never delivered: kept
    report = home.gc()
    assert (report.windows, report.notifications) == (2, 1)
    assert _count(home, SampleWindowRow, SampleWindowRow.rollout_id == finished) == 1
    assert _count(home, SampleWindowRow, SampleWindowRow.rollout_id == active) == 1
    assert _count(home, WebhookOutboxRow) == 2
    assert _count(home, RolloutEventRow, RolloutEventRow.rollout_id == finished) == 1
    with home.sessions() as session:
        assert session.get(RolloutRow, finished).evaluation == {"verdict": "pass"}  # type: ignore[union-attr]


def test_a_dry_run_deletes_nothing(home: Home) -> None:
    _rollout(home, "int8", "promoted", [NOW - timedelta(days=40)])
    home.retire("pruned")
    dry = home.gc(dry_run=True)
    assert dry.windows == 1 and len(dry.artifacts) == 1 and dry.freed_bytes > 0
    assert _count(home, SampleWindowRow) == 1 and home.stored(home.sha("pruned"))
    assert _count(home, ArtifactRow, ArtifactRow.removed_at.is_not(None)) == 0
    assert _count(home, AuditEntryRow, AuditEntryRow.action == "gc") == 0


def test_stray_files_wait_out_the_grace_and_extracted_folders_wait_for_running_jobs(home: Home) -> None:
    stray = home.store.put_bytes(b"a crashed attempt's output", "onnx")
    older = home.store.put_bytes(b"an older crashed attempt's output", "onnx")
    hour_ago = (NOW - timedelta(hours=2)).timestamp()
    os.utime(home.store.root / older.relpath, (hour_ago, hour_ago))
    scratch = home.store.root / ".tmp" / "put-left-behind"
    scratch.parent.mkdir(exist_ok=True)
    scratch.write_bytes(b"x")
    os.utime(scratch, (hour_ago, hour_ago))
    home.store.tree_of(home.torch_sha256)
    with home.sessions() as session, session.begin():
        model = production.model_row(session, "digits")
        session.add(OptimizationJobRow(model_id=model.id, baseline_variant_id=1, status="running",
                                       request={"eval_sha256": stray.sha256}))
    report = home.gc()
    assert report.orphans == (older.sha256,)
    assert report.scratch == ("put-left-behind",) and report.trees == ()
    assert report.trees_kept_for_jobs != ()
    assert home.stored(stray.sha256) and not home.stored(older.sha256) and not scratch.exists()


def test_a_file_stored_again_is_fresh_for_the_grace(home: Home) -> None:
    stored: StoredArtifact = home.store.put_bytes(b"bytes a job stores again", "onnx")
    path = home.store.root / stored.relpath
    os.utime(path, (0, 0))
    home.store.put_bytes(b"bytes a job stores again", "onnx")
    assert datetime.now(UTC).timestamp() - path.stat().st_mtime < 60
    assert home.gc().orphans == ()


def test_retire_and_gc_give_the_disk_back(home: Home) -> None:
    """The disk figure in small: after a rollout and retiring what does not serve, gc frees the artifacts and
    (past retention) the windows; an SQLite file shrinks back."""
    fresh = _bytes(home)
    _rollout(home, "pruned", "promoted", [NOW - timedelta(seconds=10 * i) for i in range(60)])
    home.serve("pruned")
    busy = _bytes(home)
    for variant in ("baseline", "int8", "twin"):
        home.retire(variant)
    report = home.gc(now=NOW + timedelta(days=31))
    assert report.windows == 60 and len(report.artifacts) == 3
    after = _bytes(home)  # the home holds the SQLite file, not PostgreSQL's: there the windows' rows are counted
    assert after < fresh <= busy, (fresh, busy, after)
    assert _count(home, SampleWindowRow) == 0
    if home.settings.database_url == "":
        assert fresh < busy
        assert report.database_bytes_after is not None and report.database_bytes_before is not None
        assert report.database_bytes_after < report.database_bytes_before / 4
    with home.sessions() as session:
        assert [m.name for m in session.scalars(select(ModelRow))] == ["digits"]
        assert production.current(session, "digits").variant == "pruned"


def _bytes(h: Home) -> int:
    return sum(p.stat().st_size for p in h.settings.home.rglob("*") if p.is_file())
