"""The fault suite's harness: a whole simulation on the private servers, read back as a
``Ledger`` that compares equal between two runs of the same seed.

Ids (entries, settlements, orders) are derived from the region name, so every run of a
session uses the same region; each run gets a fresh PostgreSQL database and starts from
an empty broker and Redis for that region.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from redis.asyncio import Redis

from services.demo import simulate
from services.ensemble import Ensemble, purge_region
from services.participants.community import Community, Tally, agent_ids
from services.participants.profiles import community
from shared.runtime.audit import Audit, audit
from shared.runtime.ledger import open_ledger
from shared.runtime.settings import from_env
from tests.e2e.conftest import sim_env as e2e_sim_env
from tests.faults.inject import FaultContext, rounds_started
from tests.faults.servers import PrivatePostgres, PrivateRabbit, PrivateRedis

ROUNDS = 80
PARTICIPANTS = 8
SEED = 11
RUN_TIMEOUT_S = 300.0  # a fault-free run takes 12-14 s; 100,000 junk messages beside it about 120 s

Hook = Callable[[FaultContext], Awaitable[None]]


@dataclass
class Servers:
    rabbit: PrivateRabbit
    redis: PrivateRedis
    postgres: PrivatePostgres

    def all(self) -> tuple[PrivateRabbit, PrivateRedis, PrivatePostgres]:
        return self.rabbit, self.redis, self.postgres

    def ensure_running(self) -> None:
        """Start any that a test left stopped or killed (data kept)."""
        for server in self.all():
            server.ensure_running()

    def with_redis(self, redis: PrivateRedis) -> Servers:
        return replace(self, redis=redis)

    def env(self) -> dict[str, str]:
        return {"MICROTE_AMQP_URL": self.rabbit.url, "MICROTE_REDIS_URL": self.redis.url}

    def close(self) -> None:
        for server in self.all():
            server.close()


# --- The ledger, read back ----------------------------------------------------------------


class EntryRow(NamedTuple):
    slot: int
    kind: str
    seller: str
    buyer: str
    source: str
    quantity_wh: int
    buy_price: str
    sell_price: str
    settlement_id: str | None
    matched_at_ms: int | None
    delivered_at: int
    entry_id: str


class SettlementRow(NamedTuple):
    slot: int
    source: str
    buyer: str
    seller: str
    quantity_wh: int
    buy_price: str
    sell_price: str
    bid_id: str
    ask_id: str
    matched_at_ms: int
    settlement_id: str


class OrderRow(NamedTuple):
    """An accepted order, without what depends on timing (``seq``, ``submitted_at_ms``)."""

    slot: int
    participant_id: str
    client_order_id: str
    side: str
    quantity_wh: int
    price: str
    source: str
    order_id: str


class ReadingRow(NamedTuple):
    slot: int
    participant_id: str
    import_wh: int
    export_wh: tuple[tuple[str, int], ...]
    self_consumed_wh: tuple[tuple[str, int], ...]


TABLES = ("entries", "settlements", "orders", "cancelled", "readings", "reconciled")


@dataclass(frozen=True)
class Ledger:
    """Everything a run recorded. Compares equal between two runs of the same seed and region
    (``==`` looks at the six tables only; the audit, tally and timing ride along)."""

    entries: tuple[EntryRow, ...]
    settlements: tuple[SettlementRow, ...]
    orders: tuple[OrderRow, ...]
    cancelled: tuple[str, ...]
    readings: tuple[ReadingRow, ...]
    reconciled: tuple[int, ...]  # slot starts
    audit: Audit = field(compare=False)
    region: str = field(compare=False, default="")
    url: str = field(compare=False, default="")
    tally: Tally | None = field(compare=False, default=None)
    elapsed_s: float = field(compare=False, default=0.0)
    log_dir: Path | None = field(compare=False, default=None)
    notes: tuple[str, ...] = field(compare=False, default=())
    raw_orders: tuple[Any, ...] = field(compare=False, default=(), repr=False)  # with seq and times

    @property
    def kinds(self) -> set[str]:
        return {e.kind for e in self.entries}

    def summary(self) -> str:
        return (f"{len(self.reconciled)} slots, {len(self.entries)} entries, {len(self.settlements)} settlements, "
                f"{len(self.orders)} orders ({len(self.cancelled)} cancelled), {len(self.readings)} readings; "
                f"audit {'ok' if self.audit.ok else f'{len(self.audit.problems)} problems'}; "
                f"{self.elapsed_s:.1f} s")


def _price(value: object) -> str:
    return str(value)


async def read_ledger(url: str, env: dict[str, str]) -> Ledger:
    settings = from_env(env)
    region = settings.region
    store = open_ledger(url)
    await store.open()
    try:
        entries = tuple(EntryRow(e.slot.start, str(e.kind), e.seller, e.buyer, e.source, e.quantity_wh,
                                 _price(e.buy_price), _price(e.sell_price), e.settlement_id, e.matched_at_ms,
                                 e.delivered_at, e.entry_id) for e in await store.entries(region))
        settlements = tuple(SettlementRow(s.slot.start, s.source, s.buyer, s.seller, s.quantity_wh,
                                          _price(s.buy_price), _price(s.sell_price), s.bid_id, s.ask_id,
                                          s.matched_at_ms, s.settlement_id) for s in await store.settlements(region))
        raw_orders = tuple(await store.orders(region))
        # Sorted by id within a slot: the acceptance sequence of concurrent households is a race.
        orders = tuple(sorted((OrderRow(o.slot.start, o.participant_id, o.client_order_id, str(o.side),
                                        o.quantity_wh, _price(o.price), o.source, o.order_id) for o in raw_orders),
                              key=lambda o: (o.slot, o.order_id)))
        cancelled = tuple(await store.cancelled_orders(region))
        readings = tuple(ReadingRow(r.slot.start, r.participant_id, r.import_wh, tuple(sorted(r.export_wh.items())),
                                    tuple(sorted(r.self_consumed_wh.items()))) for r in await store.readings(region))
        reconciled = tuple(sorted(s.start for s in await store.reconciled_slots(region)))
        result = await audit(store, settings.market)
    finally:
        await store.close()
    return Ledger(entries, settlements, orders, cancelled, readings, reconciled, result, region, url,
                  raw_orders=raw_orders)


def _row(row: object) -> str:
    if isinstance(row, EntryRow):
        return (f"slot {row.slot} {row.kind} {row.seller}->{row.buyer} {row.source} {row.quantity_wh} Wh "
                f"@{row.buy_price}/{row.sell_price} settlement={(row.settlement_id or '-')[:8]} id={row.entry_id[:8]}")
    if isinstance(row, SettlementRow):
        return (f"slot {row.slot} {row.source} {row.seller}->{row.buyer} {row.quantity_wh} Wh "
                f"@{row.buy_price}/{row.sell_price} bid={row.bid_id[:8]} ask={row.ask_id[:8]} "
                f"id={row.settlement_id[:8]}")
    if isinstance(row, OrderRow):
        return (f"slot {row.slot} {row.participant_id}/{row.client_order_id} {row.side} {row.quantity_wh} Wh "
                f"@{row.price} {row.source} id={row.order_id[:8]}")
    if isinstance(row, ReadingRow):
        return (f"slot {row.slot} {row.participant_id} import={row.import_wh} export={dict(row.export_wh)} "
                f"self={dict(row.self_consumed_wh)}")
    if isinstance(row, int):
        return f"slot {row}"
    return str(row)


def _table_diff(name: str, expected: Sequence[object], got: Sequence[object], limit: int) -> list[str]:
    if list(expected) == list(got):
        return []
    have, want = set(got), set(expected)
    missing = [r for r in expected if r not in have]
    extra = [r for r in got if r not in want]
    lines = [f"{name}: expected {len(expected)}, got {len(got)}: {len(missing)} missing, {len(extra)} extra"]
    for label, rows in (("missing", missing), ("extra", extra)):
        lines += [f"  {label:7} {_row(r)}" for r in rows[:limit]]
        if len(rows) > limit:
            lines.append(f"  ... and {len(rows) - limit} more {label}")
    if not missing and not extra:
        if len(expected) != len(got):
            lines.append("  the same rows, some of them recorded more than once")
        else:
            i = next(i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b)
            lines.append(f"  the same rows in another order; first difference at #{i}: "
                         f"expected {_row(expected[i])}, got {_row(got[i])}")
    return lines


def diff(expected: Ledger, got: Ledger, limit: int = 12) -> str:
    """A readable account of how ``got`` differs from ``expected`` ("" when equal), for assert messages."""
    lines: list[str] = []
    for name in TABLES:
        lines += _table_diff(name, getattr(expected, name), getattr(got, name), limit)
    if not got.audit.ok:
        lines.append(f"audit of the run: {len(got.audit.problems)} problems")
        lines += [f"  {p}" for p in got.audit.problems[:limit]]
    if lines:
        lines.insert(0, f"expected: {expected.summary()}\ngot:      {got.summary()}")
        lines += [f"fault: {n}" for n in got.notes]
        if got.log_dir is not None:
            lines.append(f"service logs: {got.log_dir}")
    return "\n".join(lines)


# --- Running a simulation -----------------------------------------------------------------


def sim_env(region: str, ledger_url: str, servers: Servers, rounds: int, **extra: str) -> dict[str, str]:
    """The end-to-end tests' simulation settings, on the private servers."""
    return e2e_sim_env(region, ledger_url, rounds, **servers.env(), **extra)


async def clean_broker_and_redis(servers: Servers, region: str, participant_ids: list[str]) -> None:
    """The region's queues gone from the private broker, the private Redis empty."""
    await purge_region(servers.rabbit.url, servers.redis.url, region, participant_ids)
    redis = Redis.from_url(servers.redis.url)
    try:
        await redis.flushall()
    finally:
        await redis.aclose()


class RunTimedOut(AssertionError):
    """A run that did not reach its last round in time (a hung or stalled market)."""


def log_digest(log_dir: Path, most: int = 12) -> str:
    """Each service's last warnings and errors, and its last line: a run that hung in CI
    says where, after its logs are gone with the machine."""
    out = []
    for path in sorted(log_dir.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        worth = [line for line in lines if '"level": "warning"' in line or '"level": "error"' in line]
        shown = worth[-most:] + ([lines[-1]] if lines and lines[-1] not in worth[-most:] else [])
        out.append(f"\n--- {path.name}: {len(worth)} warnings and errors, the last {len(shown)} lines shown\n"
                   + "\n".join(line[:400] for line in shown))
    return "".join(out)


class Simulator:
    """Runs simulations on the private servers; caches each seed's fault-free baseline."""

    def __init__(self, servers: Servers, log_root: Path) -> None:
        self.servers = servers
        self.log_root = log_root
        self.region = "flt" + secrets.token_hex(4)  # one per session: ids derive from it
        self._baselines: dict[tuple[int, int, int], Ledger] = {}

    async def run(self, env_overrides: dict[str, str] | None = None, during: Hook | None = None, *,
                  rounds: int = ROUNDS, participants: int = PARTICIPANTS, seed: int = SEED,
                  servers: Servers | None = None, timeout_s: float = RUN_TIMEOUT_S, name: str = "run",
                  aggregators: int = 0, requests: str = "single") -> Ledger:
        """One whole simulation; the ledger it recorded (fresh database), with its audit.
        ``aggregators``: the households act through that many aggregators, in batches;
        ``requests``: how a household on its own sends its round (``Community``)."""
        servers = servers or self.servers
        servers.ensure_running()
        ids = [h.participant_id for h in community(participants, seed)] + agent_ids(aggregators)
        database = f"ledger_{secrets.token_hex(4)}"
        url = servers.postgres.create_database(database)
        env = sim_env(self.region, url, servers, rounds, **(env_overrides or {}))
        log_dir = self.log_root / f"{name}-{database}"
        notes: list[str] = []
        running: list[Community] = []

        async def hook(ensemble: Ensemble, sim: Community) -> None:
            running.append(sim)
            if during is not None:
                context = FaultContext(ensemble, sim, servers, from_env(env), env, notes)
                await during(context)

        await clean_broker_and_redis(servers, self.region, ids)
        before = asyncio.all_tasks()
        began = time.monotonic()
        try:
            tally = await asyncio.wait_for(
                simulate(env, participants=participants, seed=seed, log_dir=log_dir, during=hook,
                         aggregators=aggregators, requests=requests),
                timeout=timeout_s)
        except TimeoutError:
            at = rounds_started(running[0]) if running else 0
            raise RunTimedOut(f"the simulation did not finish within {timeout_s:.0f} s: at round {at} of {rounds}"
                              + "".join(f"\nfault: {n}" for n in notes) + f"\nservice logs: {log_dir}"
                              + log_digest(log_dir)) from None
        finally:
            # A hook that failed leaves the community's task behind: end it.
            for task in asyncio.all_tasks() - before - {asyncio.current_task()}:
                task.cancel()
            servers.ensure_running()
            with contextlib.suppress(Exception):
                await clean_broker_and_redis(servers, self.region, ids)
        elapsed = time.monotonic() - began
        ledger = await read_ledger(url, env)
        return replace(ledger, tally=tally, elapsed_s=elapsed, log_dir=log_dir, notes=tuple(notes))

    async def baseline(self, *, rounds: int = ROUNDS, participants: int = PARTICIPANTS, seed: int = SEED) -> Ledger:
        """The fault-free run of a seed, computed once per session."""
        key = (seed, rounds, participants)
        if key not in self._baselines:
            ledger = await self.run(rounds=rounds, participants=participants, seed=seed, name=f"baseline-{seed}")
            assert ledger.audit.ok, f"the fault-free baseline fails its audit: {ledger.audit.problems[:10]}"
            assert len(ledger.reconciled) == rounds, f"the baseline recorded {len(ledger.reconciled)} of {rounds}"
            self._baselines[key] = ledger
        return self._baselines[key]

    async def check_against_baseline(self, during: Hook, env_overrides: dict[str, str] | None = None, *,
                                     rounds: int = ROUNDS, participants: int = PARTICIPANTS, seed: int = SEED,
                                     servers: Servers | None = None, name: str = "fault",
                                     aggregators: int = 0, requests: str = "single",
                                     timeout_s: float = RUN_TIMEOUT_S) -> Ledger:
        """Run with a fault; assert the ledger equals the baseline's and passes its audit.
        With ``aggregators`` the households act through aggregators, in batches, and with
        ``requests="round"`` each sends its round as a batch of its own: their ledger is the
        one they make with single requests (tests/e2e/test_batches.py), the baseline."""
        expected = await self.baseline(rounds=rounds, participants=participants, seed=seed)
        got = await self.run(env_overrides, during, rounds=rounds, participants=participants, seed=seed,
                             servers=servers, name=name, aggregators=aggregators, requests=requests,
                             timeout_s=timeout_s)
        assert got == expected and got.audit.ok, diff(expected, got)
        # Answers are transient: one lost to a fault is had again by sending the request again.
        assert got.tally is not None and got.tally.unanswered == 0, f"{got.tally.unanswered} requests unanswered"
        return got
