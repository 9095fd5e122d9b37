"""Rebuilding a region's round state in Redis from the ledger.

Redis holds the round state; the ledger holds its record: every round started (with its
fence), every join and leave, every accepted order, cancellation and reading, every
settlement, reconciled and held slot. When Redis has lost the state (no generation key,
``RegionStateLost``), every service waits; the ledger-writer first records everything
still in its queue, then rebuilds the state from the ledger with ``snapshot`` and writes it
with ``RegionState.restore``, generation last. The services then go on where they were:

- the current round, its fence (the clock takes the lease again above it), the first
  round, the reconciliation watermark and the acceptance sequence;
- the members (each seen now, so that no one times out for the outage), and the agent and
  the connection each was registered with when it last joined;
- the book and the client order ids of every slot not yet reconciled, and the energy its open
  orders hold against their members' connections;
- with a spending limit, what each member's bids cost per local day, from the current
  round's day on;
- with a true-up window, every reconciled slot not yet final (whose window ended at most a
  day before the current round): its clearing, the readings of its reconciliation, its late
  readings in their order, each adjusted for already, and the end of its window;
- the readings of every slot not yet reconciled;
- the clearing of every slot whose gate closed before the current round and which is not
  yet reconciled, cleared again from its book (deterministic: the same bytes); the slot
  whose gate closed at the current round is left to the matcher, which clears it when the
  clock states the round again.

Lost for good, and harmless: who had finished the current round (the round waits for its
timeout instead) and claims in progress (redone, deterministically).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from shared.market import Order, Reading, Side, Slot, clear
from shared.market.numbers import spend_units
from shared.market.timezones import zone
from shared.messages import encode
from shared.messages import types as t
from shared.messages.convert import order_to_wire, reading_to_wire, settlement_to_wire, slot_to_wire
from shared.runtime.ledger import LedgerStore
from shared.runtime.settings import MarketSettings
from shared.runtime.state import Joined, Snapshot


async def has_history(store: LedgerStore, region: str) -> bool:
    """Whether the ledger knows anything of the region's round state (else it is new)."""
    return bool(await store.rounds(region) or await store.members(region) or await store.orders(region))


async def snapshot(store: LedgerStore, market: MarketSettings) -> Snapshot:
    region, schedule = market.region, market.schedule
    rounds = await store.rounds(region)
    orders = await store.orders(region)
    cancelled = set(await store.cancelled_orders(region))
    held = await store.connections(region)
    snap = Snapshot(members=await store.members(region), agents=await store.agents(region),
                    connections={pid: Joined(pid, None, i, e).connection for pid, (i, e) in held.items()},
                    seq=max((o.seq for o in orders), default=0))
    if not rounds:
        return snap
    snap.round_start, snap.fence = rounds[-1]
    if market.max_spend_per_day:
        snap.spend = _spend(market, snap.round_start, [o for o in orders if o.order_id not in cancelled])
    snap.first_round = rounds[0][0]
    finished = await store.reconciled_slots(region) + [h.slot for h in await store.held_slots(region)]
    snap.reconciled_upto = upto = max((s.end for s in finished), default=snap.first_round)
    current = snap.round_start
    snap.recorded = [s for s in finished if s.start >= current - schedule.duration]

    open_orders: defaultdict[Slot, list[Order]] = defaultdict(list)
    for o in orders:
        if o.slot.end > upto:
            open_orders[o.slot].append(o)
            snap.client_ids.setdefault(o.slot, {})[f"{o.participant_id}/{o.client_order_id}"] = o.order_id
            if o.order_id not in cancelled:
                snap.books.setdefault(o.slot, []).append((o.order_id, encode(order_to_wire(o, region=region))))
                _commit(snap.committed.setdefault(o.slot, {}), o, held.get(o.participant_id))
    for r in await store.readings(region):
        if r.slot.end > upto:
            accepted = reading_to_wire(r, region=region, received_at_ms=0)
            snap.readings.setdefault(r.slot, {})[r.participant_id] = encode(accepted)

    if market.true_up_s:
        await _provisional(store, market, snap, orders, cancelled)

    # Slots cleared in an earlier round and not yet reconciled: the meter-collector needs
    # their clearing. Each is cleared again from its book, exactly as the matcher did.
    d = schedule.duration
    slot = Slot(upto, upto + d)
    while schedule.closes_at(slot) < current:
        if schedule.closes_at(slot) >= snap.first_round:
            snap.cleared[slot] = encode(_cleared(market, slot, [o for o in open_orders.get(slot, [])
                                                                if o.order_id not in cancelled]))
        slot = Slot(slot.end, slot.end + d)
    return snap


def _commit(shares: dict[str, str], o: Order, connection: tuple[int | None, int | None] | None) -> None:
    """Hold an open order's energy against its member's connection, as order-intake did."""
    if connection is None or connection[0 if o.side == Side.BID else 1] is None:
        return
    side = "b" if o.side == Side.BID else "a"
    total = int(shares.get(f"{o.participant_id}|{side}", "0")) + o.quantity_wh
    shares[f"{o.participant_id}|{side}"] = str(total)
    shares[f"#{o.order_id}"] = f"{side}{o.quantity_wh}"


async def _provisional(store: LedgerStore, market: MarketSettings, snap: Snapshot, orders: list[Order],
                       cancelled: set[str]) -> None:
    """The reconciled slots still open to true-up, as the meter-collector keeps them."""
    region, window = market.region, market.true_up_s
    assert snap.round_start is not None
    final = {slot for slot, _ in await store.final_slots(region)}
    held = {h.slot for h in await store.held_slots(region)}
    kept = [s for s in await store.reconciled_slots(region)
            if s not in final and s not in held and s.end + window >= snap.round_start - 86400]
    if not kept:
        return
    late_ids: dict[Slot, list[str]] = defaultdict(list)
    for slot, _, pid in await store.adjustments(region):
        late_ids[slot].append(pid)
    readings: dict[Slot, dict[str, Reading]] = defaultdict(dict)
    for r in await store.readings(region):
        readings[r.slot][r.participant_id] = r
    for slot in kept:
        snap.provisional[slot] = slot.end + window
        snap.kept_cleared[slot] = encode(_cleared(market, slot, [o for o in orders if o.slot == slot
                                                                 and o.order_id not in cancelled]))
        late = late_ids.get(slot, [])
        mine = readings.get(slot, {})
        snap.kept_readings[slot] = {pid: encode(reading_to_wire(r, region=region, received_at_ms=0))
                                    for pid, r in mine.items() if pid not in late}
        snap.late[slot] = [(pid, encode(reading_to_wire(mine[pid], region=region, received_at_ms=0)))
                           for pid in late if pid in mine]


def _spend(market: MarketSettings, round_start: int, orders: list[Order]) -> dict[str, dict[str, str]]:
    """What each member's bids may cost per local day, from the current round's day on, as
    order-intake summed it (units of 10**-7 $)."""
    tz = zone(market.tariff.timezone)
    today = datetime.fromtimestamp(round_start, tz).date().isoformat()
    days: dict[str, dict[str, str]] = {}
    for o in orders:
        day = datetime.fromtimestamp(o.slot.start, tz).date().isoformat()
        if o.side != Side.BID or day < today:
            continue
        worth = days.setdefault(day, {})
        units = spend_units(o.quantity_wh, o.price)
        worth[o.participant_id] = str(int(worth.get(o.participant_id, "0")) + units)
        worth[f"#{o.order_id}"] = str(units)
    return days


def _cleared(market: MarketSettings, slot: Slot, orders: list[Order]) -> t.SlotCleared:
    matched_at_ms = market.schedule.closes_at(slot) * 1000
    try:
        settlements = clear(orders, region=market.region, slot=slot, rule=market.rule, matched_at_ms=matched_at_ms)
    except Exception as exc:  # the matcher held it too: hold it again
        return t.SlotCleared(region=market.region, slot=slot_to_wire(slot), rule=str(market.rule),
                             matched_at_ms=matched_at_ms, order_count=len(orders), settlements=[],
                             failure=f"{type(exc).__name__}: {exc}"[:1000])
    return t.SlotCleared(region=market.region, slot=slot_to_wire(slot), rule=str(market.rule),
                         matched_at_ms=matched_at_ms, order_count=len(orders),
                         settlements=[settlement_to_wire(s) for s in settlements])
