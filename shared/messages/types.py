"""Every message the services and participants exchange, defined once.

Messages are frozen msgspec Structs, tagged by class name, MessagePack on the wire and
decoded strictly: a string where an integer belongs is an error, and so is an unknown
field. Messages only grow: new fields get defaults; nothing is renamed or retyped.

Prices travel as exact decimal text (``"0.1449"``), never as binary floats; the market
core judges their value (tick, range) so that a bad price gets ``invalid_price``.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

# \Z, not $: a "$" also matches before a trailing newline, and "p1\n" is not an id.
Id = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}\Z")]  # safe inside routing keys
PriceText = Annotated[str, Meta(pattern=r"^-?[0-9]{1,9}(\.[0-9]{1,12})?\Z")]
Reason = Annotated[str, Meta(max_length=64)]
Text = Annotated[str, Meta(max_length=1000)]
Source = Annotated[str, Meta(max_length=32)]
EnergyBySource = dict[Source, int]


class Message(msgspec.Struct, frozen=True, tag=True, forbid_unknown_fields=True, kw_only=True):
    region: Id


class Slot(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    start: int
    end: int


# --- requests from participants -------------------------------------------------------


class JoinMarket(Message, frozen=True):
    participant_id: Id


class Heartbeat(Message, frozen=True):
    participant_id: Id


class LeaveMarket(Message, frozen=True):
    participant_id: Id


class SubmitOrder(Message, frozen=True):
    participant_id: Id
    client_order_id: Id
    side: Annotated[str, Meta(max_length=8)]
    quantity_wh: int
    price: PriceText
    source: Source
    slot: Slot


class CancelOrder(Message, frozen=True):
    participant_id: Id
    client_order_id: Id
    slot: Slot


class SubmitReading(Message, frozen=True):
    participant_id: Id
    slot: Slot
    import_wh: int
    export_wh: EnergyBySource = {}
    self_consumed_wh: EnergyBySource = {}


class FinishRound(Message, frozen=True):
    """A participant is done with the round that started at ``round_start``."""

    participant_id: Id
    round_start: int


# --- answers to participants ----------------------------------------------------------


class MemberJoined(Message, frozen=True):
    participant_id: Id
    joined_at_ms: int


class MemberLeft(Message, frozen=True):
    participant_id: Id


class OrderAccepted(Message, frozen=True):
    order_id: Id
    client_order_id: Id
    participant_id: Id
    side: str
    quantity_wh: int
    price: PriceText
    source: Source
    slot: Slot
    seq: int
    submitted_at_ms: int
    duplicate: bool = False


class OrderCancelled(Message, frozen=True):
    participant_id: Id
    client_order_id: Id
    order_id: Id
    slot: Slot


class Rejected(Message, frozen=True):
    """The answer to any request that was refused, with the rule it broke."""

    participant_id: Id
    request: Annotated[str, Meta(max_length=32)]
    reason: Reason
    detail: Text = ""
    reference: Annotated[str, Meta(max_length=128)] = ""


class ReadingAccepted(Message, frozen=True):
    participant_id: Id
    slot: Slot
    import_wh: int
    export_wh: EnergyBySource
    self_consumed_wh: EnergyBySource
    received_at_ms: int
    duplicate: bool = False


class SettlementRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    settlement_id: Id
    source: Source
    buyer: Id
    seller: Id
    bid_id: Id
    ask_id: Id
    quantity_wh: int
    buy_price: PriceText
    sell_price: PriceText


class SettlementsNotice(Message, frozen=True):
    participant_id: Id
    slot: Slot
    settlements: list[SettlementRecord]


class EntryRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    entry_id: Id
    kind: Reason
    seller: Id
    buyer: Id
    source: Source
    quantity_wh: int
    buy_price: PriceText
    sell_price: PriceText
    settlement_id: Id | None = None
    matched_at_ms: int | None = None


class Statement(Message, frozen=True):
    participant_id: Id
    slot: Slot
    entries: list[EntryRecord]


# --- facts between services -----------------------------------------------------------


class GridQuote(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    slot: Slot
    buy_price: PriceText
    sell_price: PriceText


class RoundStarted(Message, frozen=True):
    fence: int
    started_at_ms: int
    duration: int
    close_steps: int
    timezone: Text
    current_round: Slot
    last_settle: Slot
    next_settle: Slot
    grid: list[GridQuote]  # current_round and next_settle, each priced for itself
    final_round_start: int = 0  # simulation: the last round that will start (0: open-ended)


class SlotCleared(Message, frozen=True):
    slot: Slot
    rule: Reason
    matched_at_ms: int
    order_count: int
    settlements: list[SettlementRecord]


class SlotReconciled(Message, frozen=True):
    slot: Slot
    reconciled_at_ms: int
    missing_readings: list[Id]
    entries: list[EntryRecord]
    settled_wh: int = 0  # energy of the slot's settlements, for the ledger's balance check


class SlotRecorded(Message, frozen=True):
    slot: Slot
    entry_count: int


REQUESTS = (JoinMarket, Heartbeat, LeaveMarket, SubmitOrder, CancelOrder, SubmitReading, FinishRound)
ANSWERS = (MemberJoined, MemberLeft, OrderAccepted, OrderCancelled, Rejected, ReadingAccepted,
           SettlementsNotice, Statement)
FACTS = (RoundStarted, SlotCleared, SlotReconciled, SlotRecorded)
ALL_MESSAGES = REQUESTS + ANSWERS + FACTS
