"""The broker accounts: every service may do on RabbitMQ exactly what its code does, and
participants may only send requests and read their own answers.

What each service publishes and binds is read from the code (its ``publish`` calls and its
``consume`` keys, with the kinds resolved through shared.runtime.topology), so a new
routing key in a service fails here instead of closing its channel in production. The
accounts are read from the compose stack's deploy/rabbitmq/definitions.json and from
every rendered overlay's User/Permission/TopicPermission resources, and checked against
RabbitMQ's rules (which permission each AMQP operation needs); the definitions are then
loaded into a real, private RabbitMQ node and the same operations are tried for real.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import jsonschema
import pytest
import yaml
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed

from services.participants.accounts import Account as ParticipantAccount
from services.participants.accounts import account_of, grants
from services.participants.community import agent_ids
from services.participants.profiles import community
from shared.runtime import topology
from shared.runtime.topology import DEAD_LETTER_EXCHANGE, EXCHANGE, Keys
from tests.faults.servers import PrivateRabbit, ServerError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DEFINITIONS = DEPLOY / "rabbitmq" / "definitions.json"
SERVICES = ("clock", "order-intake", "matcher", "meter-collector", "ledger-writer")
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
COMPOSE_REGION = "r1"
OTHER_REGION = "elsewhere"
ADMIN = "microte-admin"
COMMUNITY = "microte-r1-community"
HOUSEHOLD = "h001"  # a household of the simulated community, as the example
# The compose stack's simulated community under broker identity: an account per household
# of its default size (MICROTE_PARTICIPANTS, 50) and one for its aggregator.
COMPOSE_COMMUNITY = 50
COMPOSE_PARTICIPANTS = {**{h.participant_id: "household" for h in community(COMPOSE_COMMUNITY, 7)},
                        **{a: "aggregator" for a in agent_ids(1)}}
# User tags that give rights (management UI and API, or setting another user's user_id).
RIGHTS_TAGS = {"administrator", "monitoring", "policymaker", "management", "impersonator"}
X, DLX = EXCHANGE.name, DEAD_LETTER_EXCHANGE.name
DEFAULT_EXCHANGE = "amq.default"  # the name RabbitMQ checks permissions on for exchange ""
# Every kind the topology names (requests, facts, answers), and one it does not.
KINDS = sorted({v for k, v in vars(topology).items() if k.isupper() and isinstance(v, str)
                and re.fullmatch(r"[a-z_]+", v)} | {"bogus"})
PARTICIPANTS = ("h001", "H-2_x", "in", "fact")


def service_user(region: str, service: str) -> str:
    return f"microte-{region}-{service}"


# --------------------------------------------------------------------------- what the code does


@dataclass(frozen=True, order=True)
class KeyUse:
    """A call of shared.runtime.topology.Keys: method (fact, to, request, all_to) and kind."""

    method: str
    kind: str

    def keys(self, region: str) -> set[str]:
        k = Keys(region)
        if self.method == "to":
            return {k.to(p, self.kind) for p in PARTICIPANTS}
        return {getattr(k, self.method)(self.kind)}


def _receiver_is(node: ast.expr, name: str) -> bool:
    return (isinstance(node, ast.Name) and node.id == name) or (isinstance(node, ast.Attribute) and node.attr == name)


def _key_uses(node: ast.AST, where: str) -> set[KeyUse]:
    uses = set()
    for call in ast.walk(node):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr in ("fact", "to", "request", "all_to") and _receiver_is(call.func.value, "keys")):
            arg = call.args[-1]
            name = arg.id if isinstance(arg, ast.Name) else arg.attr if isinstance(arg, ast.Attribute) else None
            kind = getattr(topology, name, None) if name else None
            assert isinstance(kind, str), f"{where}:{call.lineno}: the kind is not a topology constant"
            uses.add(KeyUse(call.func.attr, kind))
    return uses


def _calls(tree: ast.AST, names: set[str]) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names:
            yield node


def _package(service: str) -> Path:
    return ROOT / "services" / service.replace("-", "_")


@functools.cache
def consumed(service: str) -> frozenset[KeyUse]:
    """The keys the service's queue is bound to (its app.py's consume call)."""
    path = _package(service) / "app.py"
    (call,) = _calls(ast.parse(path.read_text()), {"consume"})
    return frozenset(_key_uses(call.args[0], str(path)))


@functools.cache
def scaffold_answers() -> frozenset[KeyUse]:
    """What shared/runtime/service.py itself publishes: answers to requests it refuses."""
    path = ROOT / "shared" / "runtime" / "service.py"
    uses: set[KeyUse] = set()
    for call in _calls(ast.parse(path.read_text()), {"publish"}):
        if isinstance(call.func.value, ast.Name) and call.func.value.id == "self":  # not self.broker.publish
            uses |= _key_uses(call, str(path))
    assert uses, "shared/runtime/service.py no longer answers refused requests? update this test"
    return frozenset(uses)


@functools.cache
def published(service: str) -> frozenset[KeyUse]:
    """Every routing key the service publishes on the exchange ``microte``."""
    uses: set[KeyUse] = set()
    for path in sorted(_package(service).glob("*.py")):
        for call in _calls(ast.parse(path.read_text()), {"publish", "publish_all"}):
            assert not _receiver_is(call.func.value, "broker"), (
                f"{path}:{call.lineno}: publish through Service.publish, so that its key is known here")
            found = _key_uses(call, str(path))
            assert found, f"{path}:{call.lineno}: cannot tell which routing key this publish uses"
            uses |= found
    # The scaffold answers a refused request (malformed, identity mismatch) of a service that
    # consumes requests.
    if any(u.method == "request" for u in consumed(service)):
        uses |= scaffold_answers()
    assert all(u.method in ("fact", "to") for u in uses), f"{service} publishes {uses}"
    return frozenset(uses)


def test_the_code_publishes_what_the_deployment_documents() -> None:
    """The table in docs/deploy.md and the comments follow the code; this pins it."""
    assert published("clock") == {KeyUse("fact", "round_started"), KeyUse("to", "rejected")}
    assert published("order-intake") == {KeyUse("fact", "answered"), *(
        KeyUse("to", k) for k in ("order_accepted", "order_cancelled", "rejected", "membership", "batch"))}
    assert published("matcher") == {KeyUse("fact", "slot_cleared"), KeyUse("to", "settlements")}
    assert published("meter-collector") == {KeyUse("fact", "slot_reconciled"), KeyUse("fact", "answered"), *(
        KeyUse("to", k) for k in ("statement", "reading_accepted", "rejected", "batch"))}
    assert published("ledger-writer") == {KeyUse("fact", "slot_recorded")}


def candidate_keys(region: str) -> set[str]:
    """Well-formed keys of every kind in two regions, and malformed ones."""
    keys = set()
    for r in (region, OTHER_REGION):
        k = Keys(r)
        for kind in KINDS:
            keys |= {k.fact(kind), k.request(kind), *(k.to(p, kind) for p in PARTICIPANTS)}
    return keys | {
        "", region, f"{region}.fact", f"{region}.to.h001", f"{region}.fact.round_started.x",
        f"{region}.to.h001.settlements.x", f"{region}.to..settlements", f"{region}.in.order.x",
        f"x{region}.fact.round_started", f"{region}x.fact.round_started", f"{region}.fact.round_startedx",
        f"a.{region}.fact.round_started",
    }


# --------------------------------------------------------------------------- RabbitMQ's rules


def rabbit_match(regex: str, name: str) -> bool:
    """RabbitMQ matches a permission with re:run (unanchored); the empty pattern means ^$."""
    return re.search(regex or "^$", name) is not None


@dataclass
class Account:
    """One broker user in vhost "/" and what RabbitMQ lets it do (access-control docs)."""

    name: str
    tags: list[str]
    configure: str = ""
    write: str = ""
    read: str = ""
    topics: dict[str, tuple[str, str]] = field(default_factory=dict)  # exchange -> (write, read)

    def may(self, permission: str, resource: str) -> bool:
        return rabbit_match(getattr(self, permission), resource)

    def topic(self, exchange: str, permission: str, key: str) -> bool:
        if exchange not in self.topics:
            return True  # no topic permission for an exchange: every key
        write, read = self.topics[exchange]
        return rabbit_match(write if permission == "write" else read, key)

    # AMQP 0-9-1 operations and the permissions they need
    def declare_exchange(self, exchange: str) -> bool:
        return self.may("configure", exchange)

    def declare_queue(self, queue: str, dead_letter_exchange: str | None = None) -> bool:
        ok = self.may("configure", queue)
        if dead_letter_exchange is not None:  # a queue with x-dead-letter-exchange
            ok = ok and self.may("read", queue) and self.may("write", dead_letter_exchange)
        return ok

    def bind(self, queue: str, exchange: str, key: str) -> bool:
        return self.may("write", queue) and self.may("read", exchange) and self.topic(exchange, "read", key)

    def consume(self, queue: str) -> bool:
        return self.may("read", queue)

    def publish(self, exchange: str, key: str) -> bool:
        exchange = exchange or DEFAULT_EXCHANGE  # it routes straight to the queue named by the key
        return self.may("write", exchange) and self.topic(exchange, "write", key)


def definitions() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DEFINITIONS.read_text())
    return data


def compose_accounts() -> dict[str, Account]:
    defs = definitions()
    accounts = {u["name"]: Account(u["name"], list(u.get("tags", []))) for u in defs["users"]}
    for p in defs["permissions"]:
        a = accounts[p["user"]]
        a.configure, a.write, a.read = p["configure"], p["write"], p["read"]
    for t in defs["topic_permissions"]:
        accounts[t["user"]].topics[t["exchange"]] = (t["write"], t["read"])
    return accounts


@functools.cache
def rendered(kubectl: str, overlay: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def of_kind(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def overlay_accounts(objects: tuple[dict[str, Any], ...]) -> dict[str, Account]:
    """The overlay's accounts by User resource name (the username comes from its Secret)."""
    accounts = {name: Account(name, list(u["spec"].get("tags", []))) for name, u in of_kind(objects, "User").items()}
    for p in of_kind(objects, "Permission").values():
        a = accounts[p["spec"]["userReference"]["name"]]
        perms = p["spec"]["permissions"]
        a.configure, a.write, a.read = perms.get("configure", ""), perms.get("write", ""), perms.get("read", "")
    for t in of_kind(objects, "TopicPermission").values():
        perms = t["spec"]["permissions"]
        accounts[t["spec"]["userReference"]["name"]].topics[perms["exchange"]] = (
            perms.get("write", ""), perms.get("read", ""))
    return accounts


def region_of(objects: tuple[dict[str, Any], ...]) -> str:
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("microte-region")]
    region: str = config["data"]["MICROTE_REGION"]
    return region


@dataclass(frozen=True)
class Setup:
    """The service accounts of one deployment: the compose stack or an overlay."""

    name: str
    region: str
    accounts: dict[str, Account]  # by service

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(params=["compose", *(f"overlays/{o}" for o in OVERLAYS)])
def setup(request: pytest.FixtureRequest) -> Setup:
    if request.param == "compose":
        accounts = compose_accounts()
        return Setup("compose", COMPOSE_REGION, {s: accounts[service_user(COMPOSE_REGION, s)] for s in SERVICES})
    kubectl: str = request.getfixturevalue("kubectl")
    objects = rendered(kubectl, request.param.split("/")[1])
    accounts = overlay_accounts(objects)
    return Setup(request.param, region_of(objects), {s: accounts[f"microte-{s}"] for s in SERVICES})


# --------------------------------------------------------------------------- the service accounts


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_account_may_publish_exactly_the_routing_keys_its_code_publishes(
    setup: Setup, service: str
) -> None:
    account = setup.accounts[service]
    allowed = set().union(*(u.keys(setup.region) for u in published(service)))
    for key in sorted(candidate_keys(setup.region)):
        assert account.publish(X, key) == (key in allowed), (
            f"{setup}: {service} {'may not' if key in allowed else 'may'} publish {key!r}")


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_account_can_set_up_and_run_what_its_service_declares(setup: Setup, service: str) -> None:
    """shared/runtime/service.py: _declare, the subscriber, publish and dead_letter."""
    a, r = setup.accounts[service], setup.region
    queue, dead = topology.service_queue(r, service, "x").name, topology.dead_letter_queue(r).name
    assert a.declare_exchange(X) and a.declare_exchange(DLX), "the services declare both exchanges"
    assert a.declare_queue(dead) and a.bind(dead, DLX, f"{r}.#")
    assert a.declare_queue(queue, dead_letter_exchange=DLX), "its own queue, with the dead-letter exchange"
    for use in consumed(service):
        for key in use.keys(r) if use.method != "to" else {Keys(r).all_to(use.kind)}:
            assert a.bind(queue, X, key), f"{setup}: {service} cannot bind {key}"
    assert a.consume(queue)
    for key in [*(k for u in consumed(service) for k in u.keys(r)), r]:  # dead_letter: the key, or the region
        assert a.publish(DLX, key), f"{setup}: {service} cannot dead-letter {key!r}"


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_account_cannot_touch_other_services_participants_or_regions(setup: Setup, service: str) -> None:
    a, r = setup.accounts[service], setup.region
    for other in SERVICES:
        if other != service:
            q = f"microte.{r}.{other}"
            assert not (a.declare_queue(q) or a.consume(q) or a.bind(q, X, f"{r}.fact.round_started")), (
                f"{setup}: {service} can use {other}'s queue")
    for q in (f"microte.{r}.participant.h001", f"microte.{OTHER_REGION}.{service}", f"microte.{OTHER_REGION}.dead",
              f"microte.{r}.{service}.x", "amq.topic", DEFAULT_EXCHANGE):
        assert not (a.declare_queue(q) or a.consume(q) or a.may("write", q)), f"{setup}: {service} can use {q!r}"
    assert not a.publish("", f"microte.{r}.{service}"), "the default exchange would bypass the topic permissions"
    assert not a.consume(f"microte.{r}.dead"), "nobody consumes the dead letters but the operator"
    assert not a.bind(f"microte.{r}.{service}", X, f"{OTHER_REGION}.fact.round_started")
    assert not a.bind(f"microte.{r}.{service}", X, "#")
    assert not a.publish(DLX, f"{OTHER_REGION}.in.order")
    assert not a.tags, f"{setup}: {service} needs no management tag"


def test_the_overlays_accounts_are_the_compose_accounts_for_their_region(kubectl: str) -> None:
    """One design, two spellings: deploy/rabbitmq/definitions.json and components/broker-accounts."""
    compose = compose_accounts()

    def normal(regex: str, region: str) -> str:
        return regex.replace("(?:)", "").replace(re.escape(region), "REGION").replace(region, "REGION")

    for overlay in OVERLAYS:
        objects = rendered(kubectl, overlay)
        region, accounts = region_of(objects), overlay_accounts(objects)
        assert "(?:)" + region + "(?:)" in accounts["microte-clock"].read, "the region is templated by kustomize"
        for s in SERVICES:
            k8s, local = accounts[f"microte-{s}"], compose[service_user(COMPOSE_REGION, s)]
            for perm in ("configure", "write", "read"):
                assert normal(getattr(k8s, perm), region) == normal(getattr(local, perm), COMPOSE_REGION), (overlay, s)
            assert {x: tuple(normal(p, region) for p in v) for x, v in k8s.topics.items()} == {
                x: tuple(normal(p, COMPOSE_REGION) for p in v) for x, v in local.topics.items()}, (overlay, s)


# --------------------------------------------------------------------------- participants


def participant_accounts() -> dict[str, Account]:
    return {n: a for n, a in compose_accounts().items()
            if n != ADMIN and n not in {service_user(COMPOSE_REGION, s) for s in SERVICES}}


def test_no_participant_account_can_publish_a_fact_or_an_answer() -> None:
    accounts = participant_accounts()
    assert set(accounts) == {COMMUNITY, *COMPOSE_PARTICIPANTS}
    r = COMPOSE_REGION
    for name, a in accounts.items():
        for kind in KINDS:
            assert a.publish(X, Keys(r).request(kind)), f"{name} may send requests ({kind})"
            assert not a.publish(X, Keys(OTHER_REGION).request(kind)), f"{name}: only its region"
            assert not a.publish(X, Keys(r).fact(kind)), f"{name} may publish the fact {kind}"
            for p in (*PARTICIPANTS, name):
                assert not a.publish(X, Keys(r).to(p, kind)), f"{name} may answer {p} ({kind})"
        for key in (f"{r}.in.order.x", f"{r}.in", f"{r}.fact.slot_cleared", "#"):
            assert not a.publish(X, key), f"{name} may publish {key!r}"
        for exchange in (DLX, "amq.topic", DEFAULT_EXCHANGE):
            assert not a.may("write", exchange), f"{name} may publish to {exchange!r}"
        assert not a.publish("", f"microte.{r}.matcher"), f"{name} may write into a service's queue directly"
        assert not set(a.tags) & RIGHTS_TAGS, f"{name} has a management or impersonator tag"


def test_the_example_household_reads_only_its_own_queue_and_answers() -> None:
    a, r = compose_accounts()[HOUSEHOLD], COMPOSE_REGION
    own = f"microte.{r}.participant.{HOUSEHOLD}"
    assert a.declare_queue(own) and a.consume(own)
    assert a.bind(own, X, f"{r}.to.{HOUSEHOLD}.#") and a.bind(own, X, Keys(r).fact(topology.ROUND_STARTED))
    for key in (f"{r}.to.h002.#", Keys(r).all_to(topology.SETTLEMENTS), f"{r}.#", "#", f"{r}.to.{HOUSEHOLD}x.#",
                Keys(r).fact(topology.SLOT_CLEARED), f"{OTHER_REGION}.to.{HOUSEHOLD}.#"):
        assert not a.bind(own, X, key), f"the household may bind {key}"
    for q in (f"microte.{r}.participant.h002", f"microte.{r}.order-intake", f"microte.{r}.dead", f"{own}x"):
        assert not (a.declare_queue(q) or a.consume(q) or a.may("write", q)), q
    # it cannot delete or redeclare the exchanges (its client must declare them passively)
    assert not (a.declare_exchange(X) or a.declare_exchange(DLX))
    # A request whose key names its sender (MQTT: no user_id) may name only itself.
    assert a.publish(X, Keys(r).request_from(topology.READING, HOUSEHOLD))
    for sender in ("h002", f"{HOUSEHOLD}x", "*", "#"):
        assert not a.publish(X, Keys(r).request_from(topology.READING, sender)), sender
    assert not a.publish(X, Keys(OTHER_REGION).request_from(topology.READING, HOUSEHOLD))
    # Its MQTT subscriptions' queues are its own too, nobody else's.
    assert a.declare_queue(f"mqtt-subscription-{HOUSEHOLD}qos1") and a.consume(f"mqtt-subscription-{HOUSEHOLD}qos0")
    assert not (a.declare_queue("mqtt-subscription-h002qos1") or a.consume("mqtt-subscription-h002qos1"))


def test_every_community_account_is_what_microte_participants_add_provisions() -> None:
    """One design: each household and aggregator account in definitions.json has the rights
    and tags that services/participants/accounts.py gives it (tests/e2e/test_participants.py
    checks those on a real node, and runs a community on such accounts)."""
    accounts = compose_accounts()
    for pid, kind in COMPOSE_PARTICIPANTS.items():
        a, g = accounts[pid], grants(COMPOSE_REGION, pid)
        assert (a.configure, a.write, a.read) == (g.configure, g.write, g.read), pid
        assert a.topics == {X: (g.topic_write, g.topic_read)}, pid
        assert account_of({"name": pid, "tags": a.tags}) == ParticipantAccount(pid, kind, COMPOSE_REGION)


def test_the_simulated_community_can_do_what_services_participants_community_does() -> None:
    """services/participants/community.py: one connection for every simulated household."""
    a, r = compose_accounts()[COMMUNITY], COMPOSE_REGION
    assert a.declare_exchange(X)  # community.py declares it (not passively)
    for pid in PARTICIPANTS:
        q = f"microte.{r}.participant.{pid}"
        assert a.declare_queue(q) and a.consume(q), q
        assert a.bind(q, X, f"{r}.to.{pid}.#") and a.bind(q, X, Keys(r).fact(topology.ROUND_STARTED))
    watch = f"microte.{r}.community"
    assert a.declare_queue(watch) and a.consume(watch)
    for kind in (topology.SLOT_RECORDED, topology.ROUND_STARTED):
        assert a.bind(watch, X, Keys(r).fact(kind)), kind
    for q in (f"microte.{r}.order-intake", f"microte.{r}.dead", f"microte.{OTHER_REGION}.participant.h001"):
        assert not (a.declare_queue(q) or a.consume(q)), q
    assert not a.bind(watch, X, f"{r}.#") and not a.bind(watch, X, Keys(r).fact(topology.SLOT_CLEARED))


# --------------------------------------------------------------------------- every account


def test_the_definitions_are_complete_and_consistent() -> None:
    defs = definitions()
    assert defs["vhosts"] == [{"name": "/"}]
    users = [u["name"] for u in defs["users"]]
    assert len(users) == len(set(users))
    assert set(users) == {ADMIN, COMMUNITY, *COMPOSE_PARTICIPANTS, *(service_user(COMPOSE_REGION, s) for s in SERVICES)}
    assert "guest" not in users, "no guest: the node creates no default user when it imports definitions"
    for u in defs["users"]:
        assert u["password"].startswith("local-only-"), f"{u['name']}: passwords here are local-only placeholders"
        assert "password_hash" not in u
        assert "impersonator" not in u["tags"], f"{u['name']} could forge user_id"
        assert ("administrator" in u["tags"]) == (u["name"] == ADMIN), u["name"]
    assert sorted(p["user"] for p in defs["permissions"]) == sorted(users), "one permission set per user"
    assert {(p["vhost"]) for p in defs["permissions"] + defs["topic_permissions"]} == {"/"}
    topics = [(t["user"], t["exchange"]) for t in defs["topic_permissions"]]
    assert len(topics) == len(set(topics)) and {u for u, _ in topics} <= set(users)
    for p in defs["permissions"] + defs["topic_permissions"]:
        for key in ("configure", "write", "read"):
            if key in p:
                re.compile(p[key])
    exchanges = {(x["name"], x["type"], x["durable"], x["auto_delete"], x["internal"]) for x in defs["exchanges"]}
    assert exchanges == {(X, "topic", True, False, False), (DLX, "topic", True, False, False)}, (
        "as shared/runtime/topology.py declares them")
    assert EXCHANGE.durable and DEAD_LETTER_EXCHANGE.durable
    assert not defs.get("queues") and not defs.get("bindings"), "the services declare their queues themselves"


def test_every_account_that_may_publish_to_a_topic_exchange_is_held_to_routing_keys(kubectl: str) -> None:
    """No topic permission for an exchange means every routing key: a missing entry is a hole."""
    sets = {"compose": compose_accounts()}
    sets |= {f"overlays/{o}": overlay_accounts(rendered(kubectl, o)) for o in OVERLAYS}
    for where, accounts in sets.items():
        for name, a in accounts.items():
            if name == ADMIN:
                continue
            assert not a.may("write", DEFAULT_EXCHANGE), f"{where}: {name} may bypass the topic permissions"
            for exchange in (X, DLX, "amq.topic", "amq.rabbitmq.trace"):
                if a.may("write", exchange):
                    assert exchange in a.topics, f"{where}: {name} may publish any key to {exchange}"


# --------------------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def interpolate(value: str) -> str:
    """Compose's ${NAME:-default} with nothing set in the environment."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def env_file(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_compose_rabbitmq_imports_the_definitions_and_has_no_default_user() -> None:
    rabbit = compose()["services"]["rabbitmq"]
    assert "./deploy/rabbitmq/definitions.json:/etc/rabbitmq/definitions.json:ro" in rabbit["volumes"]
    conf = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
    assert re.search(r"^load_definitions\s*=\s*/etc/rabbitmq/definitions\.json$", conf, re.M)
    env = rabbit.get("environment") or {}
    assert not {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"} & set(env), (
        "ignored once definitions are imported at boot, and misleading")


def test_every_compose_service_connects_with_its_own_account_and_gets_the_region_settings() -> None:
    services = compose()["services"]
    passwords = {u["name"]: u["password"] for u in definitions()["users"]}
    users = []
    for name in SERVICES:
        env = {k: interpolate(str(v)) for k, v in services[name]["environment"].items()}
        url = urlsplit(env["MICROTE_AMQP_URL"])
        assert url.username == service_user(COMPOSE_REGION, name), name
        assert url.password == passwords[url.username], f"{name}: the password of its account in definitions.json"
        assert url.hostname == "rabbitmq"
        users.append(url.username)
        assert len(env["MICROTE_SERVICE_KEY"]) >= 32, f"{name}: the service key needs 32 characters at least"
        assert "local-only" in env["MICROTE_SERVICE_KEY"], "the default key is a visible placeholder"
        assert env["MICROTE_IDENTITY"] == "broker_user", "a request counts only from its participant's own account"
    assert len(set(users)) == len(SERVICES)
    keys = {interpolate(str(services[n]["environment"]["MICROTE_SERVICE_KEY"])) for n in SERVICES}
    assert len(keys) == 1, "one key for the whole region"
    region = env_file(ROOT / services["clock"]["env_file"][0])
    assert region["MICROTE_REGION"] == COMPOSE_REGION
    listed = region["MICROTE_SERVICE_USERS"].split(",")
    assert sorted(listed) == sorted(users), "MICROTE_SERVICE_USERS lists exactly the region's service accounts"


def test_the_simulated_community_is_a_participant_without_the_service_key() -> None:
    sim = compose()["services"]["simulator"]
    env = {k: interpolate(str(v)) for k, v in sim["environment"].items()}
    assert urlsplit(env["MICROTE_AMQP_URL"]).username == COMMUNITY  # its watch of the round
    assert "MICROTE_SERVICE_KEY" not in env
    # each household and its aggregator sign in as themselves, with the passwords of their accounts
    passwords = {u["name"]: u["password"] for u in definitions()["users"]}
    template = env["MICROTE_PARTICIPANT_AMQP_URL"]
    for pid in COMPOSE_PARTICIPANTS:
        url = urlsplit(template.replace("{participant}", pid))
        assert (url.username, url.password, url.hostname) == (pid, passwords[pid], "rabbitmq"), pid
    command = [interpolate(str(c)) for c in sim["command"]]
    assert command[command.index("--aggregators") + 1] == "1"
    assert command[command.index("--participants") + 1] == str(COMPOSE_COMMUNITY), "an account for each"
    region = env_file(ROOT / sim["env_file"][0])
    assert COMMUNITY not in region["MICROTE_SERVICE_USERS"].split(",")


# --------------------------------------------------------------------------- Kubernetes

_NAME = {"type": "string", "minLength": 1}
_REF = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {"name": _NAME}}
_CLUSTER_REF = {
    "type": "object", "additionalProperties": False,
    "properties": {"name": _NAME, "namespace": _NAME, "connectionSecret": _REF},
    "oneOf": [{"required": ["name"]}, {"required": ["connectionSecret"]}],
}
_REQUIRED = ["vhost", "permissions", "rabbitmqClusterReference"]
_USER_OR_REF = {"oneOf": [{"required": ["user"]}, {"required": ["userReference"]}]}
_REGEX = {"type": "string"}
# The operator's CRDs (rabbitmq.com/v1beta1, messaging-topology-operator api/v1beta1) and
# its admission webhooks (user or userReference, not both; cluster name or connectionSecret).
TOPOLOGY_SCHEMAS: dict[str, dict[str, Any]] = {
    "User": {
        "type": "object", "additionalProperties": False, "required": ["rabbitmqClusterReference"],
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["management", "policymaker", "monitoring", "administrator"]}},
            "rabbitmqClusterReference": _CLUSTER_REF,
            "importCredentialsSecret": _REF,
        },
    },
    "Permission": {
        "type": "object", "additionalProperties": False, "required": _REQUIRED,
        "properties": {
            "user": _NAME, "userReference": _REF, "vhost": _NAME, "rabbitmqClusterReference": _CLUSTER_REF,
            "permissions": {"type": "object", "additionalProperties": False,
                            "properties": {"configure": _REGEX, "write": _REGEX, "read": _REGEX}},
        },
        **_USER_OR_REF,
    },
    "TopicPermission": {
        "type": "object", "additionalProperties": False, "required": _REQUIRED,
        "properties": {
            "user": _NAME, "userReference": _REF, "vhost": _NAME, "rabbitmqClusterReference": _CLUSTER_REF,
            "permissions": {"type": "object", "additionalProperties": False, "required": ["exchange"],
                            "properties": {"exchange": _NAME, "write": _REGEX, "read": _REGEX}},
        },
        **_USER_OR_REF,
    },
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_broker_account_resources_have_the_operators_shape(kubectl: str, overlay: str) -> None:
    checked = 0
    for o in rendered(kubectl, overlay):
        if o["apiVersion"].startswith("rabbitmq.com/"):
            assert o["apiVersion"] == "rabbitmq.com/v1beta1" and o["kind"] in TOPOLOGY_SCHEMAS, o["kind"]
            assert set(o) == {"apiVersion", "kind", "metadata", "spec"}, o["metadata"]["name"]
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", o["metadata"]["name"])
            try:
                jsonschema.validate(o["spec"], TOPOLOGY_SCHEMAS[o["kind"]])
            except jsonschema.ValidationError as exc:
                pytest.fail(f"{o['kind']} {o['metadata']['name']}: {exc.message} at {list(exc.absolute_path)}")
            for perm in o["spec"].get("permissions", {}).values():
                re.compile(perm)
            checked += 1
    assert checked >= 3 * len(SERVICES), checked


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_ships_one_broker_account_per_service_and_one_for_keda(kubectl: str, overlay: str) -> None:
    objects = rendered(kubectl, overlay)
    users = of_kind(objects, "User")
    assert set(users) == {f"microte-{s}" for s in SERVICES} | {"microte-keda"}
    for name, u in users.items():
        assert u["spec"]["importCredentialsSecret"] == {"name": f"{name}-import"}, (
            "its username (microte-<region>-<service>, which MICROTE_SERVICE_USERS lists) comes from a Secret")
    infra = subprocess.run([kubectl, "kustomize", str(K8S / "infra")], capture_output=True, text=True, timeout=120)
    cluster = next(o for o in yaml.safe_load_all(infra.stdout) if o and o["kind"] == "RabbitmqCluster")
    allowed = cluster["metadata"]["annotations"]["rabbitmq.com/topology-allowed-namespaces"].split(",")
    namespace = f"microte-{overlay}"
    assert namespace in allowed, f"add {namespace} to the RabbitmqCluster's topology-allowed-namespaces"
    for kind in ("User", "Permission", "TopicPermission"):
        for name, o in of_kind(objects, kind).items():
            assert o["spec"]["rabbitmqClusterReference"] == {
                "name": cluster["metadata"]["name"], "namespace": cluster["metadata"]["namespace"]}, name
            if kind != "User":
                assert o["spec"]["userReference"]["name"] in users, name
                assert o["spec"]["vhost"] == "/", name
    permissions = {p["spec"]["userReference"]["name"] for p in of_kind(objects, "Permission").values()}
    assert permissions == set(users), "one Permission per User"
    topic_users = sorted((t["spec"]["userReference"]["name"], t["spec"]["permissions"]["exchange"])
                         for t in of_kind(objects, "TopicPermission").values())
    assert topic_users == sorted((f"microte-{s}", x) for s in SERVICES for x in (X, DLX))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_may_only_look_at_the_order_intake_queue(kubectl: str, overlay: str) -> None:
    objects = rendered(kubectl, overlay)
    keda, region = overlay_accounts(objects)["microte-keda"], region_of(objects)
    assert keda.may("read", f"microte.{region}.order-intake")
    for name in (X, DLX, DEFAULT_EXCHANGE, f"microte.{region}.order-intake", f"microte.{region}.matcher"):
        assert not keda.may("configure", name) and not keda.may("write", name), name
    assert not keda.consume(f"microte.{region}.matcher") and not keda.topics and not keda.tags


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_deployment_has_its_own_broker_account_and_the_region_lists_them(
    kubectl: str, overlay: str
) -> None:
    objects = rendered(kubectl, overlay)
    region = region_of(objects)
    refs = {}
    for name, d in of_kind(objects, "Deployment").items():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in c["env"]}
        refs[name] = env["MICROTE_AMQP_URL"]["valueFrom"]["secretKeyRef"]
        assert refs[name] == {"name": "microte-credentials", "key": f"amqp-url-{name}"}, name
        assert env["MICROTE_SERVICE_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "microte-credentials", "key": "service-key"}, name
    assert set(refs) == set(SERVICES) and len({r["key"] for r in refs.values()}) == len(SERVICES)
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("microte-region")]
    listed = config["data"]["MICROTE_SERVICE_USERS"].split(",")
    assert sorted(listed) == sorted(service_user(region, s) for s in SERVICES), (
        f"overlays/{overlay}/region.env: MICROTE_SERVICE_USERS must list exactly microte-{region}-<service>")
    # every household and aggregator connects as its own user (microte participants add)
    assert config["data"]["MICROTE_IDENTITY"] == "broker_user"


# --------------------------------------------------------------------------- a real RabbitMQ node


@pytest.fixture(scope="module")
def broker() -> Iterator[PrivateRabbit]:
    """A private RabbitMQ node that boots from the compose stack's definitions.json."""
    node = PrivateRabbit(DEFINITIONS)
    try:
        node.start()
    except ServerError as exc:
        node.close()
        pytest.fail(str(exc), pytrace=False)  # fails, never skips, like a missing tool
    yield node
    node.close()


def _password(name: str) -> str:
    return next(u["password"] for u in definitions()["users"] if u["name"] == name)


async def _allowed(url: str, action: Any) -> bool:
    """Runs ``action(channel)`` on a fresh channel: False if the broker refuses it (403)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        try:
            await action(channel)
            await channel.close()
            return True
        except ChannelAccessRefused:
            return False
    finally:
        await connection.close()


def _publish(exchange: str, key: str, user_id: str | None = None) -> Any:
    async def action(channel: aio_pika.abc.AbstractChannel) -> None:
        x = await channel.get_exchange(exchange, ensure=False)
        await x.publish(aio_pika.Message(b"{}", user_id=user_id), routing_key=key)
    return action


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    pass


def _service_setup(region: str, service: str) -> Any:
    async def action(channel: aio_pika.abc.AbstractChannel) -> None:
        x = await channel.declare_exchange(X, aio_pika.ExchangeType.TOPIC, durable=True)
        dlx = await channel.declare_exchange(DLX, aio_pika.ExchangeType.TOPIC, durable=True)
        dead = await channel.declare_queue(topology.dead_letter_queue(region).name, durable=True)
        await dead.bind(dlx, routing_key=f"{region}.#")
        queue = await channel.declare_queue(f"microte.{region}.{service}", durable=True,
                                            arguments={"x-dead-letter-exchange": DLX})
        for use in consumed(service):
            key = Keys(region).all_to(use.kind) if use.method == "to" else next(iter(use.keys(region)))
            await queue.bind(x, routing_key=key)
        tag = await queue.consume(_ignore, no_ack=True)
        await queue.cancel(tag)
    return action


@pytest.mark.infra
async def test_the_definitions_load_into_rabbitmq_and_each_service_can_do_its_work_and_no_more(
    broker: PrivateRabbit,
) -> None:
    r = COMPOSE_REGION
    for service in SERVICES:
        user = service_user(r, service)
        url = broker.url_for(user, _password(user))
        assert await _allowed(url, _service_setup(r, service)), f"{service} cannot declare its topology"
        allowed = set().union(*(u.keys(r) for u in published(service)))
        for key in sorted(allowed):
            assert await _allowed(url, _publish(X, key, user)), f"{service} cannot publish {key}"
        for key in (Keys(r).fact("bogus"), Keys(r).request(topology.ORDER), Keys(OTHER_REGION).fact("slot_cleared"),
                    *(Keys(r).fact(k) for k in (topology.SLOT_CLEARED, topology.ROUND_STARTED)
                      if KeyUse("fact", k) not in published(service))):
            assert not await _allowed(url, _publish(X, key)), f"{service} may publish {key}"
        assert await _allowed(url, _publish(DLX, Keys(r).request(topology.ORDER)))
        # RabbitMQ validates user_id: a service cannot pass itself off as another account
        other = service_user(r, "ledger-writer" if service != "ledger-writer" else "clock")
        with pytest.raises(ChannelPreconditionFailed):
            connection = await aio_pika.connect(url)
            async with connection:
                channel = await connection.channel()
                x = await channel.get_exchange(X, ensure=False)
                await x.publish(aio_pika.Message(b"{}", user_id=other), routing_key=next(iter(sorted(allowed))))


@pytest.mark.infra
async def test_in_rabbitmq_participants_can_only_send_requests(broker: PrivateRabbit) -> None:
    r = COMPOSE_REGION
    for name in (HOUSEHOLD, COMMUNITY):
        url = broker.url_for(name, _password(name))
        assert await _allowed(url, _publish(X, Keys(r).request(topology.ORDER), name))
        for key in (Keys(r).fact(topology.SLOT_CLEARED), Keys(r).fact(topology.ROUND_STARTED),
                    Keys(r).to(name, topology.ORDER_ACCEPTED), Keys(r).to("h002", topology.SETTLEMENTS),
                    Keys(OTHER_REGION).request(topology.ORDER)):
            assert not await _allowed(url, _publish(X, key)), f"{name} may publish {key}"
        assert not await _allowed(url, _publish(DLX, Keys(r).request(topology.ORDER))), name

    async def household(channel: aio_pika.abc.AbstractChannel) -> None:
        x = await channel.get_exchange(X)  # a passive declare
        queue = await channel.declare_queue(f"microte.{r}.participant.{HOUSEHOLD}", durable=True)
        await queue.bind(x, routing_key=f"{r}.to.{HOUSEHOLD}.#")
        await queue.bind(x, routing_key=Keys(r).fact(topology.ROUND_STARTED))

    url = broker.url_for(HOUSEHOLD, _password(HOUSEHOLD))
    assert await _allowed(url, household)

    async def snoop(channel: aio_pika.abc.AbstractChannel) -> None:
        x = await channel.get_exchange(X)
        queue = await channel.declare_queue(f"microte.{r}.participant.{HOUSEHOLD}", durable=True)
        await queue.bind(x, routing_key=Keys(r).all_to(topology.SETTLEMENTS))

    assert not await _allowed(url, snoop), "a household may read other households' settlements"

    async def delete_exchange(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.exchange_delete(X)

    assert not await _allowed(url, delete_exchange)


@pytest.mark.infra
async def test_in_rabbitmq_there_is_no_guest(broker: PrivateRabbit) -> None:
    with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
        await aio_pika.connect(broker.url_for("guest", "guest"))


def _as_definitions(objects: tuple[dict[str, Any], ...], region: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The overlay's accounts as a definitions document (usernames as the docs create them)."""
    names = {f"microte-{s}": service_user(region, s) for s in SERVICES} | {"microte-keda": f"microte-{region}-keda"}
    passwords = {u: secrets.token_hex(12) for u in names.values()}
    accounts = overlay_accounts(objects)
    return {
        "users": [{"name": u, "password": passwords[u], "tags": []} for u in names.values()],
        "permissions": [{"user": names[n], "vhost": "/", "configure": a.configure, "write": a.write, "read": a.read}
                        for n, a in accounts.items()],
        "topic_permissions": [{"user": names[n], "vhost": "/", "exchange": x, "write": w, "read": rd}
                              for n, a in accounts.items() for x, (w, rd) in a.topics.items()],
    }, passwords


@pytest.mark.infra
async def test_in_rabbitmq_the_overlays_accounts_work_as_rendered(
    broker: PrivateRabbit, kubectl: str, tmp_path: Path
) -> None:
    """The patterns with the region filled in by kustomize, in Erlang's own regex engine."""
    for overlay in OVERLAYS:
        objects = rendered(kubectl, overlay)
        region = region_of(objects)
        document, passwords = _as_definitions(objects, region)
        path = tmp_path / f"{overlay}.json"
        path.write_text(json.dumps(document))
        assert broker.rabbitmqctl("import_definitions", str(path)) != "", broker.log_tail()
        for service in SERVICES:
            user = service_user(region, service)
            url = broker.url_for(user, passwords[user])
            assert await _allowed(url, _service_setup(region, service)), f"{overlay}: {service} cannot set up"
            for key in sorted(set().union(*(u.keys(region) for u in published(service))))[:3]:
                assert await _allowed(url, _publish(X, key, user)), f"{overlay}: {service} cannot publish {key}"
            assert not await _allowed(url, _publish(X, Keys(region).fact("bogus"))), f"{overlay}: {service}"
            assert not await _allowed(url, _publish(X, Keys(COMPOSE_REGION).fact(topology.SLOT_CLEARED)))
        keda = f"microte-{region}-keda"

        async def inspect(channel: aio_pika.abc.AbstractChannel, region: str = region) -> None:
            await channel.declare_queue(f"microte.{region}.order-intake", passive=True)

        assert await _allowed(broker.url_for(keda, passwords[keda]), inspect), f"{overlay}: KEDA cannot see the queue"
        assert not await _allowed(broker.url_for(keda, passwords[keda]), _publish(X, Keys(region).request("order")))
