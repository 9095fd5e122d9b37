"""The ledger store's one interface, and what every back-end shares.

A ``RecordBatch`` is written in one transaction: all of it or none of it. Every row has
a deterministic key (``entry_id``; ``(region, order_id)`` for orders and cancellations;
``(region, settlement_id)``; ``(region, participant_id, slot)`` for readings;
``(region, slot)`` for reconciled slots) and a row whose key is already stored is
skipped, not an error: writing the same batch twice changes nothing and reports zeros.
The first reading for a participant and slot stands. Entries and settlements keep the
order they were given in within a slot.

Money and energy stay exact: prices are ``Decimal`` (never ``float``), quantities
``int``. ``check_types`` refuses anything else before any I/O, in every back-end.
``check_constraints`` is the in-memory twin's copy of the schema's NOT NULL and CHECK
constraints; the SQL back-ends leave those to the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, TypeVar

from shared.market.ledger import EntryKind, LedgerEntry
from shared.market.matching import Settlement
from shared.market.orders import Order, Side
from shared.market.reconciliation import Reading
from shared.market.timing import Slot

SCHEMA_VERSION = 1
_R = TypeVar("_R")
ENTRY_KINDS: tuple[str, ...] = tuple(k.value for k in EntryKind)
SIDES: tuple[str, ...] = tuple(s.value for s in Side)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class InvalidRecord(ValueError):
    """A record the store refuses; nothing of its batch was written."""


class ConstraintViolation(InvalidRecord):
    """The schema (NOT NULL, CHECK) refused a record; the whole batch was rolled back."""


@dataclass(frozen=True)
class HeldSlot:
    slot: Slot
    stage: str  # "clearing" or "reconciliation"
    error: str


HELD_STAGES = ("clearing", "reconciliation")
MEMBERSHIP_EVENTS = ("joined", "left")


class StoreNotOpen(RuntimeError):
    """The store was used before ``open()`` or after ``close()``."""


@dataclass(frozen=True)
class RecordBatch:
    entries: Sequence[LedgerEntry] = ()
    orders: Sequence[tuple[str, Order]] = ()  # (region, order)
    settlements: Sequence[Settlement] = ()  # Settlement has .region
    readings: Sequence[tuple[str, Reading, int]] = ()  # (region, reading, received_at_ms)
    reconciled: Sequence[tuple[str, Slot, int]] = ()  # (region, slot, entry_count): slot fully recorded
    cancellations: Sequence[tuple[str, str, Slot]] = ()  # (region, order_id, slot): cancelled before its gate
    # (region, slot, stage, error): a slot the services could not clear or reconcile; it has
    # no settlements or entries until an operator replays it (``microte replay-slot``).
    held: Sequence[tuple[str, Slot, str, str]] = ()
    # The round state's record, from which the services rebuild Redis if it is lost:
    rounds: Sequence[tuple[str, int, int, int]] = ()  # (region, round start, fence, started_at_ms)
    memberships: Sequence[tuple[str, str, str, int]] = ()  # (region, participant, "joined" | "left", at_ms)
    # (region, participant, agent, joined_at_ms): the aggregator named at that join
    agents: Sequence[tuple[str, str, str, int]] = ()
    # (region, participant, import_w, export_w, joined_at_ms): the connection, in W (None: no
    # limit), the member was held to from that join
    connections: Sequence[tuple[str, str, int | None, int | None, int]] = ()
    # (region, settings): the market settings the region runs with, as a JSON object of
    # MICROTE_* values (shared.runtime.settings.market_record); the first stored stays.
    market_settings: Sequence[tuple[str, str]] = ()
    # (region, community): who a simulated region's households are and what they own, as a
    # JSON object (services.participants.scenario.community_record); the first stored stays.
    # A description, not a record of the market: it makes no region.
    communities: Sequence[tuple[str, str]] = ()
    # (region, slot, revision, participant, entry_count): a true-up revision for that member's late reading
    adjusted: Sequence[tuple[str, Slot, int, str, int]] = ()
    finalized: Sequence[tuple[str, Slot, int]] = ()  # (region, slot, revisions): its true-up window closed

    def regions(self) -> set[str]:
        return (
            {e.region for e in self.entries}
            | {r for r, _ in self.orders}
            | {s.region for s in self.settlements}
            | {r for r, _, _ in self.readings}
            | {r for r, _, _ in self.reconciled}
            | {r for r, _, _, _, _ in self.adjusted}
            | {r for r, _, _ in self.finalized}
            | {r for r, _, _ in self.cancellations}
            | {r for r, _, _, _ in self.held}
            | {r for r, _, _, _ in self.rounds}
            | {r for r, _, _, _ in self.memberships}
            | {r for r, _, _, _ in self.agents}
            | {r for r, _, _, _, _ in self.connections}
            | {r for r, _ in self.market_settings}
        )


@dataclass(frozen=True)
class WriteResult:
    """Rows actually inserted (rows whose key was already stored are skipped)."""

    entries: int = 0
    orders: int = 0
    settlements: int = 0
    readings: int = 0
    reconciled: int = 0
    cancellations: int = 0
    held: int = 0
    rounds: int = 0
    memberships: int = 0
    agents: int = 0
    connections: int = 0
    adjusted: int = 0
    finalized: int = 0


class LedgerStore(Protocol):
    async def open(self) -> None:
        """Connect and create the schema if it is missing (idempotent)."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True when the store answers a trivial query now (for health checks)."""

    async def write(self, batch: RecordBatch) -> WriteResult:
        """One transaction, all or nothing; rows already stored are skipped."""

    async def entries(self, region: str, start: int | None = None, end: int | None = None) -> list[LedgerEntry]:
        """Entries of slots with ``slot.start >= start`` and ``slot.end <= end``, by slot, then as written."""

    async def orders(self, region: str) -> list[Order]:
        """By slot, then acceptance sequence (``Order.seq``), then order id."""

    async def settlements(self, region: str) -> list[Settlement]:
        """By slot, then as written (matching order is preserved)."""

    async def readings(self, region: str) -> list[Reading]:
        """By slot, then participant id."""

    async def reconciled_slots(self, region: str) -> list[Slot]: ...

    async def adjustments(self, region: str) -> list[tuple[Slot, int, str]]:
        """(slot, revision, participant whose late reading it adjusts for), by slot then revision."""

    async def final_slots(self, region: str) -> list[tuple[Slot, int]]:
        """(slot, revisions) of every slot whose true-up window closed, by slot."""

    async def held_slots(self, region: str) -> list[HeldSlot]:
        """Slots held because clearing or reconciliation failed, by slot (replayed ones too:
        a held slot that is also reconciled has been replayed)."""

    async def rounds(self, region: str) -> list[tuple[int, int]]:
        """(round start, fence) of every round started, by start then fence."""

    async def members(self, region: str) -> list[str]:
        """Participants whose last membership event is a join, by id."""

    async def agents(self, region: str) -> dict[str, str]:
        """The agent each current member named when it last joined (members without one are absent)."""

    async def connections(self, region: str) -> dict[str, tuple[int | None, int | None]]:
        """The connection (import W, export W; None: no limit) each current member was held to
        from its last join (members held to none are absent)."""

    async def cancelled_orders(self, region: str) -> list[str]:
        """Ids of the orders cancelled before their gate closed, by slot, then order id."""

    async def regions(self) -> list[str]:
        """Every region with at least one stored row, sorted."""

    async def market_settings(self, region: str) -> str | None:
        """The market settings the region's ledger keeps (a JSON object), or None."""

    async def community(self, region: str) -> str | None:
        """The simulated community the region's ledger keeps (a JSON object), or None."""


# --- Type guard: every back-end, before any I/O -------------------------------------


def _text(what: str, name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidRecord(f"{what}: {name} must be text, got {type(value).__name__}")
    if "\x00" in value:  # PostgreSQL text cannot hold it; refuse it everywhere alike
        raise InvalidRecord(f"{what}: {name} holds a NUL character")


def _whole(what: str, name: str, value: object) -> None:
    if type(value) is not int:
        raise InvalidRecord(f"{what}: {name} must be an int, got {type(value).__name__}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise InvalidRecord(f"{what}: {name} {value} does not fit a 64-bit integer")


def _price(what: str, name: str, value: object) -> None:
    if type(value) is not Decimal:
        raise InvalidRecord(f"{what}: {name} must be a Decimal, got {type(value).__name__}")
    if not value.is_finite():
        raise InvalidRecord(f"{what}: {name} must be finite, got {value}")


def _slot(what: str, slot: object) -> None:
    if not isinstance(slot, Slot):
        raise InvalidRecord(f"{what}: slot must be a Slot, got {type(slot).__name__}")
    _whole(what, "slot.start", slot.start)
    _whole(what, "slot.end", slot.end)


def _meter(what: str, name: str, by_source: object) -> None:
    if not isinstance(by_source, Mapping):
        raise InvalidRecord(f"{what}: {name} must be a mapping, got {type(by_source).__name__}")
    for source, wh in by_source.items():
        _text(what, f"{name} key", source)
        _whole(what, f"{name}[{source}]", wh)
        if wh < 0:
            raise InvalidRecord(f"{what}: {name}[{source}] must be >= 0, got {wh}")


def check_types(batch: RecordBatch) -> None:
    """Raise ``InvalidRecord`` unless every field has its exact type (no floats, no None)."""
    for e in batch.entries:
        what = f"ledger entry {e.entry_id!r}"
        for name in ("entry_id", "region", "kind", "seller", "buyer", "source"):
            _text(what, name, getattr(e, name))
        _slot(what, e.slot)
        _whole(what, "quantity_wh", e.quantity_wh)
        _whole(what, "delivered_at", e.delivered_at)
        _price(what, "buy_price", e.buy_price)
        _price(what, "sell_price", e.sell_price)
        if e.settlement_id is not None:
            _text(what, "settlement_id", e.settlement_id)
        if e.matched_at_ms is not None:
            _whole(what, "matched_at_ms", e.matched_at_ms)
        _whole(what, "revision", e.revision)
        if type(e.reverses) is not bool:
            raise InvalidRecord(f"{what}: reverses must be a bool, got {type(e.reverses).__name__}")
    for region, o in batch.orders:
        what = f"order {o.order_id!r}"
        _text(what, "region", region)
        for name in ("order_id", "client_order_id", "participant_id", "side", "source"):
            _text(what, name, getattr(o, name))
        _slot(what, o.slot)
        for name in ("quantity_wh", "seq", "submitted_at_ms"):
            _whole(what, name, getattr(o, name))
        _price(what, "price", o.price)
    for s in batch.settlements:
        what = f"settlement {s.settlement_id!r}"
        for name in ("settlement_id", "region", "source", "buyer", "seller", "bid_id", "ask_id"):
            _text(what, name, getattr(s, name))
        _slot(what, s.slot)
        _whole(what, "quantity_wh", s.quantity_wh)
        _whole(what, "matched_at_ms", s.matched_at_ms)
        _price(what, "buy_price", s.buy_price)
        _price(what, "sell_price", s.sell_price)
    for region, r, received_at_ms in batch.readings:
        what = f"reading of {r.participant_id!r}"
        _text(what, "region", region)
        _text(what, "participant_id", r.participant_id)
        _slot(what, r.slot)
        _whole(what, "import_wh", r.import_wh)
        _whole(what, "received_at_ms", received_at_ms)
        _meter(what, "export_wh", r.export_wh)
        _meter(what, "self_consumed_wh", r.self_consumed_wh)
    for region, slot, entry_count in batch.reconciled:
        what = f"reconciled slot {slot}"
        _text(what, "region", region)
        _slot(what, slot)
        _whole(what, "entry_count", entry_count)
    for region, slot, revision, pid, entry_count in batch.adjusted:
        what = f"adjustment {revision} of slot {slot}"
        _text(what, "region", region)
        _slot(what, slot)
        _text(what, "participant_id", pid)
        _whole(what, "revision", revision)
        _whole(what, "entry_count", entry_count)
    for region, slot, revisions in batch.finalized:
        what = f"final slot {slot}"
        _text(what, "region", region)
        _slot(what, slot)
        _whole(what, "revisions", revisions)
    for region, order_id, slot in batch.cancellations:
        what = f"cancellation of {order_id!r}"
        _text(what, "region", region)
        _text(what, "order_id", order_id)
        _slot(what, slot)
    for region, start, fence, at_ms in batch.rounds:
        what = f"round {start}"
        _text(what, "region", region)
        for name, number in (("round_start", start), ("fence", fence), ("started_at_ms", at_ms)):
            _whole(what, name, number)
    for region, pid, event, at_ms in batch.memberships:
        what = f"membership of {pid!r}"
        for name, text in (("region", region), ("participant_id", pid), ("event", event)):
            _text(what, name, text)
        _whole(what, "at_ms", at_ms)
    for region, pid, agent, at_ms in batch.agents:
        what = f"agent of {pid!r}"
        for name, text in (("region", region), ("participant_id", pid), ("agent", agent)):
            _text(what, name, text)
        _whole(what, "joined_at_ms", at_ms)
    for region, pid, import_w, export_w, at_ms in batch.connections:
        what = f"connection of {pid!r}"
        for name, text in (("region", region), ("participant_id", pid)):
            _text(what, name, text)
        for name, watts in (("import_w", import_w), ("export_w", export_w)):
            if watts is not None:
                _whole(what, name, watts)
        _whole(what, "joined_at_ms", at_ms)
    for region, settings in batch.market_settings:
        _text("market settings", "region", region)
        _text("market settings", "settings", settings)
    for region, described in batch.communities:
        _text("community", "region", region)
        _text("community", "community", described)
    for region, slot, stage, error in batch.held:
        what = f"held slot {slot}"
        _text(what, "region", region)
        _slot(what, slot)
        _text(what, "stage", stage)
        _text(what, "error", error)


# --- The schema's CHECK constraints, for the in-memory twin -------------------------


def check_constraints(batch: RecordBatch) -> None:
    """Raise ``ConstraintViolation`` where the SQL schema's CHECK constraints would."""

    def fail(table: str, rule: str, key: object) -> None:
        raise ConstraintViolation(f"{table}: {rule} violated by {key!r}")

    for e in batch.entries:
        if e.kind not in ENTRY_KINDS:
            fail("ledger_entries", "kind is an EntryKind", e.entry_id)
        if e.quantity_wh < 0:
            fail("ledger_entries", "quantity_wh >= 0", e.entry_id)
        if e.buy_price < 0 or e.sell_price < 0:
            fail("ledger_entries", "prices >= 0", e.entry_id)
    for _, o in batch.orders:
        if o.side not in SIDES:
            fail("orders", "side in (bid, ask)", o.order_id)
        if o.quantity_wh <= 0:
            fail("orders", "quantity_wh > 0", o.order_id)
        if o.price < 0:
            fail("orders", "price >= 0", o.order_id)
    for s in batch.settlements:
        if s.quantity_wh <= 0:
            fail("settlements", "quantity_wh > 0", s.settlement_id)
        if s.buy_price < 0 or s.sell_price < 0:
            fail("settlements", "prices >= 0", s.settlement_id)
    for _, r, _ in batch.readings:
        if r.import_wh < 0:
            fail("meter_readings", "import_wh >= 0", r.participant_id)
    for _, pid, import_w, export_w, _ in batch.connections:
        if any(w is not None and w < 0 for w in (import_w, export_w)):
            fail("connection_registrations", "import_w, export_w >= 0", pid)
    for _, slot, entry_count in batch.reconciled:
        if entry_count < 0:
            fail("reconciled_slots", "entry_count >= 0", str(slot))
    for _, slot, revision, _, entry_count in batch.adjusted:
        if revision < 1 or entry_count < 0:
            fail("slot_adjustments", "revision >= 1, entry_count >= 0", str(slot))
    for _, slot, revisions in batch.finalized:
        if revisions < 0:
            fail("final_slots", "revisions >= 0", str(slot))
    for e in batch.entries:
        if e.revision < 0:
            fail("ledger_entries", "revision >= 0", e.entry_id)
    for _, slot, stage, _ in batch.held:
        if stage not in HELD_STAGES:
            fail("held_slots", "stage in (clearing, reconciliation)", str(slot))
    for _, pid, event, _ in batch.memberships:
        if event not in MEMBERSHIP_EVENTS:
            fail("membership_events", "event in (joined, left)", pid)


def current_registrations(events: Iterable[tuple[str, str, int]], registrations: Iterable[tuple[str, _R, int]]
                          ) -> dict[str, _R]:
    """What each current member registered with its last join (its agent, its connection).
    ``events``: (participant, event, at_ms); ``registrations``: (participant, value, joined_at_ms)."""
    last_join: dict[str, int] = {}
    events = list(events)
    for pid, event, at_ms in events:
        if event == "joined" and at_ms >= last_join.get(pid, -1):
            last_join[pid] = at_ms
    named = {(pid, at_ms): agent for pid, agent, at_ms in registrations}
    return {pid: named[pid, last_join[pid]] for pid in current_members(events) if (pid, last_join[pid]) in named}


def current_members(events: Iterable[tuple[str, str, int]]) -> list[str]:
    """Participants whose last (participant, event, at_ms) is a join; a join and a leave at
    the same millisecond count as a leave."""
    last: dict[str, tuple[int, int]] = {}
    for pid, event, at_ms in events:
        key = (at_ms, 1 if event == "left" else 0)
        if pid not in last or key > last[pid]:
            last[pid] = key
    return sorted(pid for pid, (_, left) in last.items() if not left)
