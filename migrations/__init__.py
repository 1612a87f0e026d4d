"""Alembic environment and revisions for modelroll's schema; a package so installs ship it."""
