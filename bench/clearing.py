"""Clearing benchmark: how long one slot's matching takes, from 1k to 1M orders per side.

For each size it times, on the same generated book:

  match_book   shared.market.match_book on a prebuilt Book: the columnar hot path
  from_orders  Book.from_orders: Order objects to columns
  clear        shared.market.clear, Settlement objects included (sizes up to 100k)
  naive        the naive bids x asks walk of tests/reference.py, run in a child process
               with a time budget; once a size exceeds it, larger sizes are skipped
  sort floor   a bare numpy sort of the same prices: what no matcher can beat

and prints match_book / sort floor and naive / match_book. Small sizes report the
median of several repeats. Two participant regimes: many participants (one per 5 orders)
and few (20: nearly every bid meets its own asks, the adversarial case for self-trade
exclusion). The garbage collector is paused while a timed call runs, as timeit does.

    .venv/bin/python bench/clearing.py                 # the full run (a few minutes)
    .venv/bin/python bench/clearing.py --quick         # 1k and 10k only, short budget
    .venv/bin/python bench/clearing.py --sizes 1k,100k --rule pay_as_bid --repeats 7
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the naive reference lives with the tests
sys.path.insert(0, str(ROOT))

from reference import naive_clear, seed_walk  # noqa: E402

from shared.market import Book, Order, PricingRule, Side, Slot, clear, match_book  # noqa: E402

SOURCES = ("solar", "wind", "bess")
SLOT = Slot(600, 660)
BID_TICKS = (500, 2000)  # 0.0500 to 0.2000 $/kWh
ASK_TICKS = (300, 1800)  # 0.0300 to 0.1800 $/kWh: most of the book crosses
QUANTITY_WH = (100, 5000)
CLEAR_MAX = 100_000  # clear() builds one Python object per fill; beyond this it says little more


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1]) * scale) if scale > 1 else int(text)


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [
        f"cpu:        {cpu_model()}",
        f"cores:      {os.cpu_count()} logical, {usable} usable by this process",
        f"load avg:   {load} (1, 5, 15 min; other work on the machine inflates the times)",
        f"python:     {platform.python_implementation()} {platform.python_version()}",
        f"numpy:      {np.__version__}",
        f"platform:   {platform.platform()}",
    ]


def make_orders(per_side: int, participants: int, seed: int) -> list[Order]:
    """A crossing book: ``per_side`` bids and asks, random owners, sources and acceptance order."""
    rng = np.random.default_rng(seed)
    total = 2 * per_side
    ticks = np.concatenate((rng.integers(BID_TICKS[0], BID_TICKS[1] + 1, per_side),
                            rng.integers(ASK_TICKS[0], ASK_TICKS[1] + 1, per_side)))
    quantity = rng.integers(QUANTITY_WH[0], QUANTITY_WH[1] + 1, total)
    owner = rng.integers(0, participants, total)
    source = rng.integers(0, len(SOURCES), total)
    seq = rng.permutation(total)
    shuffle = rng.permutation(total)  # how the orders happen to be stored
    prices = {t: Decimal(t).scaleb(-4) for t in range(0, max(BID_TICKS[1], ASK_TICKS[1]) + 1)}
    names = [f"p{i}" for i in range(participants)]
    orders = []
    for i in shuffle.tolist():
        orders.append(Order(
            order_id=f"o{i}", client_order_id=f"o{i}", participant_id=names[owner[i]],
            side=Side.BID if i < per_side else Side.ASK, quantity_wh=int(quantity[i]),
            price=prices[int(ticks[i])], source=SOURCES[source[i]], slot=SLOT, seq=int(seq[i]),
            submitted_at_ms=0,
        ))
    return orders


def timed(repeats: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls of ``fn(*args, **kwargs)``, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return statistics.median(times), result


def digest(fills: list[tuple[str, str, int, Decimal, Decimal]]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for bid, ask, q, buy, sell in fills:
        h.update(f"{bid}|{ask}|{q}|{buy.normalize()}|{sell.normalize()};".encode())
    return h.hexdigest()


_CHILD_ORDERS: list[Order] = []


def _naive_child(conn: Any, rule: str, walk: Callable[..., Any]) -> None:
    gc.disable()
    start = time.perf_counter()
    fills = walk(_CHILD_ORDERS, rule)
    conn.send((time.perf_counter() - start, len(fills), digest(fills)))
    conn.close()


def run_naive(orders: list[Order], rule: str, budget_s: float,
              walk: Callable[..., Any] = naive_clear) -> tuple[float, int, str] | None:
    """A reference walk in a forked child; None if it did not finish within ``budget_s``."""
    global _CHILD_ORDERS
    _CHILD_ORDERS = orders  # a forked child sees it without pickling
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_naive_child, args=(child, rule, walk), daemon=True)
    process.start()
    child.close()
    try:
        if parent.poll(budget_s):
            result: tuple[float, int, str] = parent.recv()
            return result
        return None
    finally:
        if process.is_alive():
            process.terminate()
        process.join()
        _CHILD_ORDERS = []


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else (f"{x:,.0f}x" if x >= 10 else f"{x:.1f}x")


def repeats_for(per_side: int, repeats: int) -> int:
    if per_side <= 10_000:
        return repeats
    return min(repeats, 3) if per_side <= 100_000 else 1


def bench_regime(name: str, participants_of: Callable[[int], int], sizes: list[int], rule: PricingRule,
                 repeats: int, seed: int, budget_s: float) -> None:
    print(f"\n== {name} ==")
    header = (f"{'orders/side':>11} {'particip.':>9} {'fills':>10} {'reps':>4} {'match_book':>11} "
              f"{'from_orders':>11} {'clear':>10} {'naive':>10} {'sort floor':>10} {'match/sort':>10} "
              f"{'naive/match':>11} {'seed walk':>10} {'seed/match':>10}  naive agrees")
    print(header)
    print("-" * len(header))
    naive_over: int | None = None
    seed_over: int | None = None
    notes: list[str] = []
    for per_side in sizes:
        participants = participants_of(per_side)
        orders = make_orders(per_side, participants, seed)
        reps = repeats_for(per_side, repeats)
        t_build, book = timed(reps, Book.from_orders, orders)
        t_match, fills = timed(reps, match_book, book, rule)
        t_sort, _ = timed(max(reps, 3), np.sort, book.price)
        t_clear = agree = None
        fast_digest = None
        if per_side <= CLEAR_MAX:
            t_clear, settlements = timed(min(reps, 3), clear, orders, region="bench", slot=SLOT, rule=rule,
                                         matched_at_ms=0)
            fast_digest = digest([(s.bid_id, s.ask_id, s.quantity_wh, s.buy_price, s.sell_price)
                                  for s in settlements])
        t_naive = None
        if naive_over is None:
            naive = run_naive(orders, str(rule), budget_s)
            if naive is None:
                naive_over = per_side
                notes.append(f"naive walk: {label(per_side)} per side did not finish within {budget_s:.0f} s; "
                             "larger sizes skipped")
            else:
                t_naive, naive_fills, naive_digest = naive
                agree = (naive_fills == len(fills[0]) and
                         (fast_digest is None or naive_digest == fast_digest))
        t_seed = None
        if seed_over is None:
            seeded = run_naive(orders, str(rule), budget_s, seed_walk)
            if seeded is None:
                seed_over = per_side
                notes.append(f"seed walk: {label(per_side)} per side did not finish within {budget_s:.0f} s; "
                             "larger sizes skipped")
            else:
                t_seed = seeded[0]
                agree = bool(agree is not False and seeded[1] == len(fills[0]) and
                             (fast_digest is None or seeded[2] == fast_digest))
        print(f"{label(per_side):>11} {participants:>9,} {len(fills[0]):>10,} {reps:>4} {fmt_s(t_match):>11} "
              f"{fmt_s(t_build):>11} {fmt_s(t_clear):>10} "
              f"{fmt_s(t_naive) if naive_over != per_side else f'>{budget_s:.0f} s':>10} "
              f"{fmt_s(t_sort):>10} {fmt_ratio(t_match / t_sort):>10} "
              f"{fmt_ratio(t_naive / t_match if t_naive else None):>11} "
              f"{fmt_s(t_seed) if seed_over != per_side else f'>{budget_s:.0f} s':>10} "
              f"{fmt_ratio(t_seed / t_match if t_seed else None):>10}  "
              f"{'-' if agree is None else ('yes' if agree else 'NO')}", flush=True)
    for note in notes:
        print(f"  note: {note}")
    if any(s > CLEAR_MAX for s in sizes):
        print(f"  note: clear() is timed up to {label(CLEAR_MAX)} per side")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/clearing.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1k,10k,100k,1M",
                        help="orders per side, comma-separated, k and M allowed (default: %(default)s)")
    parser.add_argument("--rule", default="midpoint", choices=[str(r) for r in PricingRule],
                        help="pricing rule (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="repeats per timing up to 10k per side, the median is shown; 100k uses at most 3, "
                             "1M one (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=20240601, help="book generator seed (default: %(default)s)")
    parser.add_argument("--naive-budget", type=float, default=60.0,
                        help="seconds the naive walk may take for one size (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="1k and 10k per side, 3 repeats, a 10 s naive budget: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.naive_budget = "1k,10k", min(args.repeats, 3), min(args.naive_budget, 10.0)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    rule = PricingRule(args.rule)

    print("clearing benchmark: shared.market matching of one slot")
    for line in machine():
        print(line)
    print(f"inputs:     {', '.join(label(s) for s in sizes)} orders per side (as many bids as asks); "
          f"rule {rule}; seed {args.seed}")
    print(f"            sources {', '.join(SOURCES)} drawn uniformly (dispatch pool: bess); bids "
          f"{BID_TICKS[0] / 1e4:.4f}-{BID_TICKS[1] / 1e4:.4f} $/kWh, asks {ASK_TICKS[0] / 1e4:.4f}-"
          f"{ASK_TICKS[1] / 1e4:.4f} $/kWh on the 0.0001 tick, {QUANTITY_WH[0]}-{QUANTITY_WH[1]} Wh each")
    print(f"            participants: many = one per 5 orders, few = 20; repeats {args.repeats} "
          f"(median; fewer for large sizes, see 'reps'); naive budget {args.naive_budget:.0f} s")

    started = time.perf_counter()
    bench_regime("many participants (one per 5 orders)", lambda n: max(2 * n // 5, 2), sizes, rule,
                 args.repeats, args.seed, args.naive_budget)
    bench_regime("few participants (20): adversarial for self-trade exclusion", lambda n: 20, sizes, rule,
                 args.repeats, args.seed, args.naive_budget)
    print("\ncolumns: match_book = hot path on a prebuilt Book; from_orders = Book.from_orders; clear = "
          "from Orders to Settlements; naive = tests/reference.py; sort floor = np.sort of the 2 x n prices; "
          "naive agrees = same fills (ids, Wh, prices) as clear(), or the same count where clear() is not run")
    print(f"total time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
