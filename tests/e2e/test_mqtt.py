"""Meters and gateways over MQTT (RabbitMQ's MQTT plugin, on a private node with its own
MQTT port): a household's gateway publishes its readings with QoS 1 on
``<region>/in/reading/<id>`` and receives the answers on ``<region>/to/<id>/+``, as its own
broker user; it cannot publish as another household, read another's answers, or stay
connected once removed."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from microte import Client
from shared.messages import decode, encode
from shared.messages import types as t
from tests.e2e.accounts import add, participants, region_on
from tests.faults.servers import PrivateRabbit

pytestmark = pytest.mark.e2e

WAIT_S = 30.0
SLOT = t.Slot(1_782_064_800, 1_782_064_860)


class Gateway:
    """One MQTT 3.1.1 connection (paho-mqtt), client id = user, as a gateway makes it."""

    def __init__(self, rabbit: PrivateRabbit, user: str, password: str) -> None:
        assert rabbit.mqtt_port is not None
        self.connected, self.gone = threading.Event(), threading.Event()
        self.acked: set[int] = set()
        self.acked_changed = threading.Condition()
        self.received: queue.Queue[tuple[str, t.Message]] = queue.Queue()
        self.connack: Any = None
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, clean_session=True, protocol=mqtt.MQTTv311,
                        reconnect_on_failure=False)
        c.username_pw_set(user, password)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *_: self.gone.set()
        c.on_publish = self._on_publish
        c.on_subscribe = lambda *_: None
        c.on_message = lambda _c, _u, m: self.received.put((m.topic, decode(m.payload)))
        self.client = c
        c.connect("127.0.0.1", rabbit.mqtt_port, keepalive=30)
        c.loop_start()
        assert self.connected.wait(WAIT_S), "no CONNACK"

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        self.connack = reason
        self.connected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _p: Any) -> None:
        with self.acked_changed:
            self.acked.add(mid)
            self.acked_changed.notify_all()

    @property
    def refused_login(self) -> bool:
        return bool(self.connack is not None and self.connack.is_failure)

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)

    def publish(self, topic: str, message: t.Message) -> bool:
        """QoS 1: True once the broker's PUBACK came; False if it closed the connection instead."""
        info = self.client.publish(topic, encode(message), qos=1)
        with self.acked_changed:
            done = self.acked_changed.wait_for(lambda: info.mid in self.acked or self.gone.is_set(), WAIT_S)
        assert done, "neither a PUBACK nor a disconnect"
        return info.mid in self.acked

    def answer(self) -> tuple[str, t.Message]:
        return self.received.get(timeout=WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def rabbit() -> Iterator[PrivateRabbit]:
    with PrivateRabbit(management=True, mqtt=True) as server:
        yield server


@pytest.fixture
async def region(rabbit: PrivateRabbit, tmp_path: Path) -> AsyncIterator[str]:
    async with region_on(rabbit, "mqtt", ("ledger-writer", "order-intake", "meter-collector"), tmp_path) as region:
        yield region


def reading(region: str, pid: str) -> t.SubmitReading:
    return t.SubmitReading(region=region, participant_id=pid, slot=SLOT, import_wh=120, export_wh={"solar": 30})


async def test_a_gateway_reports_readings_over_mqtt_as_its_household_only(rabbit: PrivateRabbit, region: str) -> None:
    h1 = add(rabbit, region, "h1")
    add(rabbit, region, "h2")
    async with Client(rabbit.url_for("h1", h1), region, "h1") as household:  # the SDK, as its own user
        await household.join()
    gateway = await asyncio.to_thread(Gateway, rabbit, "h1", h1)
    try:
        await asyncio.to_thread(gateway.subscribe, f"{region}/to/h1/+")
        assert await asyncio.to_thread(gateway.publish, f"{region}/in/reading/h1", reading(region, "h1"))
        topic, answer = await asyncio.to_thread(gateway.answer)
        # Taken as h1's (no clock runs: refused on its merits, past the identity check).
        assert isinstance(answer, t.Rejected) and answer.participant_id == "h1", answer
        assert answer.request == "SubmitReading" and answer.reason != "identity_mismatch", answer
        assert topic == f"{region}/to/h1/rejected"
        # A reading that names another household, on its own key: refused, and answered to h1.
        assert await asyncio.to_thread(gateway.publish, f"{region}/in/reading/h1", reading(region, "h2"))
        _, answer = await asyncio.to_thread(gateway.answer)
        assert isinstance(answer, t.Rejected) and (answer.participant_id, answer.reason) == ("h1", "identity_mismatch")
        # Publishing as another household: the broker refuses it and closes the connection.
        assert not await asyncio.to_thread(gateway.publish, f"{region}/in/reading/h2", reading(region, "h2"))
    finally:
        await asyncio.to_thread(gateway.close)
    # Listening to another household's answers: refused the same way.
    spy = await asyncio.to_thread(Gateway, rabbit, "h1", h1)
    try:
        await asyncio.to_thread(spy.subscribe, f"{region}/to/h2/#")
        assert await asyncio.to_thread(spy.gone.wait, WAIT_S), "subscribed to another household's answers"
    finally:
        await asyncio.to_thread(spy.close)


async def test_a_removed_households_gateway_is_cut_off(rabbit: PrivateRabbit, region: str) -> None:
    h1 = add(rabbit, region, "h1")
    gateway = await asyncio.to_thread(Gateway, rabbit, "h1", h1)
    try:
        assert participants(rabbit, region, "remove", "h1").returncode == 0
        assert await asyncio.to_thread(gateway.gone.wait, WAIT_S), "its MQTT connection stayed open"
    finally:
        await asyncio.to_thread(gateway.close)
    again = await asyncio.to_thread(Gateway, rabbit, "h1", h1)
    try:
        assert again.refused_login
    finally:
        await asyncio.to_thread(again.close)
