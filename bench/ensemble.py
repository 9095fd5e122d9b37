"""Ensemble benchmark: the real services as processes, against a bare-RabbitMQ floor.

Each size gets a region of its own and, measured right before it in the same run, a
floor: the same message pattern through the same RabbitMQ without the services (a bare
aio-pika consumer in a child process answering persistent, confirmed requests with
confirmed answers, transient as the services' are).

sim (default): for each community size N, the services started as ``microte demo``
starts them (simulation clock, an SQLite ledger under var/bench, first round at
2026-06-21T11:00 America/Vancouver so that households trade) and the simulated
community of services/participants (N households, over RabbitMQ only) for R rounds, the
first W discarded as warm-up. Per N: median and p90 seconds per round (from the clock's
RoundStarted ``started_at_ms``), participant-rounds/s (N / median), the requests a
household sent per round, CPU seconds per process over the measured rounds (/proc:
each service, this process, which is the community, RabbitMQ's beam.smp, redis-server)
and CPU ms per participant-round. Each household sends its round as one request of its
own (``--requests round``, the default), and the floor's households one request per
round with a reading and the floor's orders (``--floor-orders``, default 2), answered
twice; with ``--requests single`` each sends one message per request, and the floor's
households each publish a reading, the floor's orders and a finish per round, the
consumer answering each reading and order. Once every answer and finish is in, the
floor's consumer broadcasts the next round. That is the requests' floor ("req. floor").
The floor of the whole round ("floor", which the ratio is to) adds what else a round
sends through the broker: a durable queue for each household (aggregator) taking the
round start, its answers, a statement and, for the share that traded
(``--floor-notices``), a settlements notice (bundles, for an aggregator), acknowledged, as the
community's queues are; and the services' facts, each persistent, confirmed and taken
back from the broker by the floor's consumer, as a chain the next round waits for, as
the clock does: round start, then ``cleared`` (with the notices; the slot counts as
cleared once they are all confirmed); once every household's reading is in (which the
meter-collector waits for), ``reconciled`` (with the statements), then ``recorded``. It
leaves out deliveries the real round also has (the facts to more than one service, each
service's ``RequestsAnswered``), so it stays a floor. A round ended by the clock's
timeout (``microte_round_timeouts_total`` on the clock's /metrics) fails the run.

realtime: order-intake and meter-collector, with what they need to answer (the clock in
real time, whose current round in Redis order-intake validates against, and the
ledger-writer, which gives a new region its round state). K members join (``--window``
awaiting their answer at most; one queue of this process bound to ``<region>.to.#`` takes
every answer); then, within one round that began after they joined, ``--probes`` orders go
one at a time (the idle order-ack latency), then the load: every member's order for the
next open slot and reading for the round being delivered. ``--arrivals spread`` (default)
is an open loop: member i sends at its time, i/K of ``--spread`` seconds (or a seeded
uniform time, ``--spacing random``), whatever the answers; a message's latency runs from
its leaving this process, and how late it left (the sender behind its schedule: then the
latency is partly the benchmark's) is reported. ``--arrivals burst`` is the closed loop:
at most ``--window`` awaiting an answer, so that the latency is mostly queueing.
``--aggregators A``: the members join with an agent, ``agg000`` ..., and the load goes as
SubmitBatch messages of up to ``--batch-size`` members (consecutive in time; batch b sent
by aggregator b mod A at the time of its first member); an order's latency runs from its
batch leaving to order-intake's BatchAnswered arriving. Per K: joins/s, idle and load
order-ack latency p50/p99/max, accepted orders/s, reading-ack p99, the tail (last answer
after last send), the sender's lag, CPU per process over the load, and that every request
was answered and accepted. The floor: the same messages on the same schedule, answered by
the bare consumer (a batch with two echoes of itself, as order-intake and meter-collector
each answer it). ``--find-max`` runs the ``--members`` counts (default 10k, 20k, 50k,
100k, 200k) until order-ack p99 reaches 1 s or a request goes unanswered or refused, and
prints the largest count within the goal.

``--replicas 2`` adds a second replica of order-intake and of meter-collector.

    .venv/bin/python bench/ensemble.py                                # sim: 20, 100, 1000 households
    .venv/bin/python bench/ensemble.py --households 20,100 --rounds 20
    .venv/bin/python bench/ensemble.py --households 1000 --aggregators 10 --floor-orders 1.1
    .venv/bin/python bench/ensemble.py --mode realtime --members 1000
    .venv/bin/python bench/ensemble.py --mode realtime --members 10000 --replicas 2
    .venv/bin/python bench/ensemble.py --mode realtime --members 10000 --aggregators 20
    .venv/bin/python bench/ensemble.py --mode realtime --aggregators 20 --find-max

Needs RabbitMQ and Redis (scripts/services.sh rabbitmq redis). Every region's queues and
Redis keys are deleted afterwards, on failure and Ctrl-C too; its logs are kept under
var/bench/<region>/ when it failed (``--keep`` keeps them always). Exits 1 when a round
timed out or a request went unanswered or was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import inspect
import itertools
import math
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractIncomingMessage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clearing import cpu_model  # noqa: E402  (bench/clearing.py, beside this file)

from services.ensemble import Ensemble, delete_queues, purge_region  # noqa: E402
from services.participants import REQUESTS  # noqa: E402
from services.participants.community import Community, agent_ids  # noqa: E402
from services.participants.profiles import community  # noqa: E402
from shared.market.timezones import zone  # noqa: E402
from shared.messages import CONTENT_TYPE, decode, encode  # noqa: E402
from shared.messages import types as t  # noqa: E402
from shared.runtime import topology as k  # noqa: E402
from shared.runtime.settings import Settings, from_env  # noqa: E402

TIMEZONE = "America/Vancouver"
START = "2026-06-21T11:00"  # a sunny midday: households have something to trade
SEED = 7
WORKERS = ("order-intake", "matcher", "meter-collector", "ledger-writer")
SCALED = ("order-intake", "meter-collector")  # what --replicas multiplies
TIMEOUT_METRIC = "microte_round_timeouts_total"  # shared/runtime/metrics.py: round_timeouts
FLOOR_PREFETCH = 128  # as order-intake's
EXTRA_ROUNDS = 3  # sim: rounds the clock runs after the measured ones (see run_sim)
PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
TRANSIENT = aio_pika.DeliveryMode.NOT_PERSISTENT  # the answers, as the services send them (topology.persistent)
CLK_TCK = os.sysconf("SC_CLK_TCK")
Key = Hashable


# --- the machine ---------------------------------------------------------------------------


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


async def server_versions(settings: Settings) -> tuple[str, str]:
    from redis.asyncio import Redis

    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        props = getattr(getattr(connection.transport, "connection", None), "server_properties", None) or {}
        raw = props.get("version", "?")
        rabbit = raw.decode() if isinstance(raw, bytes) else str(raw)
    redis = Redis.from_url(settings.redis_url)
    try:
        info = await redis.info("server")
        return rabbit, str(info.get("redis_version", "?"))
    finally:
        await redis.aclose()


def machine(rabbit: str, redis: str) -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    libs = ", ".join(f"{p} {version(p)}" for p in ("aio-pika", "aiormq", "faststream", "redis", "msgspec", "uvicorn"))
    return [
        f"cpu:        {cpu_model()}",
        f"cores:      {os.cpu_count()} logical, {usable} usable by this process (services, broker, Redis and "
        "this process share them)",
        f"load avg:   {load} (1, 5, 15 min; other work on the machine and on the shared servers inflates the times)",
        f"python:     {platform.python_implementation()} {platform.python_version()}",
        f"libraries:  {libs}",
        f"servers:    RabbitMQ {rabbit}, Redis {redis}",
        f"platform:   {platform.platform()}",
    ]


# --- CPU time from /proc ---------------------------------------------------------------------


def cpu_of(pid: int) -> float | None:
    """utime + stime of a process, in seconds; None if it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command: field 3 (state) is index 0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _listening_inodes(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    found.add(f"socket:[{parts[9]}]")
    return found


def server_pid(comm: str, url: str, default_port: int) -> tuple[int | None, str]:
    """The pid of the local server process ``comm`` that listens on ``url``'s port, and a note."""
    host, port = urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or default_port
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None, f"{comm}: not on this machine ({host}), CPU not measured"
    candidates = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == comm:
                    candidates.append(int(entry.name))
    if not candidates:
        return None, f"{comm}: no such process visible in /proc, CPU not measured"
    sockets = _listening_inodes(port)
    for pid in candidates:
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            continue
        if links & sockets:
            return pid, ""
    if len(candidates) == 1:
        return candidates[0], f"{comm}: pid {candidates[0]} taken as the one on port {port} (its sockets unreadable)"
    return None, f"{comm}: {len(candidates)} processes, none seen listening on port {port}: CPU not measured"


@dataclass
class CpuProbe:
    pids: dict[str, int | None]

    def snapshot(self) -> dict[str, float | None]:
        return {name: None if pid is None else cpu_of(pid) for name, pid in self.pids.items()}

    @staticmethod
    def delta(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, b in after.items():
            a = before.get(name)
            out[name] = None if a is None or b is None else b - a
        return out


def cpu_line(cpu: dict[str, float | None], units: int, unit: str) -> list[str]:
    known = [v for v in cpu.values() if v is not None]
    total = sum(known)
    parts = [f"{name} {'unreadable' if v is None else f'{v:.2f}'}" for name, v in cpu.items()]
    lines = [f"    CPU s: {', '.join(parts)}"]
    missing = [n for n, v in cpu.items() if v is None]
    lines.append(f"    CPU total {total:.2f} s = {1000 * total / max(units, 1):.3f} ms per {unit}"
                 + (f" (without {', '.join(missing)}: could not be read)" if missing else ""))
    return lines


# --- small things ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def fmt_s(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def parse_list(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        if part:
            out.append(int(float(part[:-1]) * 1000) if part.endswith("k") else int(part))
    return out


def region_name(mode: str, n: int) -> str:
    return f"bench-{mode}-{n}-{os.getpid()}-{int(time.time())}"


def base_env(region: str, work: Path, ledger: str | None) -> dict[str, str]:
    return {
        **{key: v for key, v in os.environ.items() if key.startswith("MICROTE_")},
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "MICROTE_REGION": region,
        "MICROTE_TIMEZONE": TIMEZONE,
        "MICROTE_LEDGER_URL": ledger or f"sqlite:///{work / 'ledger.sqlite'}",
    }


def names_with_replicas(names: tuple[str, ...], replicas: int) -> tuple[str, ...]:
    return tuple(f"{n}#{i}" if i > 1 else n for n in names for i in range(1, (replicas if n in SCALED else 1) + 1))


def read_timeouts(ensemble: Ensemble) -> tuple[float | None, str]:
    """The clock's round timeouts so far (None if /metrics cannot be read), and the samples."""
    try:
        with urllib.request.urlopen(ensemble.url("clock", "/metrics"), timeout=5) as answer:
            text = answer.read().decode()
    except OSError as exc:
        return None, f"clock /metrics unreadable: {exc}"
    samples = [line for line in text.splitlines() if line.startswith(TIMEOUT_METRIC)]
    if TIMEOUT_METRIC not in text:
        return None, f"{TIMEOUT_METRIC} not found in the clock's /metrics"
    return sum(float(line.rsplit(" ", 1)[1]) for line in samples), "; ".join(samples)


# --- the wire -------------------------------------------------------------------------------


class Wire:
    """One connection, one confirming channel on the ``microte`` exchange, and one answer queue
    consumed without acknowledgements: what this process needs to send requests and take answers."""

    def __init__(self, amqp_url: str) -> None:
        self.amqp_url = amqp_url
        self.connection: AbstractConnection | None = None
        self.channel: AbstractChannel | None = None
        self.exchange: AbstractExchange | None = None

    async def open(self, queue: str, bindings: list[str], on_message: Callable[[AbstractIncomingMessage], Any],
                   *, exclusive: bool = False) -> None:
        self.connection = await aio_pika.connect(self.amqp_url)
        self.channel = await self.connection.channel()  # publisher confirms
        self.exchange = await self.channel.declare_exchange(k.EXCHANGE.name, aio_pika.ExchangeType.TOPIC,
                                                            durable=True)
        declared = await self.channel.declare_queue(queue, durable=not exclusive, exclusive=exclusive)
        for key in bindings:
            await declared.bind(self.exchange, routing_key=key)
        await declared.consume(on_message, no_ack=True)

    async def publish(self, body: bytes, routing_key: str, **props: Any) -> None:
        assert self.exchange is not None
        await self.exchange.publish(aio_pika.Message(body, content_type=CONTENT_TYPE, delivery_mode=PERSISTENT,
                                                     **props), routing_key=routing_key)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


# --- the floor ------------------------------------------------------------------------------


def floor_queues(region: str) -> tuple[str, str]:
    return f"microte.{region}.floor-in", f"microte.{region}.floor-out"


async def floor_consumer(amqp_url: str, region: str, per_round: int, facts: RoundFacts | None = None) -> None:
    """The floor's "service" (a child process): answer every request but a finish with a
    transient (as the services' answers are), confirmed publish of its body to its
    ``reply_to`` (as many as its ``echoes`` header says, one by default), acknowledge after
    the confirms, and,
    when ``per_round`` > 0, broadcast a round start once ``per_round`` finishes (or
    aggregated requests) are in and no answer is still on its way.

    With ``facts`` (the whole round's pattern) it also plays the services' facts, in their
    order: each round start comes back to it, as to the matcher, and it publishes the
    ``cleared`` fact with the notices (the slot counts as cleared once all are confirmed, as
    the matcher marks it); once every unit's reading is in (the slot just delivered has its
    readings, as the meter-collector waits for them), the ``reconciled`` fact with a
    statement to each unit; ``reconciled`` coming back, ``recorded`` (as the ledger-writer
    does); all persistent and confirmed. The next round also waits for the slot cleared and
    for ``recorded`` to come back, as the clock waits for them."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=FLOOR_PREFETCH)
        exchange = await channel.declare_exchange(k.EXCHANGE.name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(floor_queues(region)[0], durable=True)
        if facts is not None:
            await queue.bind(exchange, routing_key=f"{region}.floor.fact.round")
        done = pending = readings = 0
        cleared = recorded = True  # the first round has no slot to clear or record
        reconciling = False

        async def persist(body: bytes, routing_key: str, kind: str = "") -> None:
            await exchange.publish(aio_pika.Message(body, content_type=CONTENT_TYPE, delivery_mode=PERSISTENT,
                                                    type=kind), routing_key=routing_key)

        async def fact_and_copies(kind: str, fact: bytes, copy: bytes, what: str, units: Iterable[str]) -> None:
            await asyncio.gather(persist(fact, f"{region}.floor.in.{kind}", kind),
                                 *(persist(copy, f"{region}.floor.to.{u}.{what}") for u in units))

        async def on_message(m: AbstractIncomingMessage) -> None:
            nonlocal done, pending, readings, cleared, recorded, reconciling
            if m.type == "round" and facts is not None:
                await fact_and_copies("cleared", facts.cleared, facts.notice, k.SETTLEMENTS, facts.notified)
                cleared = True
            elif m.type == "cleared":
                pass  # the fact through the broker, as the ledger-writer takes it; the slot counted as cleared already
            elif m.type == "reconciled" and facts is not None:
                await persist(facts.recorded, f"{region}.floor.in.recorded", "recorded")
            elif m.type == "recorded":
                recorded = True
            elif m.type == "finish":
                done += 1
            else:
                pending += 1
                try:
                    echoes = (m.headers or {}).get("echoes", 1)
                    for _ in range(echoes if isinstance(echoes, int) else 1):
                        await exchange.publish(aio_pika.Message(m.body, content_type=CONTENT_TYPE,
                                                                delivery_mode=TRANSIENT,
                                                                correlation_id=m.correlation_id),
                                               routing_key=m.reply_to or "")
                finally:
                    pending -= 1
                done += m.type == "agg"
                readings += m.type in ("agg", "reading")
            await m.ack()
            if facts is not None and readings >= per_round and not recorded and not reconciling:
                reconciling = True
                await fact_and_copies("reconciled", facts.reconciled, facts.statement, k.STATEMENT, facts.units)
            if per_round and done >= per_round and pending == 0 and cleared and recorded:
                done -= per_round
                readings -= per_round
                cleared = recorded = facts is None
                reconciling = False
                await exchange.publish(aio_pika.Message(b"round", delivery_mode=PERSISTENT, type="round"),
                                       routing_key=f"{region}.floor.fact.round")

        await queue.consume(on_message)
        print("ready", flush=True)
        await asyncio.Future()


@contextlib.asynccontextmanager
async def floor_process(amqp_url: str, region: str, per_round: int,
                        facts: tuple[int, int, float] | None = None) -> AsyncIterator[int]:
    """The floor's consumer in a child process of its own (its own core), until the block ends;
    ``facts``: (households, aggregators, notified) for the whole round's pattern (``RoundFacts``)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "_floor-consumer", region, str(per_round),
        *(str(v) for v in facts or ()),
        env={**os.environ, "MICROTE_AMQP_URL": amqp_url}, stdout=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        if line.strip() != b"ready":
            raise RuntimeError("the floor's consumer did not start")
        yield proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


class Floor:
    """This process's side of the floor: requests out, answers and round starts in."""

    def __init__(self, amqp_url: str, region: str) -> None:
        self.region = region
        self.wire = Wire(amqp_url)
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.rounds: asyncio.Queue[float] = asyncio.Queue()
        self.queues = list(floor_queues(region))  # what close() deletes
        self.delivered: Counter[str] = Counter()  # by kind, what the units' queues took

    async def open(self, units: Iterable[str] = ()) -> None:
        """One queue of this process takes the round starts (and, without ``units``, the answers);
        each of ``units`` gets a durable queue of its own, as the community's households (or
        aggregators) have, bound to its answers and to the round start, each delivery
        acknowledged after it is handled (a prefetch of 32, as the community's)."""
        inbound, outbound = floor_queues(self.region)
        units = list(units)
        answers = [] if units else [f"{self.region}.floor.to.#"]
        await self.wire.open(outbound, [*answers, f"{self.region}.floor.fact.#"], self._on_answer)
        assert self.wire.connection is not None and self.wire.channel is not None and self.wire.exchange is not None
        queue = await self.wire.channel.declare_queue(inbound, durable=True)
        await queue.bind(self.wire.exchange, routing_key=f"{self.region}.floor.in.#")
        if units:
            channel = await self.wire.connection.channel()
            await channel.set_qos(prefetch_count=32)
            for unit in units:
                name = f"microte.{self.region}.floor.{unit}"
                self.queues.append(name)
                own = await channel.declare_queue(name, durable=True)
                await own.bind(self.wire.exchange, routing_key=f"{self.region}.floor.to.{unit}.#")
                await own.bind(self.wire.exchange, routing_key=f"{self.region}.floor.fact.round")
                await own.consume(self._on_unit)

    async def _on_unit(self, m: AbstractIncomingMessage) -> None:
        key = m.routing_key or ""
        self.delivered[key.rsplit(".", 1)[-1]] += 1
        if key != f"{self.region}.floor.fact.round":  # the round is timed on the first queue
            self._on_answer(m)
        await m.ack()

    async def close(self) -> None:
        await self.wire.close()
        await delete_queues(self.wire.amqp_url, self.queues)

    def _on_answer(self, m: AbstractIncomingMessage) -> None:
        now = time.perf_counter()
        if m.routing_key == f"{self.region}.floor.fact.round":
            self.rounds.put_nowait(now)
            return
        waiting = self.waiting.pop(m.correlation_id or "", None)
        if waiting is not None and not waiting.done():
            waiting.set_result(now)

    def expect(self, cid: str) -> asyncio.Future[float]:
        future = self.waiting[cid] = asyncio.get_running_loop().create_future()
        return future

    async def send(self, kind: str, body: bytes, participant: str = "", cid: str = "", echoes: int = 1) -> None:
        props: dict[str, Any] = (
            {"correlation_id": cid, "reply_to": f"{self.region}.floor.to.{participant}.answer"} if cid else {})
        if echoes > 1:  # the consumer answers this many times (a batch: order-intake's and meter-collector's answer)
            props["headers"] = {"echoes": echoes}
        await self.wire.publish(body, f"{self.region}.floor.in.{kind}", type=kind, **props)


@dataclass(frozen=True)
class Bodies:
    """Requests as a household sends them, encoded: the floor's messages have their sizes."""

    reading: bytes
    order: bytes
    finish: bytes
    region: str

    def round(self, orders: int) -> bytes:
        """A household's whole round in one request: its reading, ``orders`` orders and its finish."""
        slot = t.Slot(1782064800, 1782064860)
        order = t.OrderItem(client_order_id="1782065040-0", side="ask", quantity_wh=1234, price="0.1188",
                            source="solar", slot=slot)
        return encode(t.SubmitBatch(region=self.region, participant_id="h0000", batch_id="h0000-1782064800", items=[
            t.ParticipantRound(participant_id="h0000", orders=[order] * orders, finish_round=slot.start,
                               reading=t.ReadingItem(slot=slot, import_wh=312, export_wh={"solar": 55},
                                                     self_consumed_wh={"solar": 240}))]))

    @classmethod
    def make(cls, region: str) -> Bodies:
        slot = t.Slot(1782064800, 1782064860)
        return cls(
            reading=encode(t.SubmitReading(region=region, participant_id="h0000", slot=slot, import_wh=312,
                                           export_wh={"solar": 55}, self_consumed_wh={"solar": 240})),
            order=encode(t.SubmitOrder(region=region, participant_id="h0000", client_order_id="1782065040-0",
                                       side="ask", quantity_wh=1234, price="0.1188", source="solar", slot=slot)),
            finish=encode(t.FinishRound(region=region, participant_id="h0000", round_start=slot.start)),
            region=region)


def floor_units(n: int, aggregators: int) -> tuple[str, ...]:
    """Who sends a floor's requests and has a queue of its own: the aggregators, or the households."""
    return tuple(f"a{u}" for u in range(aggregators)) if aggregators else tuple(f"h{u}" for u in range(n))


@dataclass(frozen=True)
class RoundFacts:
    """What the services publish in a round besides their answers, encoded with the sizes of a
    round of N households, for the floor of the whole round's pattern: the ``cleared`` fact
    with the notices, the ``reconciled`` fact (N entries and readings) with a statement to
    each unit, and ``recorded``. A unit is a household on its
    own (one settlement, two entries) or an aggregator (a bundle for its households). Only
    households that traded get a notice: a share ``notified`` of them (the first units, or
    that share of each aggregator's bundle), and the fact has a settlement for every two."""

    cleared: bytes
    reconciled: bytes
    recorded: bytes
    notice: bytes
    statement: bytes
    units: tuple[str, ...]
    notified: tuple[str, ...]

    @classmethod
    def make(cls, region: str, n: int, aggregators: int, notified: float = 1.0) -> RoundFacts:
        slot = t.Slot(1782064800, 1782064860)
        price = "0.1188"
        settlement = t.SettlementRecord(settlement_id="s" * 24, source="solar", buyer="h0001", seller="h0000",
                                        bid_id="h0001-1782065040-0", ask_id="h0000-1782065040-0", quantity_wh=1234,
                                        buy_price=price, sell_price=price)
        entries = [t.EntryRecord(entry_id="e" * 24, kind=kind, seller="h0000", buyer="h0001", source="solar",
                                 quantity_wh=1234, buy_price=price, sell_price=price) for kind in ("bought", "grid")]
        reading = t.ReadingAccepted(region=region, participant_id="h0000", slot=slot, import_wh=312,
                                    export_wh={"solar": 55}, self_consumed_wh={"solar": 240}, received_at_ms=0)
        notice = t.SettlementsNotice(region=region, participant_id="h0000", slot=slot, settlements=[settlement])
        statement = t.Statement(region=region, participant_id="h0000", slot=slot, entries=entries)
        share = -(-n // aggregators) if aggregators else 1
        units = floor_units(n, aggregators)
        return cls(
            cleared=encode(t.SlotCleared(region=region, slot=slot, rule="midpoint", matched_at_ms=0,
                                         order_count=2 * n,
                                         settlements=[settlement] * max(round(notified * n / 2), 1))),
            reconciled=encode(t.SlotReconciled(region=region, slot=slot, reconciled_at_ms=0, missing_readings=[],
                                               entries=entries * n, readings=[reading] * n)),
            recorded=encode(t.SlotRecorded(region=region, slot=slot, entry_count=2 * n)),
            notice=encode(t.AgentBundle(region=region, participant_id="a0", slot=slot,
                                        notices=[notice] * max(round(notified * share), 1))
                          if aggregators else notice),
            statement=encode(t.AgentBundle(region=region, participant_id="a0", slot=slot,
                                           statements=[statement] * share) if aggregators else statement),
            units=units, notified=units if aggregators else units[:round(notified * n)])


async def floor_sim(amqp_url: str, region: str, n: int, rounds: int, orders: float, aggregators: int,
                    round_timeout_s: float, requests: str = "single",
                    notified: float | None = None) -> tuple[list[float], Counter[str]]:
    """Seconds of each floor round: N households (or K aggregators) and the bare consumer.
    With ``requests="round"`` each household sends its round as one request, as an
    aggregator of itself. ``notified`` (the share of households that get a settlements
    notice), for the whole round's pattern, not only the requests: a queue of its own for
    each household (aggregator), taking the round start, its answers, a notice and a
    statement, and the services' chain of facts (``floor_consumer``). Returns the seconds of
    each round and what the units' queues took, by kind."""
    bodies = Bodies.make(region)
    rng = random.Random(SEED)
    units = aggregators or n
    floor = Floor(amqp_url, region)
    try:
        await floor.open(floor_units(n, aggregators) if notified is not None else ())
        async with floor_process(amqp_url, region, units, None if notified is None else (n, aggregators, notified)):
            starts = [time.perf_counter()]
            for r in range(rounds):
                counts = [int(orders) + (rng.random() < orders - int(orders)) for _ in range(units)]
                if aggregators:
                    share = -(-n // aggregators)
                    body = (bodies.reading + bodies.order * max(round(orders), 1)) * share
                    sends = [_floor_aggregate(floor, f"a{u}", f"{r}.{u}", body) for u in range(units)]
                elif requests == "round":
                    sends = [_floor_aggregate(floor, f"h{u}", f"{r}.{u}", bodies.round(counts[u]))
                             for u in range(units)]
                else:
                    sends = [_floor_household(floor, f"h{u}", f"{r}.{u}", counts[u], bodies) for u in range(units)]
                await asyncio.gather(*sends)
                starts.append(await asyncio.wait_for(floor.rounds.get(), timeout=round_timeout_s))
            return [b - a for a, b in itertools.pairwise(starts)], floor.delivered
    finally:
        await floor.close()


async def _floor_household(floor: Floor, pid: str, tag: str, orders: int, bodies: Bodies) -> None:
    answers = [floor.expect(f"{tag}.{j}") for j in range(orders)]
    await asyncio.gather(floor.send("reading", bodies.reading, pid, f"{tag}.r"),
                         *(floor.send("order", bodies.order, pid, f"{tag}.{j}") for j in range(orders)))
    await asyncio.gather(*answers)
    await floor.send("finish", bodies.finish)


async def _floor_aggregate(floor: Floor, pid: str, tag: str, body: bytes) -> None:
    """A batch, answered twice (order-intake and meter-collector each answer their part);
    the sender waits for the first answer, the round for both."""
    answer = floor.expect(tag)
    await floor.send("agg", body, pid, tag, echoes=2)
    await answer


# --- sim mode -----------------------------------------------------------------------------


@dataclass
class SimResult:
    n: int
    rounds: int
    warmup: int
    durations: list[float]  # measured rounds, seconds
    floor: list[float]  # measured floor rounds (the whole round's pattern), seconds
    floor_requests: list[float]  # measured floor rounds of the requests and answers only, seconds
    floor_delivered: dict[str, float]  # what a unit's queue took per round in the whole round's floor, by kind
    cpu: dict[str, float | None]
    sent: Counter[str]  # requests sent in the measured rounds, by kind
    rejections: Counter[str]
    timeouts: float | None
    timeout_detail: str
    rss_kib: dict[str, int] = field(default_factory=dict)
    # Notices and statements a household received per round, over the whole run (a household
    # on its own; an aggregator's bundles are not counted).
    received: dict[str, float] = field(default_factory=dict)


class RoundWatch:
    """Round starts of one region, from a queue of this process; CPU and request counts at
    the start of the first measured round and at the end of the last."""

    def __init__(self, amqp_url: str, region: str, first: int, last: int, probe: CpuProbe, sent: Counter[str]) -> None:
        self.region = region
        self.first, self.last = first, last  # 1-based round numbers whose starts bound the measurement
        self.probe = probe
        self.sent = sent
        self.starts_ms: dict[int, int] = {}  # round start (market time) -> started_at_ms
        self.cpu: list[dict[str, float | None]] = []
        self.counts: list[Counter[str]] = []
        self.done = asyncio.Event()
        self.wire = Wire(amqp_url)

    async def open(self) -> None:
        await self.wire.open(f"microte.{self.region}.bench-watch", [f"{self.region}.fact.{k.ROUND_STARTED}"],
                             self._on_round, exclusive=True)

    def _on_round(self, m: AbstractIncomingMessage) -> None:
        message = decode(m.body)
        if not isinstance(message, t.RoundStarted) or message.current_round.start in self.starts_ms:
            return
        self.starts_ms[message.current_round.start] = message.started_at_ms
        if len(self.starts_ms) in (self.first, self.last):
            self.cpu.append(self.probe.snapshot())
            self.counts.append(Counter(self.sent))
            if len(self.starts_ms) == self.last:
                self.done.set()

    def durations(self) -> list[float]:
        starts = [self.starts_ms[s] for s in sorted(self.starts_ms)][self.first - 1:self.last]
        return [(b - a) / 1000 for a, b in itertools.pairwise(starts)]


def make_community(settings: Settings, n: int, aggregators: int, requests: str) -> Community:
    kwargs: dict[str, Any] = {"progress_every": 10**9, "requests": requests}
    if aggregators:
        kwargs["aggregators"] = aggregators
    return Community(settings.amqp_url, settings.region, community(n, SEED), settings.market.tariff.timezone,
                     **kwargs)


def count_sends(sim: Community) -> Counter[str]:
    """Count the community's requests by kind (it sends them all through ``Community.send``)."""
    sent: Counter[str] = Counter()
    send = sim.send

    async def counted(message: t.Message, kind: str) -> None:
        sent[kind] += 1
        await send(message, kind)

    sim.send = counted  # type: ignore[method-assign]
    return sent


async def run_sim(n: int, rounds: int, args: argparse.Namespace, base: Settings,
                  servers: dict[str, int | None]) -> SimResult:
    region = region_name("sim", n)
    work = ROOT / "var" / "bench" / region
    start = int(datetime.fromisoformat(args.start).replace(tzinfo=zone(TIMEZONE)).timestamp())
    env = {**base_env(region, work, args.ledger), "MICROTE_CLOCK_MODE": "simulation",
           # Two rounds beyond the measured ones so that households still quote in them (they do
           # not quote past the last round), and the community leaves when the last is recorded.
           "MICROTE_ROUNDS": str(rounds + EXTRA_ROUNDS),
           "MICROTE_START_TIME": str(start), "MICROTE_ROUND_SECONDS": str(args.round_seconds),
           "MICROTE_ROUND_TIMEOUT_S": str(args.round_timeout)}
    settings = from_env(env)
    floor_args = (base.amqp_url, region, n, rounds, args.floor_orders, args.aggregators,
                  max(60.0, args.round_timeout * 2), args.requests)
    print(f"  N={n}: region {region}, floor (requests) ...", file=sys.stderr, flush=True)
    floor_requests = (await floor_sim(*floor_args))[0][args.warmup:]
    print(f"  N={n}: region {region}, floor (whole round) ...", file=sys.stderr, flush=True)
    seconds, delivered = await floor_sim(*floor_args, notified=args.floor_notices)
    floor = seconds[args.warmup:]
    floor_delivered = {kind: count / ((args.aggregators or n) * rounds) for kind, count in sorted(delivered.items())}
    print(f"  N={n}: services ...", file=sys.stderr, flush=True)
    ensemble = Ensemble(env, work / "logs")
    owners = [h.participant_id for h in community(n, SEED)]  # whose queues purge_region deletes
    watch: RoundWatch | None = None
    run: asyncio.Task[Any] | None = None
    ok = False
    try:
        await ensemble.start_all(names_with_replicas(WORKERS, args.replicas))
        sim = make_community(settings, n, args.aggregators, args.requests)
        owners += [o for o in getattr(sim, "queue_owners", []) if o not in set(owners)]  # aggregators' queues
        sent = count_sends(sim)
        probe = CpuProbe({**{name: p.pid for name, p in ensemble.procs.items()}, "bench (community)": os.getpid(),
                          **servers})
        watch = RoundWatch(base.amqp_url, region, args.warmup + 1, rounds + 1, probe, sent)
        await watch.open()
        joined = asyncio.Event()
        run = asyncio.create_task(sim.run(joined))
        await _first(run, joined.wait(), timeout=60 + n / 50, what=f"{n} households joining")
        await ensemble.start_all(("clock",))
        probe.pids["clock"] = ensemble.procs["clock"].pid
        await _first(run, watch.done.wait(), timeout=120 + rounds * (args.round_timeout + 60),
                     what=f"{rounds} rounds")
        timeouts, detail = read_timeouts(ensemble)
        rss = ensemble.rss_kib()
        with contextlib.suppress(TimeoutError):  # the last rounds, then the households leave
            await asyncio.wait_for(asyncio.shield(run), timeout=EXTRA_ROUNDS * (args.round_timeout + 60))
        ok = True
        return SimResult(n=n, rounds=rounds, warmup=args.warmup, durations=watch.durations(), floor=floor,
                         floor_requests=floor_requests, floor_delivered=floor_delivered,
                         cpu=CpuProbe.delta(watch.cpu[0], watch.cpu[1]), sent=watch.counts[1] - watch.counts[0],
                         rejections=sim.tally.rejections, timeouts=timeouts, timeout_detail=detail, rss_kib=rss,
                         received={kind: sim.tally.answers[kind] / (n * max(sim.tally.rounds, 1))
                                   for kind in ("SettlementsNotice", "Statement") if not args.aggregators})
    finally:
        if run is not None and not run.done():
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        ensemble.stop_all()
        if watch is not None:
            await watch.wire.close()
        await purge_region(base.amqp_url, base.redis_url, region, owners)
        _tidy(work, ok, args.keep)


async def _first(task: asyncio.Task[Any], waited: Awaitable[Any], timeout: float, what: str) -> None:
    """Wait for ``waited``; fail if ``task`` ends first (with its error) or time runs out."""
    waiter = asyncio.ensure_future(waited)
    try:
        done, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            return
        if task in done:
            task.result()
            raise RuntimeError(f"the community ended before {what} were done")
        raise TimeoutError(f"{what} not done within {timeout:.0f} s")
    finally:
        waiter.cancel()


def _tidy(work: Path, ok: bool, keep: bool) -> None:
    if ok and not keep:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            work.parent.rmdir()  # var/bench, once empty
    elif work.exists():
        print(f"  logs and ledger kept in {work}", file=sys.stderr)


def print_sim(results: list[SimResult], args: argparse.Namespace) -> None:
    floor_what = (f"{args.aggregators} aggregators, one request per round each, answered twice" if args.aggregators
                  else f"per household per round one request with a reading, {args.floor_orders:g} orders (average) "
                  "and a finish, answered twice" if args.requests == "round" else
                  f"per household per round a reading, {args.floor_orders:g} orders (average) and a finish")
    print(f"\n== sim: simulation clock, the services as processes, {'aggregated ' if args.aggregators else ''}"
          f"community in this process ==")
    header = (f"{'households':>10} {'rounds':>9} {'median/round':>12} {'p90/round':>10} {'floor/round':>11} "
              f"{'real/floor':>10} {'req. floor':>10} {'real/req.':>9} {'part.-rounds/s':>14} "
              f"{'CPU ms/part.-round':>18} {'timeouts':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        median = statistics.median(r.durations)
        floor = statistics.median(r.floor) if r.floor else float("nan")
        requests = statistics.median(r.floor_requests) if r.floor_requests else float("nan")
        known = sum(v for v in r.cpu.values() if v is not None)
        units = r.n * len(r.durations)
        rounds = f"{len(r.durations)}+{r.warmup}"
        print(f"{r.n:>10,} {rounds:>9} {fmt_s(median):>12} {fmt_s(pct(r.durations, 0.9)):>10} "
              f"{fmt_s(floor):>11} {median / floor:>9.1f}x {fmt_s(requests):>10} {median / requests:>8.1f}x "
              f"{r.n / median:>14,.0f} "
              f"{1000 * known / units:>18.3f} {'-' if r.timeouts is None else f'{r.timeouts:.0f}':>8}")
    for r in results:
        units = r.n * len(r.durations)
        per = {kind: count / units for kind, count in sorted(r.sent.items()) if kind != k.MEMBER}
        print(f"\n  N={r.n:,}: {len(r.durations)} measured rounds after {r.warmup} of warm-up; "
              f"rounds min {fmt_s(min(r.durations))}, max {fmt_s(max(r.durations))}; floor p90 "
              f"{fmt_s(pct(r.floor, 0.9))} (requests only {fmt_s(pct(r.floor_requests, 0.9))})")
        shown = ", ".join(f"{kind} {v:.2f}" for kind, v in per.items()) or "none"
        print(f"    requests per household-round: {shown}")
        if r.received:
            print("    received per household-round (whole run): "
                  + ", ".join(f"{kind} {v:.2f}" for kind, v in r.received.items()))
        print(f"    the whole round's floor delivered per {'aggregator' if args.aggregators else 'household'}-round: "
              + ", ".join(f"{kind} {v:.2f}" for kind, v in r.floor_delivered.items()))
        for line in cpu_line(r.cpu, units, "participant-round"):
            print(line)
        if r.rss_kib:
            print("    RSS MiB: " + ", ".join(f"{n} {v / 1024:.0f}" for n, v in r.rss_kib.items()))
        if r.rejections:
            print(f"    rejections (whole run): {dict(r.rejections)}")
    copies = ("aggregator that takes the round start, its answers, a bundle of notices and one of statements"
              if args.aggregators else "household that takes the round start, its answers, a statement and, "
              f"for {args.floor_notices:g} of them (--floor-notices), a settlements notice")
    print(f"\n  round = between two RoundStarted facts (the clock's started_at_ms); req. floor: {floor_what}, "
          "through the same broker to a bare consumer process that answers each and broadcasts the next round "
          f"when all are in; floor: the whole round's pattern, the same and a durable queue per {copies}"
          " (persistent, acknowledged), with the services' facts as a chain the next round waits for (round start, "
          "then cleared; once the readings are in, reconciled, then recorded; persistent, confirmed, each through "
          "the broker, sized for N households); CPU over the measured rounds from /proc (utime+stime); beam.smp "
          "and redis-server are shared with other work")


# --- realtime mode -------------------------------------------------------------------------


P99_GOAL_S = 1.0  # the goal: order-ack p99 under a second
LAG_NOTE_S = 0.1  # the sender (or its event loop) this late at p99: the latencies are partly the benchmark's
FIND_MAX_STEPS = "10k,20k,50k,100k,200k"
ROUND_MARGIN_S = 15  # realtime: seconds of the round needed besides the load (probes, the last answers)
TICK_S = 0.01  # the benchmark's event-loop lag is sampled this often during the load
YIELD_S = 0.005  # a sender behind its schedule sends what is due for this long before it lets the loop run
SLICES = 6  # the load's order-ack p99 is also given for each sixth of it (by send time)


@dataclass
class Phase:
    """One phase of requests and their answers: the joins, the idle probes or the load."""

    name: str
    sent: dict[Key, float] = field(default_factory=dict)  # request -> when it left (perf_counter)
    answered: dict[Key, tuple[float, str]] = field(default_factory=dict)  # request -> (arrival, outcome)
    began: float = 0.0
    closed: bool = False  # every request has left
    all_in: asyncio.Event = field(default_factory=asyncio.Event)
    cpu: dict[str, float | None] = field(default_factory=dict)
    lag: list[float] = field(default_factory=list)  # open loop: seconds each message left after its time
    stalls: list[float] = field(default_factory=list)  # open loop: this process's event-loop lag, sampled
    messages: int = 0  # open loop: messages sent (a batch is one)
    bytes_out: int = 0
    answer_bytes: Counter[str] = field(default_factory=Counter)  # batch answers, by service
    answer_count: Counter[str] = field(default_factory=Counter)

    def record(self, key: Key, at: float, outcome: str) -> None:
        """An answer arrived at ``at``; the first one for a request of this phase counts."""
        if key in self.sent and key not in self.answered:
            self.answered[key] = (at, outcome)
            if self.closed and len(self.answered) == len(self.sent):
                self.all_in.set()

    def close(self) -> None:
        self.closed = True
        if len(self.answered) == len(self.sent):
            self.all_in.set()

    def latencies(self, kind: str, outcome: str | None = None) -> list[float]:
        return [at - self.sent[key] for key, (at, got) in self.answered.items()
                if _kind(key) == kind and (outcome is None or got == outcome)]

    def count(self, kind: str) -> int:
        return sum(1 for key in self.sent if _kind(key) == kind)

    def outcomes(self) -> Counter[str]:
        return Counter(f"{_kind(key)}:{got}" for key, (_, got) in self.answered.items())

    def last(self, kind: str | None = None) -> float:
        times = [at for key, (at, _) in self.answered.items() if kind is None or _kind(key) == kind]
        return max(times, default=self.began)

    def rate(self, kind: str, outcome: str | None = None) -> float:
        n = len(self.latencies(kind, outcome))
        span = self.last(kind) - self.began
        return n / span if span > 0 else float("nan")

    def failures(self, side: str) -> list[str]:
        out = []
        for kind in sorted({_kind(key) for key in self.sent}):
            missing = self.count(kind) - sum(1 for key in self.answered if _kind(key) == kind)
            if missing:
                out.append(f"{side}, {self.name}: {missing} of {self.count(kind)} {kind} requests unanswered")
        refused = {o: c for o, c in self.outcomes().items() if not o.endswith(":accepted")}
        if refused:
            out.append(f"{side}, {self.name}: not accepted: {refused}")
        return out


def _kind(key: Key) -> str:
    return str(key[0]) if isinstance(key, tuple) else str(key).split(".", 1)[0]


def _cid(key: Key) -> str:
    return ".".join(map(str, key)) if isinstance(key, tuple) else str(key)


Request = tuple[Key, bytes, str]  # the answer's key, the body, the routing key


@dataclass(frozen=True, slots=True)
class Shot:
    """One message of an open-loop load: when it leaves, what it is, and the answers it is owed."""

    at: float  # seconds after the load begins
    cid: str  # the message's id (a batch's id)
    kind: str  # order, reading or batch
    sender: str  # the member, or the aggregator of a batch
    body: bytes
    routing_key: str
    keys: tuple[Key, ...]  # one per order and reading it carries


class Side(Protocol):
    """Where requests go and answers come from: the services (Market) or the floor (EchoClient)."""

    phase: Phase | None

    def expect(self, key: Key) -> asyncio.Future[tuple[float, str]]: ...

    async def send(self, key: Key, body: bytes, routing_key: str) -> None: ...

    async def post(self, shot: Shot) -> None: ...


async def burst(phase: Phase, requests: Iterable[Request], side: Side, window: int, timeout_s: float,
                probe: CpuProbe) -> Phase:
    """Publish every request, at most ``window`` of them awaiting their answer at a time (a
    closed loop: 1 sends the next once the last is answered), until every one is answered."""
    pending = iter(requests)  # shared by the workers: memory for ``window`` requests, not all

    async def worker() -> None:
        for key, body, routing_key in pending:
            answer = side.expect(key)
            phase.sent[key] = time.perf_counter()
            await side.send(key, body, routing_key)
            await asyncio.wait({answer}, timeout=timeout_s)

    before = probe.snapshot()
    phase.began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(window)))
    phase.close()
    phase.cpu = CpuProbe.delta(before, probe.snapshot())
    return phase


async def open_loop(phase: Phase, shots: Iterable[Shot], side: Side, wait_s: float, probe: CpuProbe) -> Phase:
    """Send each message at its time whatever the answers (an open loop), then wait up to
    ``wait_s`` for the answers still missing. A message's latency runs from the moment it
    leaves; how late it left (the sender behind its schedule) is kept in ``phase.lag``."""
    in_flight: set[asyncio.Task[None]] = set()
    errors: list[BaseException] = []

    async def fire(shot: Shot, due: float) -> None:
        now = time.perf_counter()
        phase.lag.append(now - due)
        phase.messages += 1
        phase.bytes_out += len(shot.body)
        for key in shot.keys:
            phase.sent[key] = now
        await side.post(shot)

    def done(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            errors.append(exc)

    async def ticker() -> None:
        while True:
            due = time.perf_counter() + TICK_S
            await asyncio.sleep(TICK_S)
            phase.stalls.append(time.perf_counter() - due)

    before = probe.snapshot()
    ticking = asyncio.create_task(ticker())
    # The cyclic collector's full passes over the requests of a large K would stall this
    # process's loop (and so the latencies it measures) for tens of milliseconds; the load
    # makes no garbage cycles worth collecting.
    collecting = gc.isenabled()
    gc.disable()
    try:
        start = phase.began = yielded = time.perf_counter()
        for shot in shots:
            due, now = start + shot.at, time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
                yielded = time.perf_counter()
            elif now - yielded > YIELD_S:  # behind: send all that is due, yet let the sends and answers run
                await asyncio.sleep(0)
                yielded = time.perf_counter()
            task = asyncio.create_task(fire(shot, due))
            in_flight.add(task)
            task.add_done_callback(done)
        await asyncio.gather(*in_flight)
        if errors:
            raise errors[0]
        phase.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(phase.all_in.wait(), timeout=wait_s)
    finally:
        if collecting:
            gc.enable()
        ticking.cancel()
        for task in list(in_flight):
            task.cancel()
    phase.cpu = CpuProbe.delta(before, probe.snapshot())
    return phase


def answer_key(message: t.Message) -> tuple[Key, str] | None:
    """The request an answer answers (its key) and the outcome, or None for anything else."""
    if isinstance(message, t.MemberJoined):
        return ("join", message.participant_id), "accepted"
    if isinstance(message, t.OrderAccepted):
        return (("order", message.participant_id, message.client_order_id),
                "duplicate" if message.duplicate else "accepted")
    if isinstance(message, t.ReadingAccepted):
        return ("reading", message.participant_id, message.slot.start), "duplicate" if message.duplicate else "accepted"
    if isinstance(message, t.Rejected):
        outcome = f"rejected {message.reason}"
        if message.request == "SubmitOrder":
            return ("order", message.participant_id, message.reference), outcome
        if message.request == "SubmitReading":
            return ("reading", message.participant_id, int(message.reference.split("-", 1)[0] or 0)), outcome
        if message.request == "JoinMarket":
            return ("join", message.participant_id), outcome
    return None


class Market:
    """The members' (and aggregators') side of the real thing: requests out, every answer
    and round start in, through one queue bound to ``<region>.to.#``."""

    def __init__(self, amqp_url: str, region: str) -> None:
        self.region = region
        self.keys = k.Keys(region)
        self.wire = Wire(amqp_url)
        self.phase: Phase | None = None
        self.waiting: dict[Key, asyncio.Future[tuple[float, str]]] = {}
        self.rounds: list[t.RoundStarted] = []
        self.new_round = asyncio.Event()

    async def open(self) -> None:
        await self.wire.open(f"microte.{self.region}.community",
                             [f"{self.region}.to.#", self.keys.fact(k.ROUND_STARTED)], self._on_answer)

    def _on_answer(self, m: AbstractIncomingMessage) -> None:
        now = time.perf_counter()
        message = decode(m.body)
        if isinstance(message, t.RoundStarted):
            if not self.rounds or message.current_round.start > self.rounds[-1].current_round.start:
                self.rounds.append(message)
                self.new_round.set()
        elif isinstance(message, t.BatchAnswered):  # one service's answers to a batch: all arrive now
            if self.phase is not None:
                self.phase.answer_bytes[message.service] += len(m.body)
                self.phase.answer_count[message.service] += 1
            for answer in message.answers:
                self._answered(answer_key(answer), now)
        else:
            self._answered(answer_key(message), now)

    def _answered(self, found: tuple[Key, str] | None, now: float) -> None:
        if found is None:
            return
        key, outcome = found
        waiting = self.waiting.pop(key, None)
        if waiting is not None and not waiting.done():
            waiting.set_result((now, outcome))
        if self.phase is not None:
            self.phase.record(key, now, outcome)

    def expect(self, key: Key) -> asyncio.Future[tuple[float, str]]:
        future = self.waiting[key] = asyncio.get_running_loop().create_future()
        return future

    async def send(self, key: Key, body: bytes, routing_key: str) -> None:
        await self.wire.publish(body, routing_key)

    async def post(self, shot: Shot) -> None:
        await self.wire.publish(shot.body, shot.routing_key)

    async def next_round(self, timeout_s: float) -> t.RoundStarted:
        self.new_round.clear()
        await asyncio.wait_for(self.new_round.wait(), timeout=timeout_s)
        return self.rounds[-1]


class EchoClient:
    """The members' side of the floor: the same messages to the bare consumer, which echoes
    each (a batch twice, as order-intake and meter-collector answer it)."""

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.phase: Phase | None = None

    def _on_echo(self, inner: asyncio.Future[float], keys: tuple[Key, ...],
                 outer: asyncio.Future[tuple[float, str]] | None = None) -> None:
        phase = self.phase

        def done(f: asyncio.Future[float]) -> None:
            if f.cancelled():
                return
            if outer is not None and not outer.done():
                outer.set_result((f.result(), "accepted"))
            if phase is not None:
                for key in keys:
                    phase.record(key, f.result(), "accepted")

        inner.add_done_callback(done)

    def expect(self, key: Key) -> asyncio.Future[tuple[float, str]]:
        future: asyncio.Future[tuple[float, str]] = asyncio.get_running_loop().create_future()
        self._on_echo(self.floor.expect(_cid(key)), (key,), future)
        return future

    async def send(self, key: Key, body: bytes, routing_key: str) -> None:
        await self.floor.send(_kind(key), body, str(key[1]) if isinstance(key, tuple) else "p", _cid(key))

    async def post(self, shot: Shot) -> None:
        self._on_echo(self.floor.expect(shot.cid), shot.keys)
        await self.floor.send(shot.kind, shot.body, shot.sender, shot.cid, echoes=2 if shot.kind == "batch" else 1)


@dataclass(frozen=True)
class Plan:
    """The members of one K in the order of their send times, those times, and who sends
    for them: member i (in that order) is in batch i // batch_size, which aggregator
    batch mod A sends, at the time of its first member; without aggregators each member
    sends its own order and reading at its time."""

    members: list[str]
    times: list[float]  # seconds after the load begins
    agents: list[str]
    batch_size: int

    @classmethod
    def make(cls, n: int, spread_s: float, spacing: str, aggregators: int, batch_size: int) -> Plan:
        width = max(5, len(str(n - 1)))
        members = [f"m{i:0{width}d}" for i in range(n)]
        if spacing == "random":
            rng = random.Random(SEED)
            times = sorted(rng.uniform(0, spread_s) for _ in range(n))
        else:
            times = [spread_s * i / n for i in range(n)]
        agents = agent_ids(min(aggregators, n))
        size = max(1, min(batch_size, -(-n // len(agents)))) if agents else 1
        return cls(members, times, agents, size)

    def agent_of(self, i: int) -> str | None:
        return self.agents[i // self.batch_size % len(self.agents)] if self.agents else None

    @property
    def batches(self) -> int:
        return -(-len(self.members) // self.batch_size) if self.agents else 0


def _order(i: int, r: t.RoundStarted, tag: str) -> t.OrderItem:
    side = "bid" if i % 2 else "ask"
    return t.OrderItem(client_order_id=f"{tag}-{r.current_round.start}", side=side, quantity_wh=500 + i % 1000,
                       price="0.1200" if side == "bid" else "0.0800", source="solar", slot=r.next_settle)


def _reading(i: int, r: t.RoundStarted) -> t.ReadingItem:
    return t.ReadingItem(slot=r.current_round, import_wh=200 + i % 300, export_wh={"solar": i % 90},
                         self_consumed_wh={"solar": 150})


def load_shots(region: str, plan: Plan, r: t.RoundStarted, tag: str, requests: str = "single") -> Iterator[Shot]:
    """Per member an order for the next open slot and a reading for the round being
    delivered: two messages of its own at its time (``requests="round"``: one, a batch of
    its own), or an item of its aggregator's batch. Encoded as they are sent, so that
    memory does not grow with K."""
    keys, delivered = k.Keys(region), r.current_round.start
    n = len(plan.members)
    if not plan.agents:
        for i, pid in enumerate(plan.members):
            o, reading = _order(i, r, tag), _reading(i, r)
            order_key: Key = ("order", pid, o.client_order_id)
            reading_key: Key = ("reading", pid, delivered)
            if requests == "round":
                batch_id = f"{pid}-{tag}-{delivered}"
                yield Shot(plan.times[i], batch_id, "batch", pid,
                           encode(t.SubmitBatch(region=region, participant_id=pid, batch_id=batch_id, items=[
                               t.ParticipantRound(participant_id=pid, orders=[o], reading=reading)])),
                           keys.request(k.BATCH), (order_key, reading_key))
                continue
            yield Shot(plan.times[i], _cid(order_key), "order", pid,
                       encode(t.SubmitOrder(region=region, participant_id=pid, **msgspec.structs.asdict(o))),
                       keys.request(k.ORDER), (order_key,))
            yield Shot(plan.times[i], _cid(reading_key), "reading", pid,
                       encode(t.SubmitReading(region=region, participant_id=pid, **msgspec.structs.asdict(reading))),
                       keys.request(k.READING), (reading_key,))
        return
    for b, first in enumerate(range(0, n, plan.batch_size)):
        agent = plan.agents[b % len(plan.agents)]
        items, owed = [], []
        for i in range(first, min(first + plan.batch_size, n)):
            pid, o = plan.members[i], _order(i, r, tag)
            items.append(t.ParticipantRound(participant_id=pid, orders=[o], reading=_reading(i, r)))
            owed += [("order", pid, o.client_order_id), ("reading", pid, delivered)]
        batch_id = f"{agent}-{tag}-{delivered}-{b}"
        yield Shot(plan.times[first], batch_id, "batch", agent,
                   encode(t.SubmitBatch(region=region, participant_id=agent, batch_id=batch_id, items=items)),
                   keys.request(k.BATCH), tuple(owed))


def probe_requests(region: str, plan: Plan, r: t.RoundStarted, probes: int) -> list[Request]:
    """Orders for the idle latency: a member's own, or a one-order batch of its aggregator."""
    keys = k.Keys(region)
    out: list[Request] = []
    for i, pid in enumerate(plan.members[:probes]):
        o = _order(i, r, "p")
        key: Key = ("order", pid, o.client_order_id)
        agent = plan.agent_of(i)
        if agent is None:
            out.append((key, encode(t.SubmitOrder(region=region, participant_id=pid, **msgspec.structs.asdict(o))),
                        keys.request(k.ORDER)))
        else:
            batch = t.SubmitBatch(region=region, participant_id=agent,
                                  batch_id=f"{agent}-p-{r.current_round.start}-{i}",
                                  items=[t.ParticipantRound(participant_id=pid, orders=[o])])
            out.append((key, encode(batch), keys.request(k.BATCH)))
    return out


def join_requests(region: str, plan: Plan) -> Iterator[Request]:
    keys = k.Keys(region)
    for i, pid in enumerate(plan.members):
        yield (("join", pid), encode(t.JoinMarket(region=region, participant_id=pid, agent=plan.agent_of(i))),
               keys.request(k.MEMBER))


@dataclass
class RtRun:
    """One side (the services or the floor) of one K: its joins, idle probes and load."""

    joins: Phase
    probes: Phase
    load: Phase


@dataclass
class RtStats:
    """An RtRun summarised (the runs themselves hold every request: too much to keep for many K)."""

    joins_per_s: float
    idle: list[float]  # idle order-ack latencies, seconds
    orders_ok: int
    orders_per_s: float
    ack: list[float]  # the load's order-ack latencies (every outcome), sorted
    readings: list[float]
    requests_per_s: float  # every answer of the load / (last answer - first send)
    tail: float  # the load's last answer - its last send, seconds
    lag: list[float]  # open loop: how late each message left
    stalls: list[float]  # open loop: this process's event-loop lag
    sent: int
    answered: int
    requests: int  # orders and readings of the load
    outcomes: Counter[str]
    cpu: dict[str, float | None]
    messages: int
    bytes_out: int
    answer_bytes: dict[str, float]  # mean bytes of a batch answer, by service
    by_slice: list[float]  # order-ack p99 of the orders sent in each SLICES-th of the load
    failures: list[str]

    @classmethod
    def of(cls, run: RtRun, side: str) -> RtStats:
        phases = (run.joins, run.probes, run.load)
        load = run.load
        span = load.last() - load.began
        return cls(
            joins_per_s=run.joins.rate("join"), idle=run.probes.latencies("order"),
            orders_ok=len(load.latencies("order", "accepted")), orders_per_s=load.rate("order", "accepted"),
            ack=sorted(load.latencies("order")), readings=load.latencies("reading"),
            requests_per_s=len(load.answered) / span if span > 0 else float("nan"),
            tail=load.last() - max(load.sent.values(), default=load.began), lag=load.lag, stalls=load.stalls,
            sent=sum(len(p.sent) for p in phases), answered=sum(len(p.answered) for p in phases),
            requests=len(load.sent), outcomes=load.outcomes(), cpu=load.cpu, messages=load.messages,
            bytes_out=load.bytes_out,
            answer_bytes={s: load.answer_bytes[s] / c for s, c in sorted(load.answer_count.items())},
            by_slice=_by_slice(load), failures=[f for p in phases for f in p.failures(side)])

    @property
    def p99(self) -> float:
        return pct(self.ack, 0.99)

    @property
    def behind(self) -> bool:
        """The benchmark process could not keep its own schedule: latencies are partly its own."""
        return pct(self.lag, 0.99) > LAG_NOTE_S or pct(self.stalls, 0.99) > LAG_NOTE_S


def _by_slice(load: Phase) -> list[float]:
    """Order-ack p99 of the orders sent in each SLICES-th of the load (by send time)."""
    end = max(load.sent.values(), default=load.began)
    if end - load.began < 0.01:  # all sent at once
        return []
    width = (end - load.began) / SLICES
    slices: list[list[float]] = [[] for _ in range(SLICES)]
    for key, (at, _) in load.answered.items():
        if _kind(key) == "order":
            sent = load.sent[key]
            slices[min(int((sent - load.began) / width), SLICES - 1)].append(at - sent)
    return [pct(s, 0.99) for s in slices]


@dataclass
class RtResult:
    members: int
    services: RtStats
    floor: RtStats | None
    round_moved: bool
    problems: list[str]
    batches: int
    batch_size: int

    def failures(self) -> list[str]:
        out = list(self.problems) + self.services.failures + (self.floor.failures if self.floor else [])
        if self.round_moved:
            out.append("the round moved on during the load (use longer --round-seconds or a shorter --spread)")
        return out

    @property
    def within_goal(self) -> bool:
        return not self.failures() and self.services.p99 < P99_GOAL_S


def wall_of(perf: float) -> float:
    """A ``time.perf_counter()`` reading as wall-clock time."""
    return time.time() - (time.perf_counter() - perf)


async def rt_phases(region: str, plan: Plan, pick: Callable[[Phase], Awaitable[t.RoundStarted]],
                    args: argparse.Namespace, side: Side, cpu: CpuProbe) -> RtRun:
    """Every member joins (``--window`` awaiting their answer at most); then, in the round
    ``pick`` gives, ``--probes`` orders one at a time, then the load: every member's order
    and reading, on the plan's open-loop schedule, or (``--arrivals burst``, members on their
    own) at once with ``--window`` awaiting an answer at most."""
    n = len(plan.members)
    wait_s = 60.0 + n / 100
    side.phase = joins = Phase("joins")
    await burst(joins, join_requests(region, plan), side, args.window, wait_s, cpu)
    r = await pick(joins)
    side.phase = idle = Phase("idle orders")
    await burst(idle, probe_requests(region, plan, r, args.probes), side, 1, wait_s, cpu)
    side.phase = load = Phase("orders and readings")
    if args.arrivals == "burst" and not plan.agents:
        closed = ((s.keys[0], s.body, s.routing_key) for s in load_shots(region, plan, r, "o", args.requests))
        await burst(load, closed, side, args.window, wait_s, cpu)
    else:
        await open_loop(load, load_shots(region, plan, r, "o", args.requests), side, max(60.0, args.round_seconds), cpu)
    side.phase = None
    return RtRun(joins, idle, load)


def make_plan(n: int, args: argparse.Namespace) -> Plan:
    spread = args.spread if args.arrivals == "spread" else 0.0
    return Plan.make(n, spread, args.spacing, args.aggregators, args.batch_size)


async def rt_floor(n: int, region: str, args: argparse.Namespace, base: Settings,
                   servers: dict[str, int | None]) -> RtStats:
    """The floor of one K: the same joins, probes and load, answered by the bare consumer."""
    plan = make_plan(n, args)
    d = args.round_seconds
    floor = Floor(base.amqp_url, region)
    try:
        await floor.open()
        async with floor_process(base.amqp_url, region, 0) as pid:
            start = int(time.time()) // d * d
            windows = t.RoundStarted(region=region, fence=1, started_at_ms=0, duration=d, close_steps=2,
                                     timezone=TIMEZONE, current_round=t.Slot(start, start + d),
                                     last_settle=t.Slot(start + d, start + 2 * d),
                                     next_settle=t.Slot(start + 2 * d, start + 3 * d), grid=[])

            async def same_windows(_: Phase) -> t.RoundStarted:
                return windows

            run = await rt_phases(region, plan, same_windows, args, EchoClient(floor),
                                  CpuProbe({"floor consumer": pid, "bench": os.getpid(), **servers}))
            return RtStats.of(run, "floor")
    finally:
        await floor.close()


async def run_realtime(n: int, args: argparse.Namespace, base: Settings, servers: dict[str, int | None]) -> RtResult:
    region = region_name("rt", n)
    work = ROOT / "var" / "bench" / region
    plan = make_plan(n, args)
    d = args.round_seconds
    floor: RtStats | None = None
    if args.floor:
        print(f"  K={n:,}: region {region}, floor ...", file=sys.stderr, flush=True)
        floor = await rt_floor(n, region, args, base, servers)
        _progress(n, "floor", floor)

    print(f"  K={n:,}: region {region}, services ...", file=sys.stderr, flush=True)
    env = {**base_env(region, work, args.ledger), "MICROTE_CLOCK_MODE": "realtime", "MICROTE_ROUND_SECONDS": str(d)}
    ensemble = Ensemble(env, work / "logs")
    market = Market(base.amqp_url, region)
    need = args.spread + ROUND_MARGIN_S if args.arrivals == "spread" else 0.75 * d
    ok = False
    try:
        await market.open()  # before the clock: its first round start is not missed
        await ensemble.start_all(("ledger-writer", *names_with_replicas(SCALED, args.replicas), "clock"))
        if not market.rounds:
            await market.next_round(timeout_s=30)

        async def pick_round(joins: Phase) -> t.RoundStarted:
            # A round that began before any member joined is reconciled at once, empty (no
            # active member had to report), and refuses its readings: take one that began
            # after the first join, with the load's time still ahead.
            r = market.rounds[-1]
            first_join = wall_of(min((at for at, _ in joins.answered.values()), default=time.perf_counter()))
            if r.started_at_ms / 1000 <= first_join or r.current_round.end - time.time() < need:
                print(f"  K={n:,}: waiting for the next round to start ...", file=sys.stderr, flush=True)
                r = await market.next_round(timeout_s=d + 30)
            return r

        cpu = CpuProbe({**{name: p.pid for name, p in ensemble.procs.items()}, "bench": os.getpid(), **servers})
        run = await rt_phases(region, plan, pick_round, args, market, cpu)
        began, ended = wall_of(run.probes.began), wall_of(run.load.last())
        moved = any(began < r.started_at_ms / 1000 <= ended for r in market.rounds)
        problems = [f"{name}: exited with {p.returncode}" for name, p in ensemble.procs.items() if p.poll() is not None]
        services = RtStats.of(run, "services")
        _progress(n, "services", services)
        result = RtResult(members=n, services=services, floor=floor, round_moved=moved, problems=problems,
                          batches=plan.batches, batch_size=plan.batch_size)
        ok = not result.failures()
        return result
    finally:
        ensemble.stop_all()
        await market.wire.close()
        await purge_region(base.amqp_url, base.redis_url, region, [])
        _tidy(work, ok, args.keep)


def _progress(n: int, side: str, s: RtStats) -> None:
    print(f"  K={n:,} {side}: order-ack p50 {fmt_s(pct(s.ack, 0.5))}, p99 {fmt_s(s.p99)}, max "
          f"{fmt_s(max(s.ack, default=None))}; tail {fmt_s(s.tail)}; sender lag p99 {fmt_s(pct(s.lag, 0.99))}; "
          f"{s.answered:,} of {s.sent:,} answered", file=sys.stderr, flush=True)


def on_its_own(args: argparse.Namespace) -> str:
    """How a household or member on its own sends (``--requests``)."""
    return "its round in one request" if args.requests == "round" else "one message per request"


def print_realtime(results: list[RtResult], args: argparse.Namespace) -> None:
    spread = args.arrivals == "spread"
    who = (f"{args.aggregators} aggregators, batches of up to {args.batch_size} members"
           if args.aggregators else f"every member on its own ({on_its_own(args)})")
    load = (f"open loop, sent {'evenly' if args.spacing == 'even' else 'at seeded-random times'} over "
            f"{args.spread:g} s" if spread else
            "all batches at once" if args.aggregators else f"closed loop, window {args.window}")
    print(f"\n== realtime: order-intake x{args.replicas}, meter-collector x{args.replicas}, ledger-writer, clock "
          f"(real time, {args.round_seconds} s rounds); {who}; {load} ==")
    header = (f"{'members':>8} {'run':>8} {'joins/s':>8} {'idle p50':>9} {'idle p99':>9} {'orders ok':>9} "
              f"{'orders/s':>8} {'ack p50':>8} {'ack p99':>8} {'ack max':>8} {'reading p99':>11} {'tail':>8} "
              f"{'lag p99':>8} {'answered':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        sides = [("services", r.services)] + ([("floor", r.floor)] if r.floor is not None else [])
        for label, s in sides:
            print(f"{r.members:>8,} {label:>8} {s.joins_per_s:>8,.0f} {fmt_s(pct(s.idle, 0.5)):>9} "
                  f"{fmt_s(pct(s.idle, 0.99)):>9} {s.orders_ok:>9,} {s.orders_per_s:>8,.0f} "
                  f"{fmt_s(pct(s.ack, 0.5)):>8} {fmt_s(s.p99):>8} {fmt_s(max(s.ack, default=None)):>8} "
                  f"{fmt_s(pct(s.readings, 0.99)):>11} {fmt_s(s.tail):>8} "
                  f"{fmt_s(pct(s.lag, 0.99)) if s.lag else '-':>8} "
                  f"{'all' if s.answered == s.sent else f'{s.sent - s.answered} NOT':>8}")
        if r.floor is not None:
            f, s = r.floor, r.services
            print(f"{'':>8} {'ratio':>8} {_ratio(f.joins_per_s, s.joins_per_s):>8} "
                  f"{_ratio(pct(s.idle, 0.5), pct(f.idle, 0.5)):>9} {_ratio(pct(s.idle, 0.99), pct(f.idle, 0.99)):>9} "
                  f"{'':>9} {_ratio(f.orders_per_s, s.orders_per_s):>8} "
                  f"{_ratio(pct(s.ack, 0.5), pct(f.ack, 0.5)):>8} {_ratio(s.p99, f.p99):>8} "
                  f"{_ratio(max(s.ack, default=math.nan), max(f.ack, default=math.nan)):>8}")
    for r in results:
        s = r.services
        print(f"\n  K={r.members:,}: load answers {dict(s.outcomes)}")
        if r.batches:
            answers = ", ".join(f"{svc} {b / 1024:.0f} KiB" for svc, b in s.answer_bytes.items())
            size = s.bytes_out / max(s.messages, 1) / 1024
            print(f"    {r.batches:,} batches of up to {r.batch_size} members, {size:.0f} KiB each; a batch's "
                  f"answers: {answers or 'none'} (the floor echoes the batch twice)")
        for label, side in (("services", s), ("floor", r.floor)):
            if side is None:
                continue
            if side.lag:
                print(f"    {label}: sender lag p50 {fmt_s(pct(side.lag, 0.5))}, p99 {fmt_s(pct(side.lag, 0.99))}, "
                      f"max {fmt_s(max(side.lag))}; this process's event-loop lag p99 "
                      f"{fmt_s(pct(side.stalls, 0.99))}, max {fmt_s(max(side.stalls, default=None))}"
                      + ("  <- BEHIND its schedule: these latencies are partly the benchmark's" if side.behind else ""))
            if side.by_slice:
                print(f"    {label}: order-ack p99 of each sixth of the load (by send time): "
                      + ", ".join(fmt_s(v) for v in side.by_slice))
            for line in cpu_line(side.cpu, side.requests, f"order or reading of the load ({label})"):
                print(line)
    if args.arrivals == "spread" or args.aggregators:
        when = f"sent at its time within {args.spread:g} s" if args.arrivals == "spread" else "sent at once"
        print(f"\n  idle: {args.probes} orders one at a time before the load; load: every member's order and reading "
              f"{when} whatever the answers (an open loop); latency = the message "
              "leaving this process (a batch: all its orders) to its answer's arrival here (a batch: order-intake's "
              "BatchAnswered); tail = last answer - last send; lag = how late a message left after its time; rates = "
              "answers / (last answer - first send), about the offered rate while the services keep up; ratio = "
              "floor/services for rates, services/floor for latencies")
    else:
        print(f"\n  idle: {args.probes} orders one at a time before the burst; burst: every member's order and "
              f"reading, at most {args.window} awaiting their answer (a closed loop: the burst latencies are mostly "
              "queueing, and grow with --window); latency = publish start to the answer's arrival here; "
              "rates = answers / (last answer - first publish); ratio = floor/services for rates, "
              "services/floor for latencies")


def print_find_max(results: list[RtResult], steps: list[int], args: argparse.Namespace) -> None:
    kept = [r.members for r in results if r.within_goal]
    best = max(kept, default=0)
    mode = f"{args.aggregators} aggregators" if args.aggregators else f"members on their own, {on_its_own(args)}"
    print(f"\n== find-max ({mode}, arrivals {args.arrivals}): order-ack p99 under {P99_GOAL_S:g} s, "
          "every request answered and accepted ==")
    for r in results:
        why = "; ".join(r.failures()) or (f"p99 {fmt_s(r.services.p99)}" if r.within_goal else
                                          f"p99 {fmt_s(r.services.p99)} >= {P99_GOAL_S:g} s")
        floor = f"; floor p99 {fmt_s(r.floor.p99)}" if r.floor is not None else ""
        note = "; the sender fell behind its schedule" if r.services.behind else ""
        print(f"  {r.members:>9,}: {'kept' if r.within_goal else 'NOT kept'} ({why}{floor}{note})")
    if not best:
        print("  largest member count within the goal: none of those tried")
    elif best == steps[-1] and len(results) == len(steps):
        print(f"  largest member count within the goal: at least {best:,} (the largest step; add larger --members)")
    else:
        print(f"  largest member count within the goal: {best:,} (the limit lies between it and "
              f"{results[-1].members:,}; the counts between were not tried)")


def _ratio(a: float, b: float) -> str:
    return "-" if not (a == a and b == b) or b == 0 else f"{a / b:.1f}x"


# --- main -----------------------------------------------------------------------------------


def check_aggregators(aggregators: int) -> str | None:
    if aggregators <= 0:
        return None
    if "aggregators" not in inspect.signature(Community).parameters:
        return ("--aggregators: this Community has no 'aggregators' option yet "
                f"(services/participants/community.py: Community{inspect.signature(Community)})")
    return None


def check_realtime(args: argparse.Namespace) -> str | None:
    if args.mode != "realtime":
        return "--find-max is for --mode realtime" if args.find_max else None
    if not 1 <= args.batch_size <= t.MAX_BATCH_ITEMS:
        return f"--batch-size must be within 1..{t.MAX_BATCH_ITEMS}"
    if args.arrivals == "spread" and not 0 <= args.spread <= args.round_seconds - ROUND_MARGIN_S:
        return (f"--spread must be within 0..{args.round_seconds - ROUND_MARGIN_S} s: the load, the idle probes and "
                f"the last answers must fit in one {args.round_seconds} s round")
    return None


def rounds_for(n: int, rounds: int) -> int:
    if rounds:
        return rounds
    return 30 if n <= 100 else 20 if n <= 1000 else 10


async def amain(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    base = from_env({key: v for key, v in os.environ.items() if key.startswith("MICROTE_")})
    rabbit, redis = await server_versions(base)
    servers: dict[str, int | None] = {}
    notes = []
    for name, comm, url, port in (("rabbitmq (beam.smp)", "beam.smp", base.amqp_url, 5672),
                                  ("redis-server", "redis-server", base.redis_url, 6379)):
        pid, note = server_pid(comm, url, port)
        servers[name] = pid
        if note:
            notes.append(note)
    print(f"ensemble benchmark ({args.mode}): the services as processes against a bare-RabbitMQ floor")
    for line in machine(rabbit, redis):
        print(line)
    for note in notes:
        print(f"note:       {note}")
    failures: list[str] = []
    if args.mode == "sim":
        sizes = parse_list(args.households)
        plan = [(n, rounds_for(n, args.rounds)) for n in sizes]
        print(f"inputs:     households {', '.join(f'{n:,} x {r} rounds' for n, r in plan)} (first {args.warmup} "
              f"are warm-up); {args.round_seconds} s market rounds from {args.start} {TIMEZONE}; seed {SEED}; "
              f"round timeout {args.round_timeout:g} s; replicas of order-intake and meter-collector "
              f"{args.replicas}; aggregators {args.aggregators or f'none, {on_its_own(args)}'}; floor orders per "
              "household-round "
              f"{args.floor_orders:g}, notices per household-round {args.floor_notices:g}; "
              f"ledger {args.ledger or 'SQLite under var/bench'}")
        results: list[SimResult] = []
        for n, rounds in plan:
            if rounds <= args.warmup + 1:
                raise SystemExit(f"--rounds must exceed --warmup + 1 (N={n}: {rounds} rounds)")
            result = await run_sim(n, rounds, args, base, servers)
            results.append(result)
            if result.timeouts is None:
                failures.append(f"N={n}: round timeouts unknown: {result.timeout_detail}")
            elif result.timeouts:
                failures.append(f"N={n}: {result.timeouts:.0f} ROUND(S) TIMED OUT: {result.timeout_detail}")
        print_sim(results, args)
    else:
        sizes = parse_list(args.members or (FIND_MAX_STEPS if args.find_max else "1000,10000"))
        who = (f"registered to {args.aggregators} aggregators (JoinMarket agent), which send their orders and "
               f"readings in SubmitBatch messages of up to {args.batch_size} members" if args.aggregators else
               f"each sending its own, {on_its_own(args)}")
        when = (f"open loop: each member's at its time within {args.spread:g} s ({args.spacing} spacing, seed "
                f"{SEED}), whatever the answers" if args.arrivals == "spread" else
                "all batches at once" if args.aggregators else f"closed loop: at most {args.window} awaiting")
        steps = " (find-max: until one misses)" if args.find_max else ""
        print(f"inputs:     members {', '.join(f'{n:,}' for n in sizes)}{steps}; "
              f"per member one JoinMarket (window {args.window}), then in one round {args.probes} idle orders and "
              f"the load: one SubmitOrder (next open slot) and one SubmitReading (the round delivered) per member, "
              f"{who}; {when}; {args.round_seconds} s rounds; replicas {args.replicas}; "
              f"floor {'yes' if args.floor else 'no'}")
        rt: list[RtResult] = []
        for n in sizes:
            result_rt = await run_realtime(n, args, base, servers)
            rt.append(result_rt)
            failures += [f"K={n}: {f}" for f in result_rt.failures()]
            if args.find_max and not result_rt.within_goal:
                break
        print_realtime(rt, args)
        if args.find_max:
            print_find_max(rt, sizes, args)
    print(f"\nload avg at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    if failures:
        print("\n" + "!" * 78)
        for failure in failures:
            print(f"FAILED: {failure}")
        print("!" * 78)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_floor-consumer"]:  # the floor's child process
        facts = RoundFacts.make(argv[1], int(argv[3]), int(argv[4]), float(argv[5])) if len(argv) > 3 else None
        asyncio.run(floor_consumer(from_env().amqp_url, argv[1], int(argv[2]), facts))
        return 0
    parser = argparse.ArgumentParser(
        prog="bench/ensemble.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("sim", "realtime"), default="sim")
    parser.add_argument("--households", default="20,100,1000",
                        help="sim: community sizes, comma-separated, k allowed (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="sim: rounds per size, warm-up included (default: 30 up to 100 households, "
                             "20 up to 1000, 10 beyond)")
    parser.add_argument("--warmup", type=int, default=3, help="sim: rounds discarded first (default: %(default)s)")
    parser.add_argument("--aggregators", type=int, default=0,
                        help="sim: K aggregators each submitting for N/K households (needs Community(aggregators=)); "
                             "realtime: members registered to K aggregators that send their orders and readings in "
                             "batches")
    parser.add_argument("--requests", choices=REQUESTS, default="round",
                        help="without --aggregators, how each household (member) sends its round: 'round', one "
                             "request of its own with its reading, orders and finish (a batch of one); 'single', "
                             "one message each (default: %(default)s)")
    parser.add_argument("--floor-notices", type=float, default=0.4,
                        help="sim: the share of households on their own that get a settlements notice in a round of "
                             "the whole round's floor (default: %(default)s; the real run prints its own)")
    parser.add_argument("--floor-orders", type=float, default=2.0,
                        help="sim: orders per household-round in the floor, an average (default: %(default)s; "
                             "the real run prints its own)")
    parser.add_argument("--start", default=START, help=f"sim: local market time of the first round, {TIMEZONE} "
                                                       "(default: %(default)s)")
    parser.add_argument("--round-timeout", type=float, default=30.0,
                        help="sim: MICROTE_ROUND_TIMEOUT_S (default: %(default)s)")
    parser.add_argument("--members",
                        help="realtime: member counts, comma-separated, k allowed (default: 1000,10000; with "
                             f"--find-max the steps, default {FIND_MAX_STEPS})")
    parser.add_argument("--arrivals", choices=("spread", "burst"), default="spread",
                        help="realtime: spread: an open loop, each member's order and reading sent at its time "
                             "within --spread seconds whatever the answers; burst: a closed loop, at most --window "
                             "awaiting (with --aggregators: every batch at once) (default: %(default)s)")
    parser.add_argument("--spread", type=float, default=30.0,
                        help="realtime: seconds over which the members send (default: %(default)s, the first half "
                             "of a 60 s round)")
    parser.add_argument("--spacing", choices=("even", "random"), default="even",
                        help="realtime: the members' send times, evenly spaced or seeded-random uniform "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=500,
                        help="realtime with --aggregators: members per batch, at most (default: %(default)s; "
                             f"the services take {t.MAX_BATCH_ITEMS:,})")
    parser.add_argument("--find-max", action="store_true",
                        help="realtime: run the --members counts in turn until order-ack p99 reaches 1 s or a "
                             "request goes unanswered or refused, and print the largest count within the goal")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="realtime: measure the floor before each count (default: yes)")
    parser.add_argument("--probes", type=int, default=100,
                        help="realtime: orders sent one at a time (each once the last is answered) before the burst, "
                             "for the idle latency "
                             "(default: %(default)s)")
    parser.add_argument("--window", type=int, default=1000,
                        help="realtime: requests awaiting their answer at most (default: %(default)s)")
    parser.add_argument("--round-seconds", type=int, default=60, help="MICROTE_ROUND_SECONDS (default: %(default)s)")
    parser.add_argument("--replicas", type=int, default=1, choices=(1, 2, 3, 4),
                        help="replicas of order-intake and meter-collector (default: %(default)s)")
    parser.add_argument("--ledger", help="ledger URL (default: a fresh SQLite file under var/bench/<region>)")
    parser.add_argument("--keep", action="store_true", help="keep var/bench/<region> (logs, ledger) after success")
    args = parser.parse_args(argv)
    if problem := check_aggregators(args.aggregators if args.mode == "sim" else 0) or check_realtime(args):
        print(f"bench/ensemble.py: {problem}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: services stopped, regions purged", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
