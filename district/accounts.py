"""Desk accounts: who may do what, passwords hashed with Argon2id, and server-side sessions.

Sessions live in the database, not in a signed cookie, so that logging out or removing a user ends them at
once on every desk process. Each session carries its own CSRF token, which every state-changing request
must echo in a header; the cookie itself is HttpOnly and SameSite=Strict.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, delete, select, update

from district.schema import sessions, users

ROLES = ("viewer", "operator", "supervisor")
# What each role may do; a supervisor may do everything an operator may.
ACTIONS = {
    "viewer": frozenset(),
    "operator": frozenset({"ack", "dispatch", "report"}),
    "supervisor": frozenset({"ack", "dispatch", "report", "close", "send-back", "command", "rules", "rollout"}),
}
SESSION_S = 12 * 3600  # one duty shift
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
MIN_PASSWORD = 10
MAX_PASSWORD = 256

# Argon2id's cost: argon2-cffi's default (RFC 9106's second choice, 64 MiB and 3 passes) unless district.toml's
# [accounts] lowers it for a small desk machine, never below the least the OWASP Password Storage Cheat Sheet
# gives for Argon2id (19 MiB, 2 passes)
HASH_MEMORY_KIB, HASH_TIME_COST = 65536, 3
LEAST_MEMORY_KIB, LEAST_TIME_COST = 19456, 2
MOST_MEMORY_KIB, MOST_TIME_COST = 1 << 20, 10  # a login costs a desk more than a gibibyte or ten passes: a typo

_hasher = PasswordHasher(time_cost=HASH_TIME_COST, memory_cost=HASH_MEMORY_KIB)


def set_cost(memory_kib: int, time_cost: int) -> None:
    """Hash passwords at this cost from now on in this process (read from district.toml at start). A password
    hashed at another cost is still checked, and rehashed at this one when its user next logs in."""
    global _hasher
    if not (LEAST_MEMORY_KIB <= memory_kib <= MOST_MEMORY_KIB and LEAST_TIME_COST <= time_cost <= MOST_TIME_COST):
        raise ValueError(f"Argon2id cost out of range: {memory_kib} KiB, {time_cost} passes")
    _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)


class AccountError(ValueError):
    """A bad name, role or password: the message says which."""


@dataclass(frozen=True)
class Session:
    token: str
    user: str
    role: str
    csrf: str
    expires: float = math.inf

    def may(self, action: str) -> bool:
        return action in ACTIONS[self.role]


def add_user(conn: Connection, name: str, role: str, password: str, *, now: float | None = None) -> None:
    if not NAME.fullmatch(name):
        raise AccountError("user name: 1-64 of a-z 0-9 _ . -, starting with a letter or digit")
    if role not in ROLES:
        raise AccountError(f"role: one of {', '.join(ROLES)}")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"password: {MIN_PASSWORD}-{MAX_PASSWORD} characters")
    if conn.execute(select(users.c.name).where(users.c.name == name)).first() is not None:
        raise AccountError(f"user {name!r} exists")
    conn.execute(users.insert().values(name=name, role=role, pw_hash=_hasher.hash(password),
                                       created=time.time() if now is None else now))


def log_in(conn: Connection, name: str, password: str, *, now: float | None = None) -> Session | None:
    """A new session, or None for a wrong name or password (the caller does not learn which). The desk runs the
    three steps apart, the hash outside any transaction."""
    ok, rehashed = verify(stored_hash(conn, name), password)
    return open_session(conn, name, rehashed=rehashed, now=now) if ok else None


def stored_hash(conn: Connection, name: str) -> str | None:
    return conn.execute(select(users.c.pw_hash).where(users.c.name == name)).scalar()


def verify(pw_hash: str | None, password: str) -> tuple[bool, str | None]:
    """Whether the password is the one `pw_hash` (None: no such user) was made of, and its new hash when the
    hasher's parameters have changed since. Argon2id: 64 MiB and a tenth of a second of a core each, no user
    (the same work as a real check, so a wrong name takes as long as a wrong password) or not."""
    if pw_hash is None:
        _hasher.hash(password)
        return False, None
    try:
        _hasher.verify(pw_hash, password)
    except (VerificationError, InvalidHashError):
        return False, None
    return True, _hasher.hash(password) if _hasher.check_needs_rehash(pw_hash) else None


def open_session(conn: Connection, name: str, *, rehashed: str | None = None, now: float | None = None
                 ) -> Session | None:
    """A new session of a user whose password was verified (and its new hash, if any), or None if the user
    was removed meanwhile."""
    now = time.time() if now is None else now
    role = conn.execute(select(users.c.role).where(users.c.name == name)).scalar()
    if role is None:
        return None
    if rehashed is not None:
        conn.execute(update(users).where(users.c.name == name).values(pw_hash=rehashed))
    s = Session(secrets.token_urlsafe(32), name, role, secrets.token_urlsafe(32), now + SESSION_S)
    conn.execute(sessions.insert().values(token=s.token, user=name, csrf=s.csrf, created=now, expires=s.expires))
    return s


def session(conn: Connection, token: str | None, *, now: float | None = None) -> Session | None:
    """The live session of a cookie, with the user's role as it is now."""
    if not token:
        return None
    now = time.time() if now is None else now
    row = conn.execute(select(sessions.c.token, sessions.c.csrf, sessions.c.expires, users.c.name, users.c.role)
                       .join(users, users.c.name == sessions.c.user)
                       .where(sessions.c.token == token, sessions.c.expires > now)).first()
    return None if row is None else Session(row.token, row.name, row.role, row.csrf, row.expires)


def log_out(conn: Connection, token: str) -> None:
    conn.execute(delete(sessions).where(sessions.c.token == token))
