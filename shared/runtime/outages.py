"""Telling an unreachable dependency from a bad message.

A handler that fails because Redis, RabbitMQ or the ledger database cannot be reached
must never dead-letter its message: the message is fine, the world is not. This module
names the exceptions that mean "a dependency is away" (anywhere in the exception's
chain), so that the service scaffold keeps such a message unacknowledged and tries
again with backoff until the dependency is back.
"""

from __future__ import annotations

import sqlite3

import aiormq.exceptions as amqp
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import redis.exceptions as redis_errors

_AWAY: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError, TimeoutError, socket errors
    redis_errors.ConnectionError,  # BusyLoadingError too: Redis is loading its data after a restart
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,  # a replica that was a primary: failover in progress
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
    amqp.AMQPConnectionError,
    amqp.ChannelInvalidStateError,
    amqp.ConnectionClosed,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,  # "connection is closed", pool closing
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,  # transient by definition: run the transaction again
    asyncpg.exceptions.DeadlockDetectedError,
)

# SQLSTATE classes of PostgreSQL errors that are about the server, not the data.
_PG_AWAY_CLASSES = ("08", "53", "57", "58")
_SQLITE_AWAY = ("locked", "busy", "disk i/o", "unable to open", "readonly database")


def _away(exc: BaseException) -> bool:
    if isinstance(exc, _AWAY):
        return True
    if isinstance(exc, asyncpg.exceptions.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "")[:2] in _PG_AWAY_CLASSES
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return any(word in text for word in _SQLITE_AWAY)
    return False


def is_outage(exc: BaseException) -> bool:
    """True when ``exc``, or anything in its cause or context chain, says a dependency is away."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if _away(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def backoff_s(attempt: int, *, first: float = 0.25, cap: float = 10.0) -> float:
    """Exponential backoff without randomness (the caller's timing is deterministic enough)."""
    return float(min(cap, first * 2.0 ** min(attempt, 16)))
