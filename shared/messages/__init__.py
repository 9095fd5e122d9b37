"""The wire contract: every message type, defined once, and its MessagePack codec."""

from shared.messages import types
from shared.messages.codec import CONTENT_TYPE, Undecodable, decode, decode_as, encode, sender_of

__all__ = ["CONTENT_TYPE", "Undecodable", "decode", "decode_as", "encode", "sender_of", "types"]
