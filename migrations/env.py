"""Alembic environment: modelroll's models as the target, URL from the config or from Settings.

Online runs on PostgreSQL hold an advisory lock, so services starting together
(each calling `ensure_schema`) apply a revision once, one after the other.
"""

from __future__ import annotations

import logging.config
from typing import Any

from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from modelroll.db import Base, UTCDateTime
from modelroll.migrate import prepare_sqlite_dir
from modelroll.settings import Settings

# Any fixed 63-bit number works; it only has to be the same in every modelroll process.
MIGRATION_LOCK_KEY = 0x6D6F64656C726F6C  # "modelrol"

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return url if url else Settings().effective_database_url


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Revisions spell UTCDateTime as the column it is: it only changes what Python reads back."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(database: str, **kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=render_item,
        render_as_batch=database.startswith("sqlite"),  # SQLite alters tables by copying them
        **kwargs,
    )


def run_migrations_offline() -> None:
    url = database_url()
    _configure(url, url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_locked(connection: Connection, url: str) -> None:
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()  # the lock is per session; alembic must start its own transaction
    try:
        _configure(url, connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if postgres:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()


def run_migrations_online() -> None:
    url = database_url()
    prepare_sqlite_dir(url)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            _run_locked(connection, url)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
