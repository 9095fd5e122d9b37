"""A region's participants as broker accounts: ``microte participants add|remove|list``.

Every household and every aggregator connects as a RabbitMQ user of its own, named by its
participant id: that is the user ``MICROTE_IDENTITY=broker_user`` compares a request's
``participant_id`` with (RabbitMQ validates the ``user_id`` against the connection's
credentials). Its rights, set here through RabbitMQ's management HTTP API, are:

- *configure* its own queues only: ``microte.<region>.participant.<id>``, any
  ``microte.<region>.participant.<id>.<name>``, and ``mqtt-subscription-<id>qos0|1`` (the
  queues of its MQTT subscriptions, when it connects over MQTT with client id ``<id>``): no
  exchange, no service queue, not the dead-letter queue;
- *write* and *read* the ``microte`` exchange (to publish and to bind) and its own queues;
  nothing on the default exchange, which routes straight to a queue by its name;
- topic *write* ``<region>.in.<kind>`` (requests of its region) and
  ``<region>.in.<kind>.<id>`` (the same naming itself as sender, for MQTT, whose messages
  carry no ``user_id``: the services take the key's sender as proven), and topic *read*
  ``<region>.to.<id>.<kind>`` and ``<region>.fact.round_started``: it can bind its queue to
  its own answers and the public round announcements, and to nothing else.

An aggregator is registered by the household: the household's join names it
(``JoinMarket.agent``), and with broker identity only the household's own user can send that
join. ``add --agent`` therefore signs in as the household and joins it; ``remove`` changes
the household's password, closes its connections, signs in with the new password to leave
the market (which ends its agent's registration too), deletes its queue and then its user.

The management API is plain HTTP with JSON (``urllib``; a command-line tool needs nothing
more). Users carry tags that say what they are (``microte-participant``, ``microte-region-<region>``,
``microte-household`` or ``microte-aggregator``); RabbitMQ gives such tags no rights.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from microte.client import Client, Refused
from shared.messages import types as t
from shared.runtime import topology as k

PARTICIPANT_TAG = "microte-participant"
KINDS = ("household", "aggregator")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # what the messages accept as a participant id
ANSWER_TIMEOUT_S = 30.0


class AccountError(RuntimeError):
    """A provisioning step failed; the message says what to do."""


def region_tag(region: str) -> str:
    return f"microte-region-{region}"


def participant_queue(region: str, participant_id: str) -> str:
    return f"microte.{region}.participant.{participant_id}"


@dataclass(frozen=True)
class Grants:
    """A participant's permissions (vhost) and topic permissions (on ``microte``)."""

    configure: str
    write: str
    read: str
    topic_write: str
    topic_read: str


def grants(region: str, participant_id: str) -> Grants:
    r, pid = re.escape(region), re.escape(participant_id)
    # Its AMQP queues, and the queues RabbitMQ's MQTT plugin makes for its subscriptions
    # (an MQTT client must connect with its participant id as client id).
    queues = re.escape(participant_queue(region, participant_id)) + rf"(\.[^.]+)?|mqtt-subscription-{pid}qos[01]"
    own = f"^({re.escape(k.EXCHANGE.name)}|{queues})$"
    return Grants(configure=f"^({queues})$", write=own, read=own,
                  topic_write=rf"^{r}\.{k.IN}\.[^.]+(\.{pid})?$",
                  topic_read=rf"^{r}\.({k.TO}\.{pid}\.[^.]+|{k.FACT}\.{k.ROUND_STARTED})$")


def check_id(participant_id: str) -> None:
    if not _ID.match(participant_id):
        raise AccountError(f"{participant_id!r} is not a participant id: 1-64 letters, digits, '_' or '-'")
    if participant_id.startswith("microte-") or participant_id == "guest":
        raise AccountError(f"{participant_id!r} is reserved for the services' own accounts; choose another id")


@dataclass(frozen=True)
class Account:
    participant_id: str
    kind: str  # household or aggregator
    region: str


def _tags(user: dict[str, Any]) -> list[str]:
    tags = user.get("tags") or []
    return [x for x in tags.split(",") if x] if isinstance(tags, str) else list(tags)


def account_of(user: dict[str, Any]) -> Account | None:
    """The participant account a management API user stands for, if it is one."""
    tags = _tags(user)
    if PARTICIPANT_TAG not in tags:
        return None
    regions = [x.removeprefix("microte-region-") for x in tags if x.startswith("microte-region-")]
    kinds = [x.removeprefix("microte-") for x in tags if x.removeprefix("microte-") in KINDS]
    if len(regions) != 1:
        return None
    return Account(user["name"], kinds[0] if kinds else "household", regions[0])


class Management:
    """The few calls of RabbitMQ's management HTTP API that provisioning needs.

    ``url``: ``http://user:password@host:15672`` (an administrator, or a user with the
    ``policymaker``/``monitoring`` rights to manage users and close connections)."""

    def __init__(self, url: str, vhost: str = "/") -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AccountError(f"the management URL must be http(s)://user:password@host:port, got {url!r}")
        user, password = urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or "")
        self.shown = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
        self.base = f"{self.shown}{parts.path.rstrip('/')}/api"
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.vhost = urllib.parse.quote(vhost, safe="")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request; its JSON answer, or None for 404 (and for an empty answer)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Authorization": self.auth, "content-type": "application/json",
                                                  "X-Reason": "microte participants"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                text = answer.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code == 401:
                raise AccountError(f"the RabbitMQ management API at {self.shown} refused the credentials: give an "
                                   "administrator in --management-url or MICROTE_MANAGEMENT_URL") from None
            raise AccountError(f"RabbitMQ management API {method} {path}: HTTP {exc.code} "
                               f"{exc.read().decode(errors='replace')[:300]}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise AccountError(f"the RabbitMQ management API is not reachable at {self.shown} ({exc}): enable the "
                               "rabbitmq_management plugin, or give its address in --management-url") from None
        return json.loads(text) if text else None

    def user(self, name: str) -> dict[str, Any] | None:
        found = self.call("GET", f"/users/{urllib.parse.quote(name, safe='')}")
        return dict(found) if found else None

    def users(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/users") or [])

    def put_user(self, name: str, password: str, tags: list[str]) -> None:
        self.call("PUT", f"/users/{urllib.parse.quote(name, safe='')}", {"password": password, "tags": ",".join(tags)})

    def grant(self, name: str, g: Grants) -> None:
        user = urllib.parse.quote(name, safe="")
        self.call("PUT", f"/permissions/{self.vhost}/{user}", {"configure": g.configure, "write": g.write,
                                                              "read": g.read})
        self.call("PUT", f"/topic-permissions/{self.vhost}/{user}", {"exchange": k.EXCHANGE.name,
                                                                    "write": g.topic_write, "read": g.topic_read})

    def delete_user(self, name: str) -> None:
        self.call("DELETE", f"/users/{urllib.parse.quote(name, safe='')}")

    def close_connections(self, name: str) -> int:
        """Closes every connection of user ``name`` (AMQP and MQTT alike); how many there were.
        ``/connections/username/<user>`` reads the broker's connection tracking, which knows
        a connection at once; ``/connections`` lists only what statistics have collected
        (every few seconds), so a connection opened a moment ago would be missed."""
        user = urllib.parse.quote(name, safe="")
        found = self.call("GET", f"/connections/username/{user}") or []
        if found:
            self.call("DELETE", f"/connections/username/{user}")
        return len(found)

    def delete_queue(self, name: str) -> None:
        self.call("DELETE", f"/queues/{self.vhost}/{urllib.parse.quote(name, safe='')}")


def url_as(amqp_url: str, user: str, password: str) -> str:
    """The AMQP URL with another user's credentials."""
    parts = urllib.parse.urlsplit(amqp_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))


async def act_as(amqp_url: str, region: str, participant_id: str, request: t.JoinMarket | t.LeaveMarket,
                 timeout_s: float = ANSWER_TIMEOUT_S) -> t.Message:
    """Sends a membership request as the participant's own user (``amqp_url`` carries its
    credentials), through the client SDK on a queue of its own (the household's inbox is
    left alone), and returns order-intake's answer: MemberJoined, MemberLeft or Rejected."""
    client = Client(amqp_url, region, participant_id, answer_timeout_s=timeout_s, resend_after_s=timeout_s,
                    inbox="provisioning")
    try:
        await client.connect()
    except Exception as exc:  # aio-pika raises several types for refused logins and absent brokers
        raise AccountError(f"could not connect to RabbitMQ as {participant_id} ({type(exc).__name__}: {exc})") from None
    try:
        return await client.request(request)
    except Refused as refused:
        return refused.answer
    except TimeoutError:
        raise AccountError(f"no answer from region {region}'s order-intake within {timeout_s:.0f} s: "
                           "is it running, on this broker?") from None
    finally:
        await client.close()


def new_password() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Added:
    account: Account
    password: str | None  # None: the existing password stays
    agent: str | None


def add(admin: Management, amqp_url: str, region: str, participant_id: str, *, kind: str = "household",
        agent: str | None = None, password: str | None = None) -> Added:
    """Creates (or repairs) the participant's user and permissions; with ``agent``, joins the
    household naming it, as the household."""
    check_id(participant_id)
    if kind not in KINDS:
        raise AccountError(f"kind must be one of {', '.join(KINDS)}")
    if agent is not None:
        check_id(agent)
        if kind != "household":
            raise AccountError("only a household names an agent")
        agent_account = account_of(admin.user(agent) or {})
        if agent_account is None or agent_account.region != region or agent_account.kind != "aggregator":
            raise AccountError(f"{agent} is not an aggregator of region {region}: add it first "
                               f"(microte participants add {agent} --aggregator --region {region})")
    existing = admin.user(participant_id)
    if existing is not None:
        found = account_of(existing)
        if found is None:
            raise AccountError(f"the broker already has a user {participant_id!r} that is not a microte participant")
        if found.region != region:
            raise AccountError(f"{participant_id} is a participant of region {found.region}; on a shared broker a "
                               "participant id names one account in one region")
        if found.kind != kind:
            raise AccountError(f"{participant_id} is already an account of kind {found.kind}; remove it first")
    tags = [PARTICIPANT_TAG, region_tag(region), f"microte-{kind}"]
    # A new user gets a password; an existing one keeps its own unless one is given, or unless
    # the household must be signed in as (to name its agent), which needs one we know.
    chosen = password or (new_password() if existing is None or agent is not None else None)
    if chosen is not None:
        admin.put_user(participant_id, chosen, tags)
    admin.grant(participant_id, grants(region, participant_id))
    if agent is not None:
        answer = asyncio.run(act_as(url_as(amqp_url, participant_id, chosen or ""), region, participant_id,
                                    t.JoinMarket(region=region, participant_id=participant_id, agent=agent)))
        if isinstance(answer, t.Rejected):
            raise AccountError(f"region {region} refused {participant_id}'s join: {answer.reason} ({answer.detail})")
    return Added(Account(participant_id, kind, region), chosen, agent)


def remove(admin: Management, amqp_url: str, region: str, participant_id: str) -> int:
    """Cuts the participant off and deletes its account; the number of connections closed."""
    check_id(participant_id)
    found = account_of(admin.user(participant_id) or {})
    if found is None or found.region != region:
        raise AccountError(f"{participant_id} is not a participant of region {region} "
                           f"(see microte participants list --region {region})")
    password = new_password()  # from now on only this command can sign in as it
    admin.put_user(participant_id, password, [PARTICIPANT_TAG, region_tag(region), f"microte-{found.kind}"])
    closed = admin.close_connections(participant_id)
    answer = asyncio.run(act_as(url_as(amqp_url, participant_id, password), region, participant_id,
                                t.LeaveMarket(region=region, participant_id=participant_id)))
    if isinstance(answer, t.Rejected) and answer.reason != "not_a_member":
        raise AccountError(f"region {region} refused {participant_id}'s leave: {answer.reason} ({answer.detail}); "
                           "its user is kept, signed out and with a password nobody has: run remove again")
    admin.delete_queue(participant_queue(region, participant_id))
    admin.delete_user(participant_id)
    return closed


def accounts(admin: Management, region: str) -> list[Account]:
    found = (account_of(u) for u in admin.users())
    return sorted((a for a in found if a is not None and a.region == region), key=lambda a: a.participant_id)
