"""Bearer tokens with roles viewer < operator < admin: created once, stored as sha256, checked on every call.

`settings.admin_token` bootstraps an admin; `settings.allow_anonymous_viewer` lets calls without a token read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelroll.db import ApiTokenRow, utcnow
from modelroll.errors import Forbidden, InvalidInput, Unauthorized
from modelroll.settings import Settings

ROLES = ("viewer", "operator", "admin")
PREFIX = "mr_"
ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: `actor` goes into events and audit entries."""

    actor: str
    role: str

    def require(self, role: str) -> Principal:
        """Self if its role is at least `role`; else 401 without a token (send one), 403 with one (a higher role)."""
        if ROLES.index(self.role) < ROLES.index(role):
            if self.actor == ANONYMOUS:
                raise Unauthorized(f"this needs a bearer token with the {role} role: send 'Authorization: "
                                   "Bearer <token>' (`modelroll tokens create --role ROLE`); without one you may only "
                                   "read")
            raise Forbidden(f"this needs the {role} role; {self.actor} has {self.role}")
        return self


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}; accepted: {', '.join(ROLES)}")
    return role


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(session: Session, name: str, role: str) -> str:
    """Store a new token and return its secret: the only time it is ever shown."""
    check_role(role)
    if not name or len(name) > 100 or "\x00" in name:
        raise InvalidInput("token name must be 1-100 characters (no NUL), e.g. --name ci-deployer")
    secret = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiTokenRow(name=name, token_sha256=hash_token(secret), role=role))
    return secret


def revoke_token(session: Session, name: str) -> int:
    rows = session.scalars(select(ApiTokenRow).where(ApiTokenRow.name == name,
                                                      ApiTokenRow.revoked_at.is_(None))).all()
    for row in rows:
        row.revoked_at = utcnow()
    return len(rows)


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when absent."""
    if header is None or not header.strip():
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <token>'; create a token with `modelroll tokens create`")
    return token.strip()


def authenticate(settings: Settings, session_factory: Callable[[], Session], header: str | None) -> Principal:
    token = bearer(header)
    if token is None:
        if settings.allow_anonymous_viewer:
            return Principal(ANONYMOUS, "viewer")
        raise Unauthorized("this needs a bearer token: send 'Authorization: Bearer <token>'")
    if settings.admin_token and hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        return Principal("admin-token", "admin")
    digest = hash_token(token)
    with session_factory() as session, session.begin():
        row = session.scalars(select(ApiTokenRow).where(ApiTokenRow.token_sha256 == digest)).first()
        if row is None or row.revoked_at is not None:
            raise Unauthorized("unknown or revoked token: create one with `modelroll tokens create --role ROLE`")
        now = utcnow()
        # Touch last_used_at at most once a minute: reads stay reads under load.
        if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
            row.last_used_at = now
        return Principal(f"token:{row.name}", row.role)
