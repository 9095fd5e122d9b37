"""Broker benchmark: what RabbitMQ spends per message, persistent against transient.

Every answer, statement and notice microte sends a participant is a persistent message in
a durable queue of its own, so the broker's cost per message decides how many households
a round can carry (README, "The whole ensemble"). This measures that cost alone: M
messages of a given size, published with confirms (``--window`` awaiting at most) to Q
durable queues (one routing key each, through a topic exchange, as microte's
``<region>.to.<participant>.#``), each with a consumer that acknowledges, once with
``delivery_mode`` 2 (persistent) and once with 1 (transient), alternating ``--repeats``
times. Per mode: wall time, messages/s, and the CPU of RabbitMQ's ``beam.smp`` per
message (the median of the repeats), then the ratio. It prints the machine, the versions
and the inputs. Its queues and exchange are its own and are deleted afterwards.

    .venv/bin/python bench/broker.py                          # 1,000 queues, 20,000 messages
    .venv/bin/python bench/broker.py --queues 200 --repeats 3

Needs RabbitMQ (scripts/services.sh rabbitmq); ``beam.smp`` must be on this machine for
its CPU to be read.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ensemble import cpu_of, machine, server_pid, server_versions  # noqa: E402

from shared.runtime.settings import from_env  # noqa: E402


async def one_run(amqp_url: str, mode: int, queues: int, messages: int, size: int, window: int,
                  beam: int | None) -> tuple[float, float | None]:
    """Seconds and beam.smp CPU seconds for ``messages`` of ``mode`` through ``queues`` queues."""
    tag = f"bench-broker-{secrets.token_hex(3)}"
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()  # publisher confirms: each publish waits for its confirm
        await channel.set_qos(prefetch_count=500)
        exchange = await channel.declare_exchange(tag, aio_pika.ExchangeType.TOPIC, auto_delete=True)
        got = 0
        done = asyncio.Event()

        async def on_message(m: AbstractIncomingMessage) -> None:
            nonlocal got
            await m.ack()
            got += 1
            if got == messages:
                done.set()

        declared: list[tuple[aio_pika.abc.AbstractQueue, str]] = []
        try:
            for q in range(queues):
                queue = await channel.declare_queue(f"{tag}.{q}", durable=True)
                await queue.bind(exchange, routing_key=f"{tag}.to.p{q}.#")
                declared.append((queue, await queue.consume(on_message)))
            body = b"x" * size
            before, began = cpu_of(beam) if beam else None, time.perf_counter()
            for first in range(0, messages, window):
                await asyncio.gather(*(
                    exchange.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode(mode)),
                                     routing_key=f"{tag}.to.p{i % queues}.answer")
                    for i in range(first, min(first + window, messages))))
            await asyncio.wait_for(done.wait(), timeout=600)
            seconds, after = time.perf_counter() - began, cpu_of(beam) if beam else None
        finally:
            for queue, consumer in declared:  # cancelled first: the broker does not cancel it noisily
                await queue.cancel(consumer)
                await queue.delete(if_unused=False, if_empty=False)
    cpu = after - before if before is not None and after is not None else None
    return seconds, cpu


async def main_async(args: argparse.Namespace) -> int:
    settings = from_env()
    rabbit, redis = await server_versions(settings)
    beam, note = server_pid("beam.smp", settings.amqp_url, 5672)
    print("broker benchmark: RabbitMQ's CPU per message, persistent against transient")
    for line in machine(rabbit, redis):
        print(line)
    print(f"inputs:     {args.messages:,} messages of {args.size} bytes per run, to {args.queues:,} durable queues "
          f"(a consumer each, acknowledging), confirms awaited {args.window} at a time; {args.repeats} runs per "
          "mode, alternating")
    if note:
        print(f"note:       {note}")
    results: dict[int, list[tuple[float, float | None]]] = {2: [], 1: []}
    for _ in range(args.repeats):
        for mode in (2, 1):
            results[mode].append(await one_run(settings.amqp_url, mode, args.queues, args.messages, args.size,
                                               args.window, beam))
    print(f"\n{'mode':>11} {'wall s':>8} {'messages/s':>11} {'beam CPU ms/message':>20}")
    per_message: dict[int, float | None] = {}
    for mode, name in ((2, "persistent"), (1, "transient")):
        wall = statistics.median(s for s, _ in results[mode])
        cpus = [c for _, c in results[mode] if c is not None]
        per_message[mode] = 1000 * statistics.median(cpus) / args.messages if cpus else None
        shown = f"{per_message[mode]:.3f}" if per_message[mode] is not None else "-"
        print(f"{name:>11} {wall:>8.2f} {args.messages / wall:>11,.0f} {shown:>20}")
    if per_message[1] and per_message[2]:
        print(f"\npersistent / transient CPU per message: {per_message[2] / per_message[1]:.1f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/broker.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queues", type=int, default=1000, help="durable queues (default: %(default)s)")
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run (default: %(default)s)")
    parser.add_argument("--size", type=int, default=300, help="bytes per message (default: %(default)s)")
    parser.add_argument("--window", type=int, default=500, help="confirms awaited at a time (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode (default: %(default)s)")
    args = parser.parse_args()
    if min(args.queues, args.messages, args.size, args.window, args.repeats) < 1:
        parser.error("every number must be at least 1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
