"""microte for participants: the client that households, home energy managers, aggregators
and researchers' agents use to trade in a region (``microte.client``), with the wire types
it sends and receives."""

from microte.client import Client, Refused, RoundAnswers, ask, bid, new_order_id
from shared.messages.types import (
    AgentBundle,
    CancelItem,
    MemberJoined,
    MemberLeft,
    OrderAccepted,
    OrderCancelled,
    OrderItem,
    ParticipantRound,
    ReadingAccepted,
    ReadingItem,
    Rejected,
    RoundStarted,
    SettlementsNotice,
    Slot,
    Statement,
)

__all__ = ["AgentBundle", "CancelItem", "Client", "MemberJoined", "MemberLeft", "OrderAccepted", "OrderCancelled",
           "OrderItem", "ParticipantRound", "ReadingAccepted", "ReadingItem", "Refused", "Rejected", "RoundAnswers",
           "RoundStarted", "SettlementsNotice", "Slot", "Statement", "ask", "bid", "new_order_id"]
