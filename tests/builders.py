"""Hand-built market values for tests: orders, settlements, readings, and entry rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal

from shared.market import GridPrices, LedgerEntry, Order, Reading, Settlement, Side, Slot

REGION = "r1"
SLOT = Slot(600, 660)
MATCHED_AT_MS = 540_000

# The grid prices of docs/market.md section 8 with the defaults, written out by hand.
GRID_BUY = Decimal("0.1449")
GRID_SELL = Decimal("0.069")
GRID = GridPrices(buy_price=GRID_BUY, sell_price=GRID_SELL)

Row = tuple[str, str, str, str, int, Decimal, Decimal]


def order(
    order_id: str,
    participant_id: str,
    side: str,
    quantity_wh: int,
    price: str | Decimal,
    source: str = "solar",
    *,
    seq: int,
    slot: Slot = SLOT,
) -> Order:
    return Order(
        order_id=order_id,
        client_order_id=f"c-{order_id}",
        participant_id=participant_id,
        side=Side(side),
        quantity_wh=quantity_wh,
        price=Decimal(price),
        source=source,
        slot=slot,
        seq=seq,
        submitted_at_ms=seq,
    )


def settlement(
    seller: str,
    buyer: str,
    source: str,
    quantity_wh: int,
    buy_price: str = "0.1",
    sell_price: str | None = None,
    *,
    name: str | None = None,
    slot: Slot = SLOT,
) -> Settlement:
    name = name or f"{seller}-{buyer}-{source}"
    return Settlement(
        settlement_id=f"s-{name}",
        region=REGION,
        slot=slot,
        source=source,
        buyer=buyer,
        seller=seller,
        bid_id=f"b-{name}",
        ask_id=f"a-{name}",
        quantity_wh=quantity_wh,
        buy_price=Decimal(buy_price),
        sell_price=Decimal(sell_price if sell_price is not None else buy_price),
        matched_at_ms=MATCHED_AT_MS,
    )


def reading(
    participant_id: str,
    *,
    import_wh: int = 0,
    export_wh: Mapping[str, int] | None = None,
    self_consumed_wh: Mapping[str, int] | None = None,
    slot: Slot = SLOT,
) -> Reading:
    return Reading(
        participant_id=participant_id,
        slot=slot,
        import_wh=import_wh,
        export_wh=dict(export_wh or {}),
        self_consumed_wh=dict(self_consumed_wh or {}),
    )


def rows(entries: Iterable[LedgerEntry]) -> list[Row]:
    """(kind, seller, buyer, source, quantity_wh, buy_price, sell_price) of each entry."""
    return [(str(e.kind), e.seller, e.buyer, e.source, e.quantity_wh, e.buy_price, e.sell_price) for e in entries]
