"""The RabbitMQ topology, declared in this one place.

One durable topic exchange ``microte``; routing keys start with the region:

- ``<region>.in.<kind>``: requests from participants (order, cancel, reading, member, finish,
  batch: a household's whole round, or many households' from their aggregator)
- ``<region>.in.<kind>.<sender>``: the same requests with their sender in the key, for
  clients that cannot set the AMQP ``user_id`` (MQTT meters and gateways: RabbitMQ's MQTT
  plugin sets none). The broker's topic permissions let a participant's account write only
  its own id there (``services.participants.accounts``), so the key proves the sender.
- ``<region>.to.<participant>.<kind>``: answers to one participant
- ``<region>.fact.<kind>``: facts between services (round_started, slot_cleared, ...)

Each service of a region has one durable queue ``microte.<region>.<service>`` bound to
the keys it needs. Messages that cannot be decoded are published, with their reason in
the headers, to ``microte.dlx`` and land in ``microte.<region>.dead``.
"""

from __future__ import annotations

from typing import Any

from faststream.rabbit import ExchangeType, RabbitExchange, RabbitQueue

EXCHANGE = RabbitExchange("microte", type=ExchangeType.TOPIC, durable=True)
DEAD_LETTER_EXCHANGE = RabbitExchange("microte.dlx", type=ExchangeType.TOPIC, durable=True)


class Keys:
    """Routing keys of one region."""

    def __init__(self, region: str) -> None:
        self.region = region

    def request(self, kind: str) -> str:
        return f"{self.region}.in.{kind}"

    def request_from(self, kind: str, sender: str) -> str:
        """A request whose key names its sender (``*``: the binding for every sender)."""
        return f"{self.region}.in.{kind}.{sender}"

    def to(self, participant_id: str, kind: str) -> str:
        return f"{self.region}.to.{participant_id}.{kind}"

    def fact(self, kind: str) -> str:
        return f"{self.region}.fact.{kind}"

    def all_to(self, kind: str) -> str:
        return f"{self.region}.to.*.{kind}"


# The three channels of a routing key: requests from participants, answers to one
# participant, facts between services.
IN, TO, FACT = "in", "to", "fact"


def bounded_key(routing_key: str) -> str:
    """A routing key's shape, for metric labels that stay bounded whoever connects: the
    participant of a ``to`` key becomes ``*`` (``r1.to.h001.order_accepted`` ->
    ``r1.to.*.order_accepted``); a key that is none of the region's shapes is ``other``."""
    parts = routing_key.split(".")
    if len(parts) == 3 and parts[1] in (IN, FACT):
        return routing_key
    if len(parts) == 4 and parts[1] == TO:
        return f"{parts[0]}.{TO}.*.{parts[3]}"
    if len(parts) == 4 and parts[1] == IN:
        return f"{parts[0]}.{IN}.{parts[2]}.*"
    return "other"


def parse_key(region: str, routing_key: str) -> tuple[str, str, str] | None:
    """(channel, kind, addressee) of one of ``region``'s routing keys, or None if it is not one.

    ``addressee`` is the participant of a ``to`` key, the sender of an ``in`` key that names
    one, and empty otherwise. Patterns made by ``Keys`` parse the same way (``to.*.kind``
    gives addressee ``*``).
    """
    parts = routing_key.split(".")
    if len(parts) < 3 or parts[0] != region:
        return None
    if parts[1] in (IN, FACT) and len(parts) == 3:
        return parts[1], parts[2], ""
    if parts[1] == IN and len(parts) == 4 and parts[3]:
        return IN, parts[2], parts[3]
    if parts[1] == TO and len(parts) == 4:
        return TO, parts[3], parts[2]
    return None


# Request kinds and the message types they carry.
ORDER, CANCEL, READING, MEMBER, FINISH, BATCH = "order", "cancel", "reading", "member", "finish", "batch"
# Fact kinds.
ROUND_STARTED, SLOT_CLEARED, SLOT_RECONCILED, SLOT_RECORDED, ANSWERED = (
    "round_started", "slot_cleared", "slot_reconciled", "slot_recorded", "answered")
# Answer kinds.
ORDER_ACCEPTED, ORDER_CANCELLED, REJECTED, READING_ACCEPTED, SETTLEMENTS, STATEMENT, MEMBERSHIP = (
    "order_accepted", "order_cancelled", "rejected", "reading_accepted", "settlements", "statement", "membership")
# A batch's answers come back on the batch kind too: ``<region>.to.<sender>.batch``.

# Answers to a request are transient: a broker restart may lose one still in its
# addressee's queue, and the addressee sends the request again (every request is
# idempotent, and one seen again gets the same answer). A transient message costs the
# broker about a third of a persistent one (``bench/broker.py``). Everything else stays
# persistent: requests, facts, memberships (the ledger-writer records them from the
# answer), and the statements and settlements notices, which no request asks for again.
TRANSIENT_ANSWERS = frozenset((ORDER_ACCEPTED, ORDER_CANCELLED, REJECTED, READING_ACCEPTED, BATCH))


def persistent(routing_key: str) -> bool:
    """Whether a message published with ``routing_key`` must survive a broker restart:
    everything but the answers of ``TRANSIENT_ANSWERS``."""
    parts = routing_key.split(".")
    return not (len(parts) == 4 and parts[1] == TO and parts[3] in TRANSIENT_ANSWERS)


def service_queue_name(region: str, service: str) -> str:
    """The durable queue a region's service consumes: ``microte.<region>.<service>``."""
    return f"microte.{region}.{service}"


def service_queue(region: str, service: str, first_key: str, *, single_active: bool = False) -> RabbitQueue:
    arguments: Any = {"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name}
    if single_active:
        arguments["x-single-active-consumer"] = True
    return RabbitQueue(service_queue_name(region, service), durable=True, routing_key=first_key, arguments=arguments)


def dead_letter_queue(region: str, max_length: int = 100_000, ttl_s: int = 7 * 86400) -> RabbitQueue:
    """Bounded in length and age. When full it refuses new messages (``reject-publish``),
    so the oldest evidence stays and the publisher counts what overflowed."""
    arguments: Any = {"x-max-length": max_length, "x-message-ttl": ttl_s * 1000, "x-overflow": "reject-publish"}
    return RabbitQueue(f"microte.{region}.dead", durable=True, routing_key=f"{region}.#", arguments=arguments)
