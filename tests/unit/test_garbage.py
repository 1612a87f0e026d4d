"""What gc deletes, decided from facts alone: shared content, eval data, grace periods, running jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from modelroll.garbage import GRACE, ArtifactFact, Entry, Facts, plan

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
NEW = NOW - timedelta(minutes=5)
OLD = NOW - GRACE


def sha(c: str) -> str:
    return c * 64


def fact(c: str, *, live: int, removed: bool = False, id_: int | None = None) -> ArtifactFact:
    return ArtifactFact(id=id_ or ord(c), sha256=sha(c), format="onnx", removed=removed, live_refs=live,
                        owners=("digits/x",))


def files(*chars: str, at: datetime = NEW) -> list[Entry]:
    return [Entry(sha(c), 100, at) for c in chars]


def facts(artifacts: list[ArtifactFact], on_disk: list[Entry], *, live: str = "", released: str = "",
          trees: list[Entry] | None = None, scratch: list[Entry] | None = None, jobs: tuple[int, ...] = ()) -> Facts:
    return Facts(artifacts=artifacts, live_sha256=frozenset(sha(c) for c in live),
                 released_sha256=frozenset(sha(c) for c in released), files=on_disk, trees=trees or [],
                 scratch=scratch or [], unfinished_jobs=jobs)


def test_an_artifact_goes_only_when_no_live_variant_uses_it() -> None:
    # "a": two variants share its bytes, one retired (live_refs 1); "b": its only variant is retired
    result = plan(facts([fact("a", live=1), fact("b", live=0)], files("a", "b")), NOW)
    assert [f.sha256 for f in result.remove] == [sha("b")]
    assert result.orphans == () and result.missing == ()


def test_eval_data_goes_with_the_last_variant_or_job_that_names_it() -> None:
    on_disk = files("e", "f", "g")
    result = plan(facts([], on_disk, live="e", released="fg"), NOW)
    assert {e.name for e in result.orphans} == {sha("f"), sha("g")}  # at once: no grace for released data
    result = plan(facts([], on_disk, live="ef", released="fg"), NOW)
    assert {e.name for e in result.orphans} == {sha("g")}  # "f" is still named by a live variant or running job


def test_a_file_no_row_names_waits_out_the_grace_period() -> None:
    result = plan(facts([], files("n") + files("o", at=OLD)), NOW)
    assert [e.name for e in result.orphans] == [sha("o")]


def test_a_row_being_removed_is_not_counted_twice_as_an_orphan() -> None:
    result = plan(facts([fact("b", live=0)], files("b", at=OLD)), NOW)
    assert [f.sha256 for f in result.remove] == [sha("b")] and result.orphans == ()


def test_extracted_folders_wait_for_running_jobs_unless_they_are_garbage() -> None:
    trees = files("a", "b")
    running = plan(facts([fact("a", live=1), fact("b", live=0)], files("a", "b"), trees=trees, jobs=(7,)), NOW)
    assert [e.name for e in running.trees] == [sha("b")]
    assert running.trees_kept_for_jobs == (7,)
    idle = plan(facts([fact("a", live=1), fact("b", live=0)], files("a", "b"), trees=trees), NOW)
    assert {e.name for e in idle.trees} == {sha("a"), sha("b")} and idle.trees_kept_for_jobs == ()


def test_temporary_files_go_once_older_than_the_grace() -> None:
    scratch = [Entry("put-1", 10, NEW), Entry("tree-2", 10, OLD)]
    assert [e.name for e in plan(facts([], [], scratch=scratch), NOW).scratch] == ["tree-2"]


def test_a_removed_row_used_again_is_revived_and_a_live_file_gone_is_reported() -> None:
    result = plan(facts([fact("r", live=1, removed=True), fact("m", live=1)], files("r")), NOW)
    assert result.revive == (ord("r"),)
    assert [f.sha256 for f in result.missing] == [sha("m")]
    assert result.remove == ()


def test_a_removed_row_whose_file_came_back_unused_is_an_orphan() -> None:
    result = plan(facts([fact("r", live=0, removed=True)], files("r", at=OLD)), NOW)
    assert result.remove == () and [e.name for e in result.orphans] == [sha("r")]


def test_the_finished_job_states_gc_and_retire_use_are_the_job_modules() -> None:
    from modelroll.jobs import TERMINAL_STATES
    from modelroll.retire import FINISHED_JOB_STATES

    assert FINISHED_JOB_STATES == TERMINAL_STATES
