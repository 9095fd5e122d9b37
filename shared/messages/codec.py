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
    except RecursionError as exc:  # deeply nested containers: refuse, never crash
        raise Undecodable("nested too deeply") from exc


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
        sender = _sender_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    ref = sender.client_order_id
    return sender.participant_id, ref if isinstance(ref, str) and len(ref) <= 128 else ""


class _Sender(msgspec.Struct):
    """Only the two fields we need; every other field is skipped unread."""

    participant_id: Id
    client_order_id: object = ""


_sender_decoder = msgspec.msgpack.Decoder(_Sender)
