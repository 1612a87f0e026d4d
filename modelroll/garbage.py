"""What in the artifact store is garbage: a pure decision over facts read from the database and the disk.

- An artifact row whose every referencing variant (as artifact or source) is retired, and whose sha256 nothing
  live names (a live variant's eval set, an unfinished job's eval data), is removed: file deleted, row marked.
- A stored file no artifact row names is deleted when only retired variants or finished jobs name it (their
  eval data), and otherwise (a crashed attempt's output) once older than the grace period, so a file stored a
  moment before its row commits is never taken.
- An extracted folder (`.trees/<sha>`) is deleted when its artifact is garbage, or when no optimization job is
  unfinished (they are re-extracted, verified, on the next use); temporary files once older than the grace.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

GRACE = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class ArtifactFact:
    """An artifact row and how many live and retired variants refer to it."""

    id: int
    sha256: str
    format: str
    removed: bool
    live_refs: int
    owners: tuple[str, ...] = ()  # "model/variant (source)" of every variant that refers to it, for the report


@dataclass(frozen=True, slots=True)
class Entry:
    """Something on disk under the store: a stored file (`name` = its sha256), a folder or a temporary file."""

    name: str
    size_bytes: int
    modified_at: datetime


@dataclass(frozen=True, slots=True)
class Facts:
    artifacts: Sequence[ArtifactFact]
    live_sha256: frozenset[str]  # named by a live variant's recipe or an unfinished job's request
    released_sha256: frozenset[str]  # named by a retired variant's recipe or a finished job's request
    files: Sequence[Entry]
    trees: Sequence[Entry]
    scratch: Sequence[Entry]
    unfinished_jobs: Sequence[int]


@dataclass(frozen=True, slots=True)
class Plan:
    remove: tuple[ArtifactFact, ...]  # rows to mark removed, their files to delete
    revive: tuple[int, ...]  # rows marked removed that something live uses again and whose file is back
    missing: tuple[ArtifactFact, ...]  # live artifacts whose file is not in the store
    orphans: tuple[Entry, ...]  # stored files no artifact row names
    trees: tuple[Entry, ...]
    scratch: tuple[Entry, ...]
    trees_kept_for_jobs: tuple[int, ...]  # unfinished jobs that kept the extracted folders of live artifacts


def _old(entries: Iterable[Entry], now: datetime, grace: timedelta) -> tuple[Entry, ...]:
    return tuple(entry for entry in entries if now - entry.modified_at >= grace)


def plan(facts: Facts, now: datetime, grace: timedelta = GRACE) -> Plan:
    """Decide what to delete; nothing here reads the disk or the clock."""
    on_disk = {entry.name: entry for entry in facts.files}
    in_use = {fact.sha256 for fact in facts.artifacts if fact.live_refs} | set(facts.live_sha256)
    remove = tuple(fact for fact in facts.artifacts if not fact.removed and fact.sha256 not in in_use)
    revive = tuple(fact.id for fact in facts.artifacts
                   if fact.removed and fact.sha256 in in_use and fact.sha256 in on_disk)
    missing = tuple(fact for fact in facts.artifacts if fact.live_refs and fact.sha256 not in on_disk)
    named = {fact.sha256 for fact in facts.artifacts if not fact.removed}  # the rows being removed too
    unnamed = [entry for entry in facts.files if entry.name not in in_use and entry.name not in named]
    orphans = tuple(entry for entry in unnamed if entry.name in facts.released_sha256
                    or now - entry.modified_at >= grace)
    # A running job may be reading the extracted folder of a live artifact; anything else is re-extracted.
    trees = tuple(entry for entry in facts.trees if not facts.unfinished_jobs or entry.name not in in_use)
    kept = tuple(facts.unfinished_jobs) if len(trees) < len(facts.trees) else ()
    return Plan(remove=remove, revive=revive, missing=missing, orphans=orphans, trees=trees,
                scratch=_old(facts.scratch, now, grace), trees_kept_for_jobs=kept)
