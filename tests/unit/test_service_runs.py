"""The scaffold's inbound path with in-memory deliveries: what the prefetch window holds is
admitted, then handled in runs that keep arrival order; a delivery is acknowledged only
after its handler returned; a batch that fails on its merits is tried one message at a time
so that only the message at fault is dead-lettered. (End to end, with the real broker and
Redis: tests/e2e and tests/faults.)"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any

import aiormq.exceptions
import pytest

from shared.messages import encode
from shared.messages import types as t
from shared.runtime.service import Batch, Service
from shared.runtime.settings import from_env

REGION = "r1"
SLOT = t.Slot(600, 660)


@dataclass
class Delivery:
    """What the scaffold reads of an aio-pika delivery."""

    routing_key: str
    body: bytes
    log: list[str]
    headers: dict[str, Any] = field(default_factory=dict)
    user_id: str | None = None
    message_id: str = "m"
    content_type: str = "application/msgpack"
    channel: Any = None
    delivery_tag: int = 0

    async def ack(self, multiple: bool = False) -> None:
        self.log.append(f"ack {self.delivery_tag}{'+' if multiple else ''}")


def order(pid: str, coid: str) -> t.SubmitOrder:
    return t.SubmitOrder(region=REGION, participant_id=pid, client_order_id=coid, side="bid", quantity_wh=100,
                         price="0.1", source="solar", slot=SLOT)


class Recorder:
    def __init__(self, log: list[str], fail_on: str = "", outage_once: bool = False) -> None:
        self.log = log
        self.fail_on = fail_on
        self.outage_once = outage_once

    async def orders(self, messages: list[t.SubmitOrder]) -> None:
        if self.outage_once:
            self.outage_once = False
            raise ConnectionError("redis went away")
        if any(m.client_order_id == self.fail_on for m in messages):
            raise ValueError(f"cannot handle {self.fail_on}")
        self.log.append("orders " + ",".join(m.client_order_id for m in messages))

    async def join(self, m: t.JoinMarket) -> None:
        self.log.append(f"join {m.participant_id}")


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Service:
    svc = Service("order-intake", from_env({"MICROTE_REGION": REGION, "MICROTE_SERVICE_KEY": "k" * 40}), 0)
    svc.needs_state = False
    dead: list[str] = []

    async def dead_letter(msg: Any, reason: str, *, ack: bool = True) -> None:
        dead.append(reason)
        if ack:
            await msg.ack()

    async def nothing(*_: Any) -> None:
        return None

    async def no_probe() -> list[str]:
        return []

    published: list[tuple[t.Message, str]] = []

    async def publish(message: t.Message, key: str) -> None:
        published.append((message, key))

    monkeypatch.setattr(svc, "publish", publish)
    svc.published = published  # type: ignore[attr-defined]
    monkeypatch.setattr(svc, "dead_letter", dead_letter)
    monkeypatch.setattr(svc.state, "count_bad_input", nothing)
    monkeypatch.setattr(svc, "_away", no_probe)
    svc.dead = dead  # type: ignore[attr-defined]
    return svc


def wire(svc: Service, recorder: Recorder, **consume: int) -> Any:
    requests = Batch(recorder.orders)
    svc.consume({svc.keys.request("order"): {t.SubmitOrder: requests},
                 svc.keys.request("member"): {t.JoinMarket: recorder.join}}, **consume)
    return svc._consumers[-1]


TAGS = iter(range(1, 1_000_000))


def deliveries(log: list[str], *messages: t.Message) -> list[Any]:
    out = []
    for m in messages:
        kind = "member" if isinstance(m, t.JoinMarket) else "order"
        out.append(Delivery(f"{REGION}.in.{kind}", encode(m), log, delivery_tag=next(TAGS)))
    return out


async def test_runs_keep_arrival_order_and_the_drain_is_acknowledged_once_after_every_run(service: Service) -> None:
    log: list[str] = []
    consumer = wire(service, Recorder(log))
    drained = deliveries(log, t.JoinMarket(region=REGION, participant_id="a"), order("a", "o1"), order("a", "o2"),
                         t.JoinMarket(region=REGION, participant_id="b"), order("b", "o3"))
    await service._process(consumer, drained)
    # every run, in arrival order, then one acknowledgement of the last delivery and all before it
    assert log == ["join a", "orders o1,o2", "join b", "orders o3", f"ack {drained[-1].delivery_tag}+"]


async def test_a_batch_failing_on_its_merits_is_tried_alone_and_only_the_bad_message_is_dead_lettered(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.runtime.service.backoff_s", lambda *a, **k: 0.0)
    log: list[str] = []
    consumer = wire(service, Recorder(log, fail_on="bad"))
    drained = deliveries(log, order("a", "o1"), order("a", "bad"), order("b", "o2"))
    await service._process(consumer, drained)
    assert log == ["orders o1", "orders o2", f"ack {drained[-1].delivery_tag}+"]  # the bad one is covered too
    assert len(service.dead) == 1 and "cannot handle bad" in service.dead[0]  # type: ignore[attr-defined]


async def test_an_outage_keeps_the_run_and_tries_it_again_whole(service: Service,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.runtime.service.backoff_s", lambda *a, **k: 0.0)
    log: list[str] = []
    consumer = wire(service, Recorder(log, outage_once=True))
    drained = deliveries(log, order("a", "o1"), order("b", "o2"))
    await service._process(consumer, drained)
    assert log == ["orders o1,o2", f"ack {drained[-1].delivery_tag}+"]
    assert service.dead == []  # type: ignore[attr-defined]


class ClosedChannelDelivery:
    """As aio-pika's delivery behaves once its channel has closed (the broker restarted):
    reading its ``channel`` raises."""

    def __init__(self, delivery: Delivery) -> None:
        self._delivery = delivery

    def __getattr__(self, name: str) -> Any:
        return getattr(self._delivery, name)

    @property
    def channel(self) -> Any:
        raise aiormq.exceptions.ChannelInvalidStateError


async def test_an_outage_that_took_the_channel_along_leaves_the_run_to_the_broker(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing acknowledged, nothing raised: the broker delivers the run again after it
    reconnects; the worker goes on (it crashed here before, with ChannelInvalidStateError)."""
    monkeypatch.setattr("shared.runtime.service.backoff_s", lambda *a, **k: 0.0)
    log: list[str] = []
    consumer = wire(service, Recorder(log, outage_once=True))
    gone = [ClosedChannelDelivery(d) for d in deliveries(log, order("a", "o1"), order("b", "o2"))]
    await service._process(consumer, gone)
    assert log == []
    assert service.dead == []  # type: ignore[attr-defined]


async def test_a_message_on_a_key_it_does_not_belong_on_never_reaches_a_handler(service: Service) -> None:
    log: list[str] = []
    consumer = wire(service, Recorder(log))
    wrong = Delivery(f"{REGION}.in.member", encode(order("a", "o1")), log, delivery_tag=next(TAGS))  # wrong key
    right = deliveries(log, order("a", "o2"))
    await service._process(consumer, [wrong, *right])
    assert log == [f"ack {wrong.delivery_tag}", "orders o2", f"ack {right[0].delivery_tag}+"]
    (answer, key), = service.published  # type: ignore[attr-defined]
    assert isinstance(answer, t.Rejected) and answer.reason == "malformed" and key == f"{REGION}.to.a.rejected"


async def test_the_worker_drains_at_most_its_run_limit_per_run(service: Service) -> None:
    log: list[str] = []
    recorder = Recorder(log)
    service.consume({service.keys.request("order"): {t.SubmitOrder: Batch(recorder.orders)}}, prefetch=8,
                    run_limit=2)
    consumer = service._consumers[-1]
    for d in deliveries(log, *(order("a", f"o{i}") for i in range(5))):
        consumer.inbox.put_nowait(d)
    worker = asyncio.create_task(service._work(consumer))
    while len(log) < 6:
        await asyncio.sleep(0)  # yield to the worker until it has handled and settled all five
    worker.cancel()
    assert [line for line in log if not line.startswith("ack")] == ["orders o0,o1", "orders o2,o3", "orders o4"]
    assert sum(line.startswith("ack") for line in log) == 3  # one per drain


class _Lost:
    """A robust connection between a broker restart and its reconnect: not closed for good,
    but without a transport (aio-pika clears ``connected``)."""

    is_closed = False

    def __init__(self) -> None:
        self.connected = asyncio.Event()


class _FailingExchange:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def publish(self, *_: Any, **__: Any) -> None:
        raise self.error


@pytest.mark.parametrize("text", ['<Connection: "amqp://guest:******@127.0.0.1:5672/" at 0x7f> closed',
                                  "Connection was not opened", "Connection is not ready"])
async def test_a_publish_that_fails_on_a_lost_connection_is_an_outage_not_the_message(text: str) -> None:
    """In a RabbitMQ restart aio-pika raises a bare RuntimeError; counted as the message's
    fault it was dead-lettered after three tries (a SlotReconciled once, in the fault suite)."""
    from shared.runtime.outages import is_outage

    svc = Service("ledger-writer", from_env({"MICROTE_REGION": REGION, "MICROTE_SERVICE_KEY": "k" * 40}), 0)
    svc._connection = _Lost()  # type: ignore[assignment]
    svc._out = object()  # type: ignore[assignment]
    assert not await svc._broker_connected()  # the probe sees the broker away while it reconnects

    async def publishing() -> tuple[Any, Any]:
        return _FailingExchange(RuntimeError(text)), None

    svc._publishing = publishing  # type: ignore[method-assign]
    with pytest.raises(Exception) as raised:
        await svc.publish(t.SlotRecorded(region=REGION, slot=SLOT, entry_count=1), "r1.fact.slot_recorded")
    assert is_outage(raised.value)


async def test_any_other_error_of_a_publish_stays_what_it_is() -> None:
    svc = Service("ledger-writer", from_env({"MICROTE_REGION": REGION, "MICROTE_SERVICE_KEY": "k" * 40}), 0)
    connected = _Lost()
    connected.connected.set()
    svc._connection = connected  # type: ignore[assignment]
    svc._out = object()  # type: ignore[assignment]

    async def publishing() -> tuple[Any, Any]:
        return _FailingExchange(RuntimeError("something else")), None

    svc._publishing = publishing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="something else"):
        await svc.publish(t.SlotRecorded(region=REGION, slot=SLOT, entry_count=1), "r1.fact.slot_recorded")


# --- fair passes: one sender's flood is held back, the others go first ----------------------


def handled(log: list[str]) -> list[str]:
    """The client order ids in the order the handler got them."""
    return [coid for line in log if line.startswith("orders ") for coid in line[len("orders "):].split(",")]


async def test_a_fair_pass_takes_a_share_of_each_sender_in_arrival_order_and_holds_back_the_rest(
        service: Service) -> None:
    log: list[str] = []
    consumer = wire(service, Recorder(log), prefetch=64, run_limit=16, per_sender=3)
    flood = deliveries(log, *(order("f", f"f{i}") for i in range(10)))
    others = deliveries(log, order("a", "a1"), order("b", "b1"), order("a", "a2"))
    await service._process(consumer, [*flood, *others])
    # the flood's oldest three and every other sender's, in arrival order, in one run
    assert log[0] == "orders f0,f1,f2,a1,b1,a2"
    assert consumer.turns.count == 7
    # acknowledged: up to the first one held back at once, after it one by one, never one held back
    assert log[1:] == [f"ack {flood[2].delivery_tag}+", *(f"ack {d.delivery_tag}" for d in others)]
    # the next passes take three at a time, the flood's own order kept, until nothing is held
    while consumer.turns:
        await service._process(consumer, [])
    assert handled(log) == ["f0", "f1", "f2", "a1", "b1", "a2", *(f"f{i}" for i in range(3, 10))]
    assert [line for line in log if line.startswith("orders")][1:] == ["orders f3,f4,f5", "orders f6,f7,f8",
                                                                        "orders f9"]
    assert service.metrics.requests_held.labels(REGION, "order-intake")._value.get() == 0


async def test_a_pass_never_exceeds_its_run_limit_and_the_senders_take_turns(service: Service) -> None:
    log: list[str] = []
    consumer = wire(service, Recorder(log), prefetch=64, run_limit=3, per_sender=2)
    await service._process(consumer, deliveries(log, *(order(p, f"{p}{i}") for p in "xyz" for i in range(3))))
    while consumer.turns:
        await service._process(consumer, [])
    # z waited for a full pass, so it goes first in the next; y, cut short, after it
    assert [line for line in log if line.startswith("orders")] == [
        "orders x0,x1,y0", "orders x2,z0,z1", "orders y1,y2,z2"]


async def test_held_back_deliveries_of_a_closed_channel_are_left_to_the_broker(service: Service) -> None:
    log: list[str] = []
    consumer = wire(service, Recorder(log), prefetch=64, run_limit=16, per_sender=1)
    drained = deliveries(log, order("f", "f0"), order("f", "f1"), order("f", "f2"))
    await service._process(consumer, [drained[0], *(ClosedChannelDelivery(d) for d in drained[1:])])
    await service._process(consumer, [])
    assert handled(log) == ["f0"] and not consumer.turns  # f1 and f2 come again on the new channel


async def test_a_household_arriving_during_a_flood_is_answered_before_the_flood_is(service: Service) -> None:
    log: list[str] = []
    consumer = wire(service, Recorder(log), prefetch=512, run_limit=64, per_sender=4)
    for d in deliveries(log, *(order("f", f"f{i}") for i in range(200))):
        consumer.inbox.put_nowait(d)
    worker = asyncio.create_task(service._work(consumer))
    try:
        async with asyncio.timeout(10):
            while not handled(log):
                await asyncio.sleep(0)
            consumer.inbox.put_nowait(deliveries(log, order("a", "a1"))[0])  # arrives after the flood
            while "a1" not in handled(log):
                await asyncio.sleep(0)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    assert handled(log).index("a1") <= 8  # in the next pass or the one after, not behind 200 (it was 200th)


class Channel:
    """A channel the fake deliveries come on; ``closed`` as after a broker restart."""

    def __init__(self) -> None:
        self.closed = False


class OnChannel(Delivery):
    """A delivery whose ``channel`` raises once its channel has closed, as aio-pika's does."""

    @property  # type: ignore[override]
    def channel(self) -> Any:
        if self._channel.closed:
            raise aiormq.exceptions.ChannelInvalidStateError
        return self._channel

    @channel.setter
    def channel(self, value: Any) -> None:
        self._channel = value


def on_channel(channel: Channel, log: list[str], first_tag: int, *messages: t.Message) -> list[Any]:
    return [OnChannel(f"{REGION}.in.order", encode(m), log, channel=channel, delivery_tag=first_tag + i)
            for i, m in enumerate(messages)]


async def test_requests_held_back_on_a_channel_that_closed_never_cover_the_new_channels(service: Service) -> None:
    """After a broker restart the new channel's tags start again at 1: a multiple acknowledgement
    there must stay below the first request held back on it, whatever the old channel held."""
    log: list[str] = []
    consumer = wire(service, Recorder(log), prefetch=64, run_limit=2, per_sender=1)
    old = Channel()
    await service._process(consumer, on_channel(old, log, 1, *(order(p, f"{p}0") for p in "xyz")))
    assert handled(log) == ["x0", "y0"]  # z0 held back on the old channel
    old.closed = True  # the broker restarts; the old channel's unacknowledged come again, on the new one
    new = Channel()
    again = on_channel(new, log, 1, order("z", "z0"), order("w", "w0"), order("w", "w1"), order("v", "v0"))
    log.clear()
    await service._process(consumer, again)
    # z0 of the old channel is dropped (never handled twice from there); the pass takes two turns
    assert handled(log) == ["z0", "w0"]
    assert [line for line in log if line.startswith("ack")] == ["ack 2+"]  # w1 (3) and v0 (4) are held back
    log.clear()
    while consumer.turns:
        await service._process(consumer, [])
    assert handled(log) == ["w1", "v0"]
    assert [line for line in log if line.startswith("ack")] == ["ack 4+"]


async def test_requests_of_two_open_channels_are_acknowledged_each_below_its_own_first_held_back(
        service: Service) -> None:
    log: list[str] = []
    consumer = wire(service, Recorder(log), prefetch=64, run_limit=8, per_sender=1)
    one, two = Channel(), Channel()
    await service._process(consumer, [*on_channel(one, log, 1, order("f", "f0"), order("f", "f1")),
                                      *on_channel(two, log, 1, order("g", "g0"), order("g", "g1"))])
    assert handled(log) == ["f0", "g0"]
    # tag 1 of each channel handled, tag 2 of each held back: each channel's ack stays at 1
    assert sorted(line for line in log if line.startswith("ack")) == ["ack 1+", "ack 1+"]


@pytest.mark.parametrize("fair", [0, 4])
async def test_a_pass_that_fails_while_admitting_acknowledges_nothing_it_did_not_handle(
        service: Service, monkeypatch: pytest.MonkeyPatch, fair: int) -> None:
    log: list[str] = []
    consumer = wire(service, Recorder(log), prefetch=64, run_limit=16, per_sender=fair)
    drained = deliveries(log, order("a", "a0"), order("b", "b0"), order("c", "c0"))
    admit, calls = service._admit, []

    async def failing_once(msg: Any, routes: Any) -> Any:
        calls.append(msg.delivery_tag)
        if len(calls) == 2:
            raise RuntimeError("a bug while admitting")
        return await admit(msg, routes)

    monkeypatch.setattr(service, "_admit", failing_once)
    with pytest.raises(RuntimeError):
        await service._process(consumer, drained)
    assert not [line for line in log if line.startswith("ack")]  # nothing handled, nothing acknowledged
    await service._process(consumer, [])  # the next pass takes what the failed one left
    assert handled(log) == ["a0", "b0", "c0"]
    assert log[-1] == f"ack {drained[-1].delivery_tag}+"


@pytest.mark.parametrize("fair", [0, 4])
async def test_a_pass_that_fails_outside_its_handlers_leaves_its_requests_in_hand(
        service: Service, monkeypatch: pytest.MonkeyPatch, fair: int) -> None:
    log: list[str] = []
    consumer = wire(service, Recorder(log), prefetch=64, run_limit=16, per_sender=fair)
    drained = deliveries(log, order("a", "a0"), t.JoinMarket(region=REGION, participant_id="b"), order("c", "c0"))
    run, runs = service._run, []

    async def failing_second(handler: Any, batch: Any, messages: Any) -> Any:
        runs.append(len(messages))
        if len(runs) == 2:
            raise RuntimeError("a bug outside the handler")
        return await run(handler, batch, messages)

    monkeypatch.setattr(service, "_run", failing_second)
    with pytest.raises(RuntimeError):
        await service._process(consumer, drained)
    # the first run is handled and acknowledged, up to what the failed run left in hand
    assert log == ["orders a0", f"ack {drained[0].delivery_tag}+"]
    await service._process(consumer, [])
    assert log[2:] == ["join b", "orders c0", f"ack {drained[-1].delivery_tag}+"]


async def test_once_half_the_window_is_held_back_a_sender_may_fill_a_pass(service: Service) -> None:
    """Short passes would let a flood fill the window, and the others' requests would then wait
    behind it at the broker, where there are no turns."""
    log: list[str] = []
    consumer = wire(service, Recorder(log), prefetch=20, run_limit=6, per_sender=2)
    await service._process(consumer, deliveries(log, *(order("f", f"f{i}") for i in range(9))))
    assert handled(log) == ["f0", "f1"]  # 9 held of a window of 20: turns
    await service._process(consumer, deliveries(log, *(order("g", f"g{i}") for i in range(3))))
    # 10 held: crowded; the turns first (two of f's, two of g's), then the rest of the pass filled
    assert handled(log)[2:] == ["f2", "f3", "f4", "f5", "g0", "g1"]
    await service._process(consumer, [])
    assert handled(log)[8:] == ["f6", "f7", "g2"]  # 4 held: turns again


async def test_bodies_held_back_beyond_their_budget_fill_the_passes(service: Service,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Large requests fill memory long before they fill the window: past HELD_BYTES a pass is
    filled after the turns, as in a crowded window."""
    monkeypatch.setattr("shared.runtime.service.HELD_BYTES", 3 * len(encode(order("f", "f0"))))
    log: list[str] = []
    consumer = wire(service, Recorder(log), prefetch=1000, run_limit=4, per_sender=1)
    await service._process(consumer, deliveries(log, *(order("f", f"f{i}") for i in range(6))))
    assert handled(log) == ["f0", "f1", "f2", "f3"]  # 6 held, over the budget of 3: a full pass
    assert consumer.turns.size == 2 * len(encode(order("f", "f0")))
    await service._process(consumer, [])
    assert handled(log)[4:] == ["f4"]  # 2 held, under it: turns


class Subscription:
    """What the scaffold does with an aio-pika queue: subscribe and cancel."""

    channel = None  # (not a robust channel: nothing to wait for before subscribing again)

    def __init__(self, log: list[str], fail_consume: int = 0) -> None:
        self.log, self.tags, self.fail_consume = log, iter(range(1, 100)), fail_consume

    async def consume(self, callback: Any) -> str:
        if self.fail_consume:
            self.fail_consume -= 1
            self.log.append("consume failed")
            raise aiormq.exceptions.ChannelInvalidStateError("the channel is being restored")
        tag = f"c{next(self.tags)}"
        self.log.append(f"consume {tag}")
        return tag

    async def cancel(self, tag: str) -> None:
        self.log.append(f"cancel {tag}")


async def test_a_consumer_pauses_while_the_bodies_in_hand_pass_their_budget_and_resumes_below_half(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The prefetch counts messages; a flood of large requests would fill memory long before it
    fills the window."""
    size = len(encode(order("f", "f00")))
    monkeypatch.setattr("shared.runtime.service.WINDOW_BYTES", 10 * size)
    log: list[str] = []
    consumer = wire(service, Recorder(log), prefetch=1000, run_limit=4, per_sender=4)
    consumer.amqp_queue, consumer.tag = Subscription(log), "c0"  # type: ignore[assignment]
    consumer.deliver = functools.partial(service._deliver, consumer)
    for d in deliveries(log, *(order("f", f"f{i:02}") for i in range(12))):
        await consumer.deliver(d)
    assert consumer.pausing is not None
    await consumer.pausing
    assert log == ["cancel c0"] and consumer.tag is None  # 12 bodies in hand, beyond 10
    worker = asyncio.create_task(service._work(consumer))
    try:
        async with asyncio.timeout(10):
            while "consume c1" not in log:
                await asyncio.sleep(0)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    # subscribed again once a pass had left at most half of the budget in hand: after 8 were handled
    resumed = log.index("consume c1")
    assert handled(log[:resumed]) == [f"f{i:02}" for i in range(8)]
    assert consumer.tag == "c1" and consumer.pausing is None


async def test_a_paused_consumer_whose_resume_fails_tries_again_with_nothing_in_hand(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker restart during a pause: subscribing fails while the channel is restored. The
    worker has nothing in hand and no subscription to wake it; it must try again by itself."""
    size = len(encode(order("f", "f00")))
    monkeypatch.setattr("shared.runtime.service.WINDOW_BYTES", 2 * size)
    log: list[str] = []
    consumer = wire(service, Recorder(log), prefetch=1000, run_limit=8, per_sender=8)
    consumer.amqp_queue, consumer.tag = Subscription(log, fail_consume=2), "c0"  # type: ignore[assignment]
    consumer.deliver = functools.partial(service._deliver, consumer)
    for d in deliveries(log, *(order("f", f"f{i:02}") for i in range(3))):
        await consumer.deliver(d)
    worker = asyncio.create_task(service._work(consumer))
    try:
        async with asyncio.timeout(10):
            while consumer.tag is None or consumer.pausing is not None:
                await asyncio.sleep(0.01)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    assert [line for line in log if line.startswith(("cancel", "consume"))] == [
        "cancel c0", "consume failed", "consume failed", "consume c1"]
    assert handled(log) == ["f00", "f01", "f02"]


def test_a_single_active_consumer_queue_never_pauses(service: Service) -> None:
    """Cancelling would hand the queue to another replica while this one holds earlier messages."""
    recorder = Recorder([])
    service.consume({service.keys.request("order"): {t.SubmitOrder: Batch(recorder.orders)}}, single_active=True)
    assert not service._consumers[-1].pausable()
    assert wire(service, recorder).pausable()
