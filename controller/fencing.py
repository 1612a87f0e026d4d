"""Fenced writes: every write of the leader carries its fencing token, so a stale leader cannot write.

The first statement of each transaction raises the fence row to the writer's token, or finds a larger one
and aborts; holding that row lock until commit orders the writes of two would-be leaders. A new leader takes
office first (`take_office`), so its token is recorded, and larger than any before it, even if the lock's counter
restarted (a Redis that lost its data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from modelroll.db import LeaderFenceRow
from modelroll.errors import Conflict

LEADER = "controller"


class StaleLeader(Conflict):
    """A newer leader has written: this process must stop writing and go back to standby."""


def _insert_if_missing(session: Session, token: int, name: str) -> None:
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(LeaderFenceRow).values(name=name, token=token).on_conflict_do_nothing(
        index_elements=["name"]))


def fence(session: Session, token: int, name: str = LEADER) -> None:
    """Raise the fence to `token` in the session's transaction, or raise StaleLeader if a newer one wrote."""
    if _raise_fence(session, token, name):
        return
    _insert_if_missing(session, token, name)
    if _raise_fence(session, token, name):
        return
    current = session.get(LeaderFenceRow, name, populate_existing=True)
    raise StaleLeader(f"fencing token {token} is stale: leader with token "
                      f"{current.token if current else '?'} has written since; this controller steps down")


def _raise_fence(session: Session, token: int, name: str) -> bool:
    result: Any = session.execute(update(LeaderFenceRow).where(
        LeaderFenceRow.name == name, LeaderFenceRow.token <= token).values(token=token))
    return bool(result.rowcount == 1)


def take_office(session_factory: Callable[[], Session], lock_token: int, name: str = LEADER) -> int:
    """The token a newly elected leader acts with, recorded as the fence before its first act.

    It is the lock's token, or one past the fence when that is not larger: a lock counter that restarted from 1
    must neither wait for the old numbers to come round again nor hand out a token some earlier leader held.
    """
    with session_factory() as session, session.begin():
        _insert_if_missing(session, 0, name)
        current = session.scalars(select(LeaderFenceRow.token).where(LeaderFenceRow.name == name)
                                  .with_for_update()).one()
        token = max(lock_token, current + 1)
        session.execute(update(LeaderFenceRow).where(LeaderFenceRow.name == name).values(token=token))
        return token


@contextmanager
def fenced(session_factory: Callable[[], Session], token: int, name: str = LEADER) -> Iterator[Session]:
    """A session whose transaction is fenced first and committed on success, rolled back otherwise."""
    with session_factory() as session, session.begin():
        fence(session, token, name)
        yield session
