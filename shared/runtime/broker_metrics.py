"""FastStream's broker metrics with bounded labels.

FastStream labels its consume and publish metrics with ``<exchange>.<routing key>``. An
answer's routing key names its participant (``r1.to.h001.order_accepted``), so a region of
100,000 households would make 100,000 label values. Here the participant of a ``to`` key is
replaced by ``*``, and a key that is none of the region's shapes becomes ``other``: the
label set stays bounded by the topology, whoever connects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faststream.prometheus import ConsumeAttrs
from faststream.prometheus.middleware import PrometheusMiddleware
from faststream.rabbit.prometheus.provider import RabbitMetricsSettingsProvider
from faststream.rabbit.response import RabbitPublishCommand

from shared.runtime.topology import FACT, IN, TO

if TYPE_CHECKING:
    from aio_pika import IncomingMessage
    from faststream.message.message import StreamMessage
    from prometheus_client import CollectorRegistry


def bounded_key(routing_key: str) -> str:
    """``r1.to.h001.order_accepted`` -> ``r1.to.*.order_accepted``; other shapes -> ``other``."""
    parts = routing_key.split(".")
    if len(parts) == 3 and parts[1] in (IN, FACT):
        return routing_key
    if len(parts) == 4 and parts[1] == TO:
        return f"{parts[0]}.{TO}.*.{parts[3]}"
    return "other"


class _BoundedProvider(RabbitMetricsSettingsProvider):
    def get_consume_attrs_from_message(self, msg: StreamMessage[IncomingMessage]) -> ConsumeAttrs:
        attrs = super().get_consume_attrs_from_message(msg)
        raw = msg.raw_message
        attrs["destination_name"] = f"{raw.exchange or 'default'}.{bounded_key(raw.routing_key or '')}"
        return attrs

    def get_publish_destination_name_from_cmd(self, cmd: RabbitPublishCommand) -> str:
        return f"{cmd.exchange.name or 'default'}.{bounded_key(cmd.destination)}"


def broker_metrics(
    registry: CollectorRegistry, app_name: str, labels: dict[str, Any]
) -> PrometheusMiddleware[Any, Any]:
    return PrometheusMiddleware(settings_provider_factory=lambda _: _BoundedProvider(), registry=registry,
                                app_name=app_name, custom_labels=labels)
