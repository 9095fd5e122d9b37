"""Hostile bytes, signatures, routing keys, and telling an outage from a bad message."""

from __future__ import annotations

import sqlite3

import aiormq.exceptions
import asyncpg
import msgpack
import pytest
import redis.exceptions

from shared.messages import Undecodable, decode, sender_of
from shared.runtime.outages import backoff_s, is_outage
from shared.runtime.topology import bounded_key, parse_key
from shared.runtime.trust import Signer, TrustError, service_users

KEY = "k" * 40


@pytest.mark.parametrize("body", [
    b"\x91" * 200_000 + b"\xc0",  # arrays inside arrays
    b"\x81\xa1a" * 200_000 + b"\xc0",  # maps inside maps
    msgpack.packb({"type": "SubmitOrder", "participant_id": "h1", "x": [[[[[[]]]]]]}),
])
def test_deeply_nested_or_wrong_bodies_are_refused_cleanly(body: bytes) -> None:
    with pytest.raises(Undecodable):
        decode(body)
    assert sender_of(body) in (None, ("h1", ""))


def test_a_sender_is_named_only_by_a_valid_participant_id() -> None:
    assert sender_of(msgpack.packb({"participant_id": "h1", "client_order_id": "c9", "junk": [1] * 10})) == ("h1", "c9")
    assert sender_of(msgpack.packb({"participant_id": "h1\n"})) is None
    assert sender_of(msgpack.packb({"participant_id": 5})) is None
    assert sender_of(b"\xc1") is None


def test_a_signature_binds_the_routing_key_and_the_body() -> None:
    signer = Signer(KEY)
    tag = signer.sign("r1.fact.slot_cleared", b"body")
    assert signer.verify("r1.fact.slot_cleared", b"body", tag)
    assert signer.verify("r1.fact.slot_cleared", b"body", tag.encode())
    assert not signer.verify("r1.fact.slot_reconciled", b"body", tag)
    assert not signer.verify("r1.fact.slot_cleared", b"body!", tag)
    assert not signer.verify("r1.fact.slot_cleared", b"body", None)
    assert not signer.verify("r1.fact.slot_cleared", b"body", 12)
    assert not Signer("x" * 40).verify("r1.fact.slot_cleared", b"body", tag)


def test_a_short_or_missing_service_key_is_refused_with_a_way_out() -> None:
    with pytest.raises(TrustError, match="MICROTE_SERVICE_KEY"):
        Signer("")
    with pytest.raises(TrustError, match="at least 32"):
        Signer("short")


def test_service_users_are_a_comma_separated_set() -> None:
    assert service_users(" a, b ,,c ") == frozenset({"a", "b", "c"})
    assert service_users("") == frozenset()


@pytest.mark.parametrize(("key", "parsed"), [
    ("r1.in.order", ("in", "order", "")),
    ("r1.fact.slot_cleared", ("fact", "slot_cleared", "")),
    ("r1.to.h001.order_accepted", ("to", "order_accepted", "h001")),
    ("r1.to.*.order_accepted", ("to", "order_accepted", "*")),
    ("r2.in.order", None),
    ("r1.in.order.h001", ("in", "order", "h001")),
    ("r1.in.reading.*", ("in", "reading", "*")),
    ("r1.in.order.", None),
    ("r1.in.order.h001.x", None),
    ("r1.fact", None),
    ("r1.to.h001", None),
    ("r1.out.order", None),
    ("", None),
])
def test_routing_keys_parse_into_channel_kind_and_addressee(key: str, parsed: tuple[str, str, str] | None) -> None:
    assert parse_key("r1", key) == parsed


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(),
    TimeoutError(),
    redis.exceptions.ConnectionError("reset"),
    redis.exceptions.BusyLoadingError("loading"),
    redis.exceptions.TimeoutError(),
    aiormq.exceptions.ChannelInvalidStateError("closed"),
    asyncpg.exceptions.CannotConnectNowError("starting up"),
    asyncpg.exceptions.AdminShutdownError("terminating connection"),
    asyncpg.exceptions.InterfaceError("connection is closed"),
    sqlite3.OperationalError("database is locked"),
])
def test_an_unreachable_dependency_is_an_outage(exc: Exception) -> None:
    assert is_outage(exc)


@pytest.mark.parametrize("exc", [
    ValueError("bad quantity"),
    KeyError("x"),
    asyncpg.exceptions.UniqueViolationError("duplicate"),
    asyncpg.exceptions.CheckViolationError("quantity_wh >= 0"),
    sqlite3.IntegrityError("CHECK constraint failed"),
    redis.exceptions.ResponseError("WRONGTYPE"),
])
def test_a_bad_message_is_not_an_outage(exc: Exception) -> None:
    assert not is_outage(exc)


def test_an_outage_is_found_anywhere_in_the_exception_chain() -> None:
    try:
        try:
            raise redis.exceptions.ConnectionError("gone")
        except redis.exceptions.ConnectionError as inner:
            raise RuntimeError("while clearing") from inner
    except RuntimeError as outer:
        assert is_outage(outer)


def test_backoff_grows_and_is_capped() -> None:
    waits = [backoff_s(i) for i in range(12)]
    assert waits == sorted(waits)
    assert waits[0] == 0.25 and waits[-1] == 10.0


@pytest.mark.parametrize(("key", "label"), [
    ("r1.to.h001.order_accepted", "r1.to.*.order_accepted"),
    ("r1.to.someone-else.statement", "r1.to.*.statement"),
    ("r1.in.order", "r1.in.order"),
    ("r1.in.reading.h001", "r1.in.reading.*"),
    ("r1.fact.slot_cleared", "r1.fact.slot_cleared"),
    ("r1.whatever.a.b.c", "other"),
    ("", "other"),
])
def test_broker_metric_labels_never_name_a_participant(key: str, label: str) -> None:
    assert bounded_key(key) == label
