"""MessagePack on the wire, decoded strictly into the message types."""

from __future__ import annotations

from typing import TypeVar, Union

import msgspec

from shared.messages.types import ALL_MESSAGES, Id, Message

CONTENT_TYPE = "application/msgpack"

M = TypeVar("M", bound=Message)

AnyMessage = Union[ALL_MESSAGES]  # type: ignore[valid-type]  # noqa: UP007

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(AnyMessage)
_typed: dict[type, msgspec.msgpack.Decoder[Message]] = {}


class Undecodable(ValueError):
    """The bytes are not a valid message: not MessagePack, unknown type, or a wrong field."""


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(raw: bytes) -> Message:
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Undecodable(str(exc)) from exc


def decode_as(raw: bytes, *types: type[M]) -> M:
    """Decode and insist on one of ``types``."""
    message = decode(raw)
    if not isinstance(message, types):
        raise Undecodable(f"expected {' or '.join(t.__name__ for t in types)}, got {type(message).__name__}")
    return message


def sender_of(raw: bytes) -> tuple[str, str] | None:
    """Best-effort (participant_id, reference) of a message that failed to decode.

    Used only to address a ``malformed`` rejection; never to change state.
    """
    try:
        data = msgspec.msgpack.decode(raw)
    except msgspec.DecodeError:
        return None
    if not isinstance(data, dict):
        return None
    pid, ref = data.get("participant_id"), data.get("client_order_id", "")
    try:
        sender = msgspec.convert({"participant_id": pid}, _Sender)
    except msgspec.ValidationError:
        return None
    return sender.participant_id, ref if isinstance(ref, str) and len(ref) <= 128 else ""


class _Sender(msgspec.Struct):
    participant_id: Id
