"""Signed-in browsers: a random id in an HttpOnly cookie, its SHA-256 and the person in the
`web_sessions` table (so a restart signs nobody out), and a CSRF token per session.

The functions taking a Connection are store operations for the one writer; `SessionBook`
keeps recently seen sessions in memory so a page view costs no extra query.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, insert, select

from tocsin.config import Scope
from tocsin.db import schema
from tocsin.db.engine import Database

W = schema.web_sessions
COOKIE = "tocsin_session"
CACHE_SIZE = 1024  # sessions kept in memory; more are read from the table again


@dataclass(frozen=True)
class Session:
    """Who a browser is signed in as: one org, a name (the timeline's actor) and a scope."""

    org: str
    name: str
    scope: Scope  # as tokens have (a user's role is read or write)
    via: str  # token | user
    credential: str  # see `fingerprint`
    csrf: str
    expires_at: datetime


def fingerprint(secret: bytes) -> str:
    """What a session remembers of the credential it was opened with (a token's digest, a
    user's password hash), so that changing either ends the sessions opened with the old."""
    return hashlib.sha256(b"tocsin-session:" + secret).hexdigest()


def new_id() -> str:
    return secrets.token_urlsafe(32)


def digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def create(conn: Connection, session_id: str, session: Session, now: datetime) -> None:
    """Store a new session, and drop those that have expired (sign-ins are rare: the table
    stays small without a pruning task)."""
    conn.execute(delete(W).where(W.c.expires_at <= now))
    conn.execute(
        insert(W).values(
            id_sha256=digest(session_id),
            org=session.org,
            name=session.name,
            scope=session.scope,
            via=session.via,
            credential=session.credential,
            csrf=session.csrf,
            created_at=now,
            expires_at=session.expires_at,
        )
    )


def remove(conn: Connection, session_id: str) -> None:
    conn.execute(delete(W).where(W.c.id_sha256 == digest(session_id)))


class SessionBook:
    """Looks sessions up by cookie value: memory first, then the table."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[str, Session] = {}

    async def find(self, session_id: str, now: datetime) -> Session | None:
        key = digest(session_id)
        session = self._cache.get(key)
        if session is None:
            async with self._db.read.connect() as conn:
                row = (await conn.execute(select(W).where(W.c.id_sha256 == key))).first()
            if row is None:
                return None
            m = row._mapping
            session = Session(
                m["org"],
                m["name"],
                m["scope"],
                m["via"],
                m["credential"],
                m["csrf"],
                m["expires_at"],
            )
            if len(self._cache) >= CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = session
        if session.expires_at <= now:
            self._cache.pop(key, None)
            return None
        return session

    def forget(self, session_id: str) -> None:
        self._cache.pop(digest(session_id), None)
