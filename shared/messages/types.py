"""Every message the services and participants exchange, defined once.

Messages are frozen msgspec Structs, tagged by class name, MessagePack on the wire and
decoded strictly: a string where an integer belongs is an error, and so is an unknown
field. Messages only grow: new fields get defaults; nothing is renamed or retyped.

Prices travel as exact decimal text (``"0.1449"``), never as binary floats; the market
core judges their value (tick, range) so that a bad price gets ``invalid_price``.

Every integer is bounded here too, but loosely: the decoder refuses only absurd values
(as malformed), and the market core judges the rest, so that an order of 10**9 + 1 Wh
gets ``quantity_too_large``, 0 Wh gets ``invalid_quantity``, and neither is malformed.
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

# Wire bounds, looser than the market's own limits (shared.market.numbers: MAX_ORDER_WH,
# MAX_READING_WH = 10**9, MAX_READING_SOURCES = 3) so that a value just beyond those still
# decodes and is refused with its own reason. 2**53 is the largest integer that every
# JSON reader holds exactly, and a thousand such values still sum inside int64.
WIRE_MAX_WH = 2**53
WIRE_MAX_INT = 2**53  # UNIX seconds and milliseconds, sequence numbers, counts
WIRE_MAX_SOURCES = 8  # keys of one meter map

# Signed on purpose: 0 and negative quantities decode, and the core says invalid_quantity.
Wh = Annotated[int, Meta(ge=-WIRE_MAX_WH, le=WIRE_MAX_WH)]
Int = Annotated[int, Meta(ge=-WIRE_MAX_INT, le=WIRE_MAX_INT)]
EnergyBySource = Annotated[dict[Source, Wh], Meta(max_length=WIRE_MAX_SOURCES)]


class Message(msgspec.Struct, frozen=True, tag=True, forbid_unknown_fields=True, kw_only=True):
    region: Id


class Slot(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    start: Int
    end: Int


# --- requests from participants -------------------------------------------------------


class JoinMarket(Message, frozen=True):
    participant_id: Id
    # An aggregator (a home-energy-management vendor, a fleet operator) that may submit
    # for this participant in its batches; empty: only the participant itself.
    agent: Id | None = None
    # The household's connection to the network, in W: what it can draw (import) and feed
    # in (export). Its offers, bids and readings for a slot are held to it times the slot's
    # length; the region's MICROTE_MAX_IMPORT_W / MICROTE_MAX_EXPORT_W cap it. None: the
    # region's cap alone, if it has one.
    import_w: Int | None = None
    export_w: Int | None = None


class Heartbeat(Message, frozen=True):
    participant_id: Id


class LeaveMarket(Message, frozen=True):
    participant_id: Id


class SubmitOrder(Message, frozen=True):
    participant_id: Id
    client_order_id: Id
    side: Annotated[str, Meta(max_length=8)]
    quantity_wh: Wh
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
    import_wh: Wh
    export_wh: EnergyBySource = {}
    self_consumed_wh: EnergyBySource = {}


class FinishRound(Message, frozen=True):
    """A participant is done with the round that started at ``round_start``."""

    participant_id: Id
    round_start: Int


# A batch: one request for a household's whole round (its orders, cancels, reading and
# "finished"), or for many households that an aggregator acts for. Every item gets its own
# answer, the same struct a single request gets, inside one ``BatchAnswered`` per service
# (order-intake answers orders, cancels and finishes; meter-collector answers readings).
# Every id is the one the single request gives, so a repeated batch changes nothing.

MAX_BATCH_ITEMS = 10_000  # participants in one batch
MAX_ITEM_ORDERS = 64  # orders, and cancels, of one participant in one batch


class OrderItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    client_order_id: Id
    side: Annotated[str, Meta(max_length=8)]
    quantity_wh: Wh
    price: PriceText
    source: Source
    slot: Slot


class CancelItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    client_order_id: Id
    slot: Slot


class ReadingItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    slot: Slot
    import_wh: Wh
    export_wh: EnergyBySource = {}
    self_consumed_wh: EnergyBySource = {}


class ParticipantRound(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One participant's part of a batch; handled as its single requests would be, in the
    order cancels, orders, reading, finish (the finish counts once the orders are in)."""

    participant_id: Id
    cancels: Annotated[list[CancelItem], Meta(max_length=MAX_ITEM_ORDERS)] = []
    orders: Annotated[list[OrderItem], Meta(max_length=MAX_ITEM_ORDERS)] = []
    reading: ReadingItem | None = None
    finish_round: Int = 0  # not 0: the participant is done with the round that started then


class SubmitBatch(Message, frozen=True):
    participant_id: Id  # the sender: the participant itself, or the agent of every participant named
    batch_id: Id
    items: Annotated[list[ParticipantRound], Meta(max_length=MAX_BATCH_ITEMS)]


# --- answers to participants ----------------------------------------------------------


class MemberJoined(Message, frozen=True):
    participant_id: Id
    joined_at_ms: Int
    agent: Id | None = None
    # The connection the member is held to: its own, capped by the region's (None: no limit).
    import_w: Int | None = None
    export_w: Int | None = None


class MemberLeft(Message, frozen=True):
    participant_id: Id
    left_at_ms: Int = 0


class OrderAccepted(Message, frozen=True):
    order_id: Id
    client_order_id: Id
    participant_id: Id
    side: str
    quantity_wh: Wh
    price: PriceText
    source: Source
    slot: Slot
    seq: Int
    submitted_at_ms: Int
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


class RoundFinished(Message, frozen=True):
    """A participant's "finished" of a batch, counted."""

    participant_id: Id
    round_start: Int


class ReadingAccepted(Message, frozen=True):
    participant_id: Id
    slot: Slot
    import_wh: Wh
    export_wh: EnergyBySource
    self_consumed_wh: EnergyBySource
    received_at_ms: Int
    duplicate: bool = False
    late: bool = False  # for a slot reconciled already, within its true-up window: an adjustment follows


BatchAnswer = OrderAccepted | OrderCancelled | Rejected | ReadingAccepted | RoundFinished


class BatchAnswered(Message, frozen=True):
    """One service's answers to a batch, one per item, in the batch's order."""

    participant_id: Id  # the batch's sender
    batch_id: Id
    service: Annotated[str, Meta(max_length=32)]
    answers: list[BatchAnswer]


class SettlementRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    settlement_id: Id
    source: Source
    buyer: Id
    seller: Id
    bid_id: Id
    ask_id: Id
    quantity_wh: Wh
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
    quantity_wh: Wh
    buy_price: PriceText
    sell_price: PriceText
    settlement_id: Id | None = None
    matched_at_ms: Int | None = None
    revision: Int = 0  # 0: the slot's reconciliation; 1, 2, ...: its true-up adjustments
    reverses: bool = False  # counted negative: takes back this much of the same transfer


class Statement(Message, frozen=True):
    participant_id: Id
    slot: Slot
    entries: list[EntryRecord]
    # "final": the slot's entries for good (at once when the region has no true-up window);
    # "provisional": its reconciliation, open to true-up; "adjustment": a late reading's
    # entries (one revision); "final" after the window: every entry of every revision.
    stage: Annotated[str, Meta(max_length=16)] = "final"


class AgentBundle(Message, frozen=True):
    """The settlements notices, or the statements, of one slot for every household that acts
    through an agent (``JoinMarket.agent``), in one message to the agent."""

    participant_id: Id  # the agent
    slot: Slot
    notices: list[SettlementsNotice] = []
    statements: list[Statement] = []


# --- facts between services -----------------------------------------------------------


class GridQuote(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    slot: Slot
    buy_price: PriceText
    sell_price: PriceText


class RoundStarted(Message, frozen=True):
    fence: Int
    started_at_ms: Int
    duration: Int
    close_steps: Int
    timezone: Text
    current_round: Slot
    last_settle: Slot
    next_settle: Slot
    grid: list[GridQuote]  # current_round and next_settle, each priced for itself
    final_round_start: Int = 0  # simulation: the last round that will start (0: open-ended)


class SlotCleared(Message, frozen=True):
    slot: Slot
    rule: Reason
    matched_at_ms: Int
    order_count: Int
    settlements: list[SettlementRecord]
    failure: Text = ""  # not empty: the slot could not be cleared (why); it is held, with no settlements


class SlotReconciled(Message, frozen=True):
    slot: Slot
    reconciled_at_ms: Int
    missing_readings: list[Id]
    entries: list[EntryRecord]
    settled_wh: Wh = 0  # energy of the slot's settlements, for the ledger's balance check
    held: Reason = ""  # "clearing" or "reconciliation": the slot is held, with no entries, for a replay
    failure: Text = ""  # why it is held
    # The readings the entries were reconciled from, so that the ledger records them with
    # the entries, in one transaction, even if a reading's own answer was lost in an outage.
    readings: list[ReadingAccepted] = []


class SlotAdjusted(Message, frozen=True):
    """A true-up: the entries of one revision of a reconciled slot, for one late reading
    (published on the slot_reconciled fact key)."""

    slot: Slot
    revision: Int
    reading: ReadingAccepted
    entries: list[EntryRecord]


class SlotFinalized(Message, frozen=True):
    """The slot's true-up window has closed after ``revisions`` adjustments: its entries are
    final (published on the slot_reconciled fact key)."""

    slot: Slot
    revisions: Int


class SlotRecorded(Message, frozen=True):
    slot: Slot
    entry_count: Int


Recordable = OrderAccepted | OrderCancelled | ReadingAccepted


class RequestsAnswered(Message, frozen=True):
    """For the ledger: what one service accepted in one drain of requests, every order,
    cancellation and reading (repeats too), in the order answered. Published with the
    answers, in the same wait for confirms, so that the ledger records each acceptance
    whoever it was sent to, in one message however many participants asked."""

    service: Annotated[str, Meta(max_length=32)]
    accepted: list[Recordable]


REQUESTS = (JoinMarket, Heartbeat, LeaveMarket, SubmitOrder, CancelOrder, SubmitReading, FinishRound, SubmitBatch)
ANSWERS = (MemberJoined, MemberLeft, OrderAccepted, OrderCancelled, Rejected, ReadingAccepted, RoundFinished,
           BatchAnswered, SettlementsNotice, Statement, AgentBundle)
FACTS = (RoundStarted, SlotCleared, SlotReconciled, SlotAdjusted, SlotFinalized, SlotRecorded, RequestsAnswered)
ALL_MESSAGES = REQUESTS + ANSWERS + FACTS
