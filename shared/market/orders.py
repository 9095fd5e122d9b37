"""Orders (docs/market.md section 4): validation with a reason for every rejection.

``validate_order`` is the single place where an order's terms are judged; it returns the
normalised terms or a ``Rejection``. Server-side facts (id, acceptance sequence, time)
are added by ``accept``, from arguments: nothing here reads a clock or makes an id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from shared.market.numbers import MAX_ORDER_WH, MAX_PRICE, InvalidPrice, price_to_ticks
from shared.market.reasons import RejectReason
from shared.market.timing import Schedule, Slot


class Side(StrEnum):
    BID = "bid"
    ASK = "ask"


class Pool(StrEnum):
    DISPATCH = "dispatch"
    NON_DISPATCH = "non_dispatch"


# Dispatch first, always (docs/market.md section 12: the seed iterated a set).
POOL_ORDER: tuple[Pool, ...] = (Pool.DISPATCH, Pool.NON_DISPATCH)

SOURCE_POOLS: dict[str, Pool] = {
    "solar": Pool.NON_DISPATCH,
    "wind": Pool.NON_DISPATCH,
    "bess": Pool.DISPATCH,
}
SOURCES: tuple[str, ...] = tuple(SOURCE_POOLS)
BESS = "bess"

DEFAULT_PRICE_CAP = Decimal("10.0000")


def classify_source(source: str) -> tuple[str, Pool] | None:
    """The normalised source and its pool, or None when the source is not tradable."""
    normalised = source.lower()
    pool = SOURCE_POOLS.get(normalised)
    return None if pool is None else (normalised, pool)


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class OrderTerms:
    participant_id: str
    side: Side
    quantity_wh: int
    price: Decimal
    source: str
    slot: Slot


@dataclass(frozen=True, slots=True)
class Order:
    """An accepted order. ``seq`` is the region's acceptance sequence (earlier = smaller)."""

    order_id: str
    client_order_id: str
    participant_id: str
    side: Side
    quantity_wh: int
    price: Decimal
    source: str
    slot: Slot
    seq: int
    submitted_at_ms: int
    price_ticks: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "price_ticks", price_to_ticks(self.price))

    @property
    def pool(self) -> Pool:
        return SOURCE_POOLS[self.source]


def validate_order(
    *,
    participant_id: str,
    side: str,
    quantity_wh: int,
    price: Decimal,
    source: str,
    slot: Slot,
    schedule: Schedule,
    round_start: int,
    price_cap: Decimal = DEFAULT_PRICE_CAP,
) -> OrderTerms | Rejection:
    if side not in (Side.BID, Side.ASK):
        return Rejection(RejectReason.INVALID_SIDE, f"side must be 'bid' or 'ask', got {side!r}")
    if isinstance(quantity_wh, bool) or not isinstance(quantity_wh, int) or quantity_wh <= 0:
        return Rejection(RejectReason.INVALID_QUANTITY, f"quantity_wh must be an integer > 0, got {quantity_wh!r}")
    if quantity_wh > MAX_ORDER_WH:
        return Rejection(RejectReason.QUANTITY_TOO_LARGE,
                         f"quantity_wh {quantity_wh} is above the limit of {MAX_ORDER_WH} Wh per order")
    try:
        price_to_ticks(price)
    except InvalidPrice as exc:
        return Rejection(RejectReason.INVALID_PRICE, str(exc))
    # MAX_PRICE holds even when the configured cap is larger (settings should refuse it).
    cap = min(price_cap, MAX_PRICE)
    if price < 0 or price > cap:
        return Rejection(RejectReason.INVALID_PRICE, f"price {price} must be within [0, {cap}]")
    classified = classify_source(source)
    if classified is None:
        return Rejection(RejectReason.UNKNOWN_SOURCE, f"source {source!r} is not one of {', '.join(SOURCES)}")
    slot_problem = schedule.check_order_slot(slot, round_start)
    if slot_problem is not None:
        return Rejection(slot_problem, f"slot {slot} while round {round_start} is current")
    return OrderTerms(
        participant_id=participant_id,
        side=Side(side),
        quantity_wh=quantity_wh,
        price=price,
        source=classified[0],
        slot=slot,
    )


LOTTERY_BITS = 20  # of a simultaneous sequence number, below the round's start


def simultaneous_seq(slot: Slot, participant_id: str, client_order_id: str, round_start: int) -> int:
    """The acceptance sequence of an order in a simulated round, where a round's requests
    are simultaneous (docs/market.md, "Acceptance"): the round's start (UNIX seconds)
    first, so that an earlier round still ranks first; within the round, a lottery of the
    participants drawn for the slot (16 bits of a hash of the slot and the participant,
    which no participant can steer; the same in every region, so that the same community
    run again in a new region ranks alike), then of the participant's own orders (4 bits of a
    hash of its client order id). It depends on nothing that arrives in a different order
    from run to run, and it fits the wire's integers (at most 2^53) until the year 2242.
    Equal numbers (a draw of 16 bits among many participants) fall back to the order id."""
    def bits(text: str, count: int) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> (64 - count)

    draw = bits(f"{slot.start}|{slot.end}|{participant_id}", 16) << 4 | bits(
        f"{participant_id}|{client_order_id}", 4)
    return round_start << LOTTERY_BITS | draw


def accept(terms: OrderTerms, *, order_id: str, client_order_id: str, seq: int, submitted_at_ms: int) -> Order:
    return Order(
        order_id=order_id,
        client_order_id=client_order_id,
        participant_id=terms.participant_id,
        side=terms.side,
        quantity_wh=terms.quantity_wh,
        price=terms.price,
        source=terms.source,
        slot=terms.slot,
        seq=seq,
        submitted_at_ms=submitted_at_ms,
    )
