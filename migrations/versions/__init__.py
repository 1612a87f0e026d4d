"""Alembic revisions; a package so that installs from a wheel ship them (Alembic skips this file)."""
