"""Who may say what: facts and answers come only from the region's own services.

Every fact (``<region>.fact.*``) and answer (``<region>.to.*``) that a service publishes
carries a keyed BLAKE2b tag over its routing key and body, made with the region's
service key (``MICROTE_SERVICE_KEY``), a secret that only the region's services hold.
A consumer acts on a fact or an answer only when the tag verifies and, where the
region names its service accounts (``MICROTE_SERVICE_USERS``), when the AMQP
``user_id`` (which RabbitMQ checks against the connection's credentials) is one of
them. Either check alone stops a household from writing the ledger; together they
also survive a permission mistake on the broker or a broker user shared by mistake.

The tag binds the routing key, so a genuine fact cannot be replayed under another key;
a replay under its own key changes nothing, because every id is deterministic.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "x-microte-sig"
MIN_KEY_CHARS = 32


class TrustError(ValueError):
    """The service key is missing or too short."""


class Signer:
    def __init__(self, secret: str) -> None:
        if len(secret) < MIN_KEY_CHARS:
            raise TrustError(
                f"MICROTE_SERVICE_KEY must be a secret of at least {MIN_KEY_CHARS} characters, the same for "
                "every service of the region (for example: export MICROTE_SERVICE_KEY=$(openssl rand -hex 32))")
        # BLAKE2b takes keys of up to 64 bytes; derive a fixed-size key from any secret.
        self._key = hashlib.sha256(b"microte-service-key\0" + secret.encode()).digest()

    def sign(self, routing_key: str, body: bytes) -> str:
        mac = hashlib.blake2b(digest_size=16, key=self._key)
        mac.update(routing_key.encode())
        mac.update(b"\0")
        mac.update(body)
        return mac.hexdigest()

    def verify(self, routing_key: str, body: bytes, tag: object) -> bool:
        if not isinstance(tag, str | bytes):
            return False
        text = tag.decode("ascii", "replace") if isinstance(tag, bytes) else tag
        return hmac.compare_digest(self.sign(routing_key, body), text)


def service_users(value: str) -> frozenset[str]:
    """The comma-separated list of ``MICROTE_SERVICE_USERS``."""
    return frozenset(u.strip() for u in value.split(",") if u.strip())
