"""Ledger entries (docs/market.md section 9) and the bills they add up to.

Every entry is a transfer between two parties: ``seller`` delivers to ``buyer`` and
``buyer`` pays. The buyer pays ``quantity_wh/1000 * buy_price``, the seller receives
``quantity_wh/1000 * sell_price``, and the market operator keeps the difference, so
money sums to zero over all parties. A *financial* entry (``shortfall``,
``shortfall_penalty``) moves money only; its ``quantity_wh`` is the energy it prices.

A slot's first entries have revision 0. A true-up (docs/market.md section 7) appends the
entries of a revision 1, 2, ...: more of an entry, as an entry like it, or less of it, as
a *reversal* (``reverses``): the same transfer, counted negative, so that the buyer gets
back what it paid and the seller gives back what it received. Nothing is ever edited.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from shared.market.numbers import ZERO, amount
from shared.market.timing import Slot

GRID = "grid"
MARKET = "market"


class EntryKind(StrEnum):
    P2P = "p2p"
    BESS_COVER = "bess_cover"
    UNCONSUMED = "unconsumed"
    UNCONSUMED_EXPORT = "unconsumed_export"
    SHORTFALL = "shortfall"
    SHORTFALL_PENALTY = "shortfall_penalty"
    SELF_CONSUMPTION = "self_consumption"
    GRID_EXPORT = "grid_export"
    GRID_IMPORT = "grid_import"


FINANCIAL_KINDS = frozenset({EntryKind.SHORTFALL, EntryKind.SHORTFALL_PENALTY})


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    entry_id: str
    region: str
    slot: Slot
    kind: EntryKind
    seller: str
    buyer: str
    source: str
    quantity_wh: int
    buy_price: Decimal
    sell_price: Decimal
    settlement_id: str | None
    matched_at_ms: int | None
    delivered_at: int
    revision: int = 0  # 0: the slot's reconciliation; 1, 2, ...: its true-up adjustments
    reverses: bool = False  # counted negative: takes back this much of the same transfer

    @property
    def signed_wh(self) -> int:
        return -self.quantity_wh if self.reverses else self.quantity_wh

    @property
    def paid(self) -> Decimal:
        """What the buyer pays (negative for a reversal: it gets that back)."""
        return amount(self.signed_wh, self.buy_price)

    @property
    def received(self) -> Decimal:
        """What the seller receives (negative for a reversal: it gives that back)."""
        return amount(self.signed_wh, self.sell_price)

    @property
    def moves_energy(self) -> bool:
        return self.kind not in FINANCIAL_KINDS


def entry_id(
    region: str, slot: Slot, kind: str, settlement_id: str | None, seller: str, buyer: str, source: str,
    revision: int = 0,
) -> str:
    """Deterministic: the same inputs always name the same entry, so a replay adds nothing."""
    key = f"{region}|{slot}|{kind}|{settlement_id or ''}|{seller}|{buyer}|{source}"
    if revision:
        key += f"|{revision}"
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


@dataclass
class Bill:
    """One party's money and energy over a set of entries (money exact)."""

    paid: Decimal = ZERO
    received: Decimal = ZERO
    bought_wh: int = 0
    sold_wh: int = 0

    @property
    def net_cost(self) -> Decimal:
        return self.paid - self.received


def bills(entries: Iterable[LedgerEntry]) -> dict[str, Bill]:
    """Each party's bill: what it paid and received, energy bought and sold.

    The market operator receives every spread (``buy_price - sell_price``).
    Self-consumption moves nothing between parties and is left out.
    """
    result: dict[str, Bill] = defaultdict(Bill)
    for e in entries:
        if e.seller == e.buyer:
            continue
        buyer, seller = result[e.buyer], result[e.seller]
        paid, received = e.paid, e.received
        buyer.paid += paid
        seller.received += received
        if paid != received:
            result[MARKET].received += paid - received
        if e.moves_energy:
            buyer.bought_wh += e.signed_wh
            seller.sold_wh += e.signed_wh
    return dict(result)
