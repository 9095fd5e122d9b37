"""The ``microte`` command: serve a service, simulate a community, run the demo, report, and
provision the broker accounts of a region's participants."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.metadata
import logging
import os
import re
import signal
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from zoneinfo import ZoneInfoNotFoundError

from services.participants import REQUESTS
from shared.market import PricingRule
from shared.market.timezones import zone
from shared.runtime.settings import Settings, SettingsError, from_env, market_record, record_differences
from shared.runtime.trust import TrustError

if TYPE_CHECKING:
    from services.participants.profiles import Household
    from services.participants.scenario import Scenario
    from shared.runtime.ledger import LedgerStore

_APPS = {
    "clock": "services.clock.app",
    "order-intake": "services.order_intake.app",
    "matcher": "services.matcher.app",
    "meter-collector": "services.meter_collector.app",
    "ledger-writer": "services.ledger_writer.app",
}
_RULES = tuple(rule.value for rule in PricingRule)
DEFAULT_LEDGER = Settings.ledger_url  # sqlite:///var/ledger.sqlite, in the project's own var/
CHECK_TIMEOUT_S = 5.0  # each server gets this long to answer the check before a run
INTERRUPTED = 130  # the shell's code for a command ended by SIGINT (Ctrl-C) ...
TERMINATED = 143  # ... and by SIGTERM

_ENVIRONMENT = """\
environment (every MICROTE_* variable: the README's "Configuration" table):
  MICROTE_AMQP_URL      RabbitMQ (default amqp://guest:guest@127.0.0.1:5672/)
  MICROTE_REDIS_URL     Redis (default redis://127.0.0.1:6379/0)
  MICROTE_LEDGER_URL    the ledger: postgresql://... or sqlite:///path (default sqlite:///var/ledger.sqlite)
  MICROTE_PRICING_RULE  midpoint, equal_price, pay_as_bid or uniform (default midpoint)"""


class CliError(Exception):
    """Ends the command with one line on stderr: ``microte: <message>``, and exit ``code``
    (2: a bad argument or setting; 1: a server that is not reachable, a refused request)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """Reports a bad argument in one line, ``microte: ...``, exit 2 (argparse prints usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"microte: {_one_line(message)} (see: {self.prog} --help)\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _version() -> str:
    try:
        return importlib.metadata.version("microte")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def redact(url: str) -> str:
    """A server URL fit to print: its password replaced by ***."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rsplit("@", 1)[1]
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    except ValueError:
        return "<an unreadable URL>"


# --- argument values -----------------------------------------------------------------------

def at_least(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number not below ``least``."""
    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value
    return whole_number


def local_time(text: str) -> str:
    """An argparse type: a local market time in ISO 8601 form, without a UTC offset."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a local time in ISO 8601 form: use YYYY-MM-DDTHH:MM, e.g. 2026-06-21T11:00") from None
    if parsed.tzinfo is not None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has a UTC offset: give the local market time without one, e.g. 2026-06-21T11:00 "
            "(its zone is --timezone)")
    return text


def timezone(text: str) -> str:
    """An argparse type: an IANA time zone name."""
    try:
        zone(text)
    except ZoneInfoNotFoundError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a known IANA time zone, e.g. America/Vancouver, Europe/Berlin or UTC") from None
    return text


_REGION = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


def region_id(text: str) -> str:
    """An argparse type: a region id, as MICROTE_REGION takes it."""
    if not _REGION.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a region id: 1 to 64 letters, digits, '_' or '-'")
    return text


def utc_day(text: str) -> str:
    """An argparse type: a day, YYYY-MM-DD."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            date.fromisoformat(text)
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a day: use YYYY-MM-DD, e.g. 2026-06-21")


def ledger_problem(url: str) -> str | None:
    """What is wrong with a ledger URL as written (None: nothing); no file or server is touched."""
    if url.startswith("sqlite:///"):
        if not url.removeprefix("sqlite:///"):
            return f"{url!r} names no file: use sqlite:///relative/path.sqlite or sqlite:////absolute/path.sqlite"
        return None
    if url.startswith(("postgresql://", "postgres://")):
        try:
            urllib.parse.urlsplit(url).port  # noqa: B018  # raises for a bad port
        except ValueError as exc:
            return f"{redact(url)!r} is not a PostgreSQL URL ({exc})"
        return None
    if url.startswith("memory://"):
        return ("memory:// keeps the ledger inside one process, and the services run as processes of their own: "
                "use sqlite:///path or postgresql://...")
    return f"{redact(url)!r} is not a ledger URL: use sqlite:///path or postgresql://user@host:port/database"


def ledger_url(text: str) -> str:
    """An argparse type: a ledger URL a command of several processes can share."""
    problem = ledger_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def check_sqlite(url: str, *, must_exist: bool, may_create_folder: bool = False, source: str = "--ledger") -> None:
    """A SQLite ledger's file: for reading it must exist; for writing its folder must (unless
    ``may_create_folder``: the default ledger's var/ is the project's own). ``source`` names
    where the URL came from, for the message."""
    problem = ledger_problem(url)
    if problem is not None:
        raise CliError(f"{source}: {problem}", code=2)
    if not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///"))
    if path.is_dir():
        raise CliError(f"the ledger {url} is a folder, not a file: name a file in it, e.g. {url.rstrip('/')}"
                       "/ledger.sqlite", code=2)
    if must_exist:
        if not path.is_file():
            raise CliError(f"no ledger at {url} (file {path.absolute()} does not exist): "
                           "give the ledger the run wrote, --ledger sqlite:///path or MICROTE_LEDGER_URL", code=2)
        return
    folder = path.parent
    if folder.is_dir():
        if not os.access(folder, os.W_OK):
            raise CliError(f"the ledger {url} cannot be written: folder {folder.absolute()} is not writable", code=2)
    elif not may_create_folder:
        raise CliError(f"the folder of the ledger {url} does not exist ({folder.absolute()}): "
                       "create it first, or name a file in an existing folder", code=2)


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Keeps libraries from logging what the command says itself, in one line."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


async def check_amqp(url: str) -> None:
    """RabbitMQ answers and takes the credentials of ``url`` (MICROTE_AMQP_URL)."""
    import aio_pika
    import aio_pika.exceptions

    if not url.startswith(("amqp://", "amqps://")):
        raise CliError(f"MICROTE_AMQP_URL {redact(url)!r} is not an AMQP URL: use "
                       "amqp://user:password@host:5672/ (or amqps://)", code=2)
    with _quiet("aiormq", "aio_pika"):
        try:
            connection = await asyncio.wait_for(aio_pika.connect(url, timeout=CHECK_TIMEOUT_S),
                                                timeout=CHECK_TIMEOUT_S + 1)
        except aio_pika.exceptions.ProbableAuthenticationError:
            user = urllib.parse.urlsplit(url).username or "guest"
            raise CliError(f"RabbitMQ at {redact(url)} refused user {user!r}: wrong user name or password "
                           "in MICROTE_AMQP_URL") from None
        except (TimeoutError, aio_pika.exceptions.AMQPConnectionError, OSError, ValueError) as exc:
            raise CliError(f"RabbitMQ is not reachable at {redact(url)} (MICROTE_AMQP_URL): "
                           f"{_one_line(str(exc)) or type(exc).__name__}") from None
        except aio_pika.exceptions.AMQPError as exc:  # e.g. a virtual host that is not there
            raise CliError(f"RabbitMQ at {redact(url)} refused the connection (MICROTE_AMQP_URL; does its "
                           f"virtual host exist?): {_one_line(str(exc)) or type(exc).__name__}") from None
        with contextlib.suppress(Exception):
            await connection.close()


SERVICES_WAIT_S = 120.0  # how long `microte simulate` waits for the region's services to consume


async def wait_for_services(url: str, region: str, timeout_s: float = SERVICES_WAIT_S) -> None:
    """Until the services that take a community's requests consume their queues, so that no
    join is published before anything can route it. A broker user that may not look at
    the services' queues (a participant's account) cannot tell, and goes ahead."""
    import aio_pika
    import aio_pika.exceptions
    import aiormq.exceptions

    from shared.runtime.topology import service_queue_name

    names = [service_queue_name(region, s) for s in ("order-intake", "meter-collector")]
    deadline, said = time.monotonic() + timeout_s, False
    with _quiet("aiormq", "aio_pika"):
        connection = await aio_pika.connect(url, timeout=CHECK_TIMEOUT_S)
        try:
            while True:
                idle = []
                for name in names:
                    channel = await connection.channel()
                    try:
                        queue = await channel.declare_queue(name, passive=True)
                        if not queue.declaration_result.consumer_count:
                            idle.append(name)
                    except aio_pika.exceptions.ChannelNotFoundEntity:
                        idle.append(name)
                    except aiormq.exceptions.ChannelAccessRefused:
                        return
                    finally:
                        if not channel.is_closed:
                            await channel.close()
                if not idle:
                    return
                if time.monotonic() > deadline:
                    raise CliError(f"region {region}'s services are not running: nothing consumes "
                                   f"{', '.join(idle)} after {timeout_s:.0f} s; start them first "
                                   "(microte serve <service>, or microte demo)")
                if not said:
                    print(f"microte: waiting for region {region}'s services ({', '.join(idle)})", file=sys.stderr)
                    said = True
                await asyncio.sleep(0.5)
        finally:
            await connection.close()


async def check_redis(url: str) -> None:
    """Redis answers a PING at ``url`` (MICROTE_REDIS_URL)."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    try:
        redis = Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_S, socket_timeout=CHECK_TIMEOUT_S)
    except ValueError as exc:
        raise CliError(f"MICROTE_REDIS_URL {redact(url)!r} is not a Redis URL: {exc}", code=2) from None
    try:
        await redis.ping()
    except (TimeoutError, RedisError, OSError) as exc:
        raise CliError(f"Redis is not reachable at {redact(url)} (MICROTE_REDIS_URL): "
                       f"{_one_line(str(exc)) or type(exc).__name__}") from None
    finally:
        await redis.aclose()


async def check_postgres(url: str) -> None:
    """A PostgreSQL ledger's database takes a connection (a SQLite URL is not checked here)."""
    if not url.startswith(("postgresql://", "postgres://")):
        return
    import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

    try:
        connection = await asyncio.wait_for(asyncpg.connect(url, timeout=CHECK_TIMEOUT_S),
                                            timeout=CHECK_TIMEOUT_S + 1)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        raise CliError(f"the ledger database {redact(url)} is not reachable: "
                       f"{_one_line(str(exc)) or type(exc).__name__}") from None
    await connection.close()


# --- the commands ----------------------------------------------------------------------------

def _serve(args: argparse.Namespace) -> int:
    from shared.runtime.service import serve

    settings = from_env()
    return serve(importlib.import_module(_APPS[args.service]).create(settings))


def _simulate(args: argparse.Namespace) -> int:
    from services.demo import progress_interval
    from services.participants.community import Community
    from services.participants.profiles import community

    settings = from_env()
    scenario = _scenario(args.scenario)
    if scenario is not None:
        _scenario_agrees(scenario, dict(os.environ))
    values = _resolved(args, scenario, ("participants", "seed", "aggregators", "requests"))
    homes = _scenario_households(scenario, args.participants, values["seed"])
    vars(args).update(values)
    homes = homes or community(args.participants, args.seed)
    if args.participant_url and (not args.aggregators or "{participant}" not in args.participant_url):
        raise CliError("--participant-url needs '{participant}' in it and --aggregators 1 or more (the "
                       "households act through an aggregator, each joining on its own account)", code=2)

    async def run() -> int:
        await check_amqp(settings.amqp_url)
        await wait_for_services(settings.amqp_url, settings.region, args.wait)
        tally = await Community(settings.amqp_url, settings.region, homes, settings.market.tariff.timezone,
                                max_rounds=args.rounds, aggregators=args.aggregators, requests=args.requests,
                                participant_url=args.participant_url,
                                progress_every=progress_interval(args.rounds) if args.rounds else 60).run()
        print(f"simulation done: {tally.rounds} rounds, answers {dict(tally.answers)}, "
              f"rejections {dict(tally.rejections)}"
              + (f", {tally.unanswered} requests never answered" if tally.unanswered else ""))
        return 1 if tally.unanswered else 0

    return asyncio.run(run())


def _scenario(path: str | None) -> Scenario | None:
    """The scenario file at ``path`` (None for none); a mistake in it ends the command."""
    from services.participants.scenario import ScenarioError, load

    if not path:
        return None
    try:
        return load(path)
    except ScenarioError as exc:
        raise CliError(str(exc), code=2) from None


def _scenario_agrees(scenario: Scenario, environ: dict[str, str]) -> None:
    """``simulate``: the services run with this shell's MICROTE_* settings, which must be the
    scenario's market and tariff (start and rounds too, where the shell sets them)."""
    market = scenario.market
    wanted = dict(scenario.tariff)
    for key, name in (("timezone", "MICROTE_TIMEZONE"), ("round_seconds", "MICROTE_ROUND_SECONDS"),
                      ("rule", "MICROTE_PRICING_RULE"), ("rounds", "MICROTE_ROUNDS")):
        if key in market and (name != "MICROTE_ROUNDS" or name in environ):
            wanted[name] = str(market[key])
    if "start" in market and "MICROTE_START_TIME" in environ:
        tz = market.get("timezone", environ.get("MICROTE_TIMEZONE", "UTC"))
        try:
            wanted["MICROTE_START_TIME"] = str(start_time(local_time(market["start"]), tz))
        except (argparse.ArgumentTypeError, ZoneInfoNotFoundError) as exc:
            raise CliError(f"scenario {scenario.path}: {exc}", code=2) from None
    try:
        running, scenario_says = from_env(environ), from_env({**environ, **wanted})
    except ZoneInfoNotFoundError:
        raise CliError(f"scenario {scenario.path}: market.timezone {market.get('timezone')!r} is not a known "
                       "IANA time zone", code=2) from None
    except SettingsError as exc:
        raise CliError(f"scenario {scenario.path}: {exc}", code=2) from None
    differences = record_differences(market_record(running.market), market_record(scenario_says.market))
    differences += [f"{name}: {a} -> {b}" for name, a, b in (
        ("MICROTE_START_TIME", running.start_time, scenario_says.start_time),
        ("MICROTE_ROUNDS", running.rounds, scenario_says.rounds)) if a != b]
    if differences:
        raise CliError(f"scenario {scenario.path} is not what the services run (their settings are this shell's "
                       f"MICROTE_* variables): {'; '.join(differences)} (the services' -> the scenario's); "
                       "export the scenario's settings for the services too, or run `microte demo SCENARIO`, "
                       "which starts them with it", code=2)


@contextlib.asynccontextmanager
async def _region_ledger(settings: Settings, rule: str | None) -> AsyncIterator[tuple[LedgerStore, Settings]]:
    """The region's ledger, open, and the settings the region ran with; a region the
    ledger does not have is an error that names those it has."""
    from shared.runtime.ledger import open_ledger

    await check_postgres(settings.ledger_url)
    store = open_ledger(settings.ledger_url)
    await store.open()
    try:
        regions = await store.regions()
        if settings.region not in regions:
            raise CliError(f"region {settings.region} has no run in the ledger {redact(settings.ledger_url)}; "
                           f"{_listed('its regions', regions) if regions else 'it has no region yet'}")
        yield store, await _as_recorded(store, settings, rule)
    finally:
        await store.close()


async def _report(settings: Settings, rule: str | None = None, html: Path | None = None) -> tuple[str, bool]:
    from services.report import report

    async with _region_ledger(settings, rule) as (store, recorded):
        text, ok = await report(store, recorded.market)
        if html is not None:
            from services.html_report import write_html_report

            try:
                await write_html_report(store, recorded.market, ok, html)
            except ImportError:
                raise CliError("the HTML report needs plotly: pip install 'microte[report]' "
                               "(make simulate and make test install it)", code=2) from None
            text += f"\n  HTML report: {html}"
        return text, ok


async def _export(settings: Settings, folder: Path, fmt: str) -> list[Path]:
    from services.export import export, write

    async with _region_ledger(settings, None) as (store, recorded):
        done = await export(store, recorded.market)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise CliError("--format parquet needs pyarrow: pip install 'microte[parquet]' "
                           "(make simulate and make test install it)", code=2) from None
    return write(done, folder, fmt)


def _export_cmd(args: argparse.Namespace) -> int:
    settings = from_env(_ledger_env(args))
    check_sqlite(settings.ledger_url, must_exist=True, source=_ledger_source(args))
    folder = Path(args.out or f"var/exports/{settings.region}")
    for path in asyncio.run(_export(settings, folder, args.format)):
        print(path)
    return 0


async def _as_recorded(store: LedgerStore, settings: Settings, rule: str | None) -> Settings:
    """The settings the region ran with, as its ledger keeps them (whatever the environment
    says); a --rule that contradicts them is an error."""
    from shared.runtime.region_settings import as_recorded

    recorded, kept = await as_recorded(store, settings)
    if kept and rule is not None and str(recorded.market.rule) != rule:
        raise CliError(f"region {settings.region} ran with the pricing rule {recorded.market.rule}, not {rule}: "
                       "leave out --rule (the ledger keeps the region's settings)", code=2)
    return recorded


def _listed(what: str, names: list[str], most: int = 20) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return f"{what}: {', '.join(names[:most])}{more}"


def _ledger_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment of a command that reads a region's ledger: --ledger, --region and
    --rule over the MICROTE_* variables."""
    env = dict(os.environ)
    if args.ledger:
        env["MICROTE_LEDGER_URL"] = args.ledger
    if args.region:
        env["MICROTE_REGION"] = args.region
    if args.rule:
        env["MICROTE_PRICING_RULE"] = args.rule
    return env


def _ledger_source(args: argparse.Namespace) -> str:
    return "--ledger" if args.ledger else "MICROTE_LEDGER_URL"


def _report_cmd(args: argparse.Namespace) -> int:
    settings = from_env(_ledger_env(args))
    check_sqlite(settings.ledger_url, must_exist=True, source=_ledger_source(args))
    text, ok = asyncio.run(_report(settings, args.rule, Path(args.html) if args.html else None))
    print(text)
    return 0 if ok else 1


async def _replay(settings: Settings, slot_start: int, rule: str | None = None) -> str:
    from shared.runtime.ledger import open_ledger
    from shared.runtime.replay import replay_slot

    await check_postgres(settings.ledger_url)
    store = open_ledger(settings.ledger_url)
    await store.open()
    try:
        done = await replay_slot(store, (await _as_recorded(store, settings, rule)).market, slot_start)
    finally:
        await store.close()
    return (f"replayed slot {done.slot.start}-{done.slot.end} of region {settings.region}: "
            f"{len(done.settlements)} settlements, {len(done.entries)} entries written")


def _replay_cmd(args: argparse.Namespace) -> int:
    from shared.runtime.replay import ReplayRefused

    settings = from_env(_ledger_env(args))
    check_sqlite(settings.ledger_url, must_exist=True, source=_ledger_source(args))
    try:
        print(asyncio.run(_replay(settings, args.slot, args.rule)))
    except ReplayRefused as exc:
        print(f"microte: {exc}", file=sys.stderr)
        return 1
    return 0


async def _bad_input(settings: Settings, day: str) -> list[tuple[str, int]]:
    from redis.asyncio import Redis

    from shared.runtime.state import RegionState

    await check_redis(settings.redis_url)
    redis = Redis.from_url(settings.redis_url)
    try:
        return await RegionState(redis, settings.region).bad_input(day)
    finally:
        await redis.aclose()


def _bad_input_cmd(args: argparse.Namespace) -> int:
    env = {**os.environ, "MICROTE_REGION": args.region}
    day = args.day or time.strftime("%Y-%m-%d", time.gmtime())
    found = asyncio.run(_bad_input(from_env(env), day))
    print(f"bad input to region {args.region} on {day} (UTC), by sender:" if found else
          f"no bad input to region {args.region} on {day} (UTC)")
    for sender, count in found:
        print(f"  {count:>9}  {sender}")
    return 0


_MANAGEMENT_URL = "http://guest:guest@127.0.0.1:15672"


async def _membership(settings: Settings, ids: list[str]) -> tuple[set[str], dict[str, str]]:
    from redis.asyncio import Redis

    from shared.runtime.state import RegionState

    redis = Redis.from_url(settings.redis_url)
    try:
        state = RegionState(redis, settings.region)
        members = {pid for pid in ids if await state.is_member(pid)}
        return members, await state.agents()
    finally:
        await redis.aclose()


def _participants_cmd(args: argparse.Namespace) -> int:
    from services.participants import accounts as a

    if (args.action == "list") == (args.participant is not None):
        raise CliError("participants add and remove need a participant id; list takes none "
                       "(see: microte participants --help)", code=2)
    settings = from_env({**os.environ, "MICROTE_REGION": args.region})
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(settings.amqp_url).path.lstrip("/")) or "/"
    admin = a.Management(args.management_url, vhost)
    try:
        if args.action == "add":
            added = a.add(admin, settings.amqp_url, args.region, args.participant,
                          kind="aggregator" if args.aggregator else "household", agent=args.agent,
                          password=args.password)
            print(f"{added.account.kind} {args.participant} is an account of region {args.region}"
                  + (f", acting through agent {added.agent}" if added.agent else ""))
            if added.password is not None and args.password is None:
                print(f"password: {added.password}")
            return 0
        if args.action == "remove":
            closed = a.remove(admin, settings.amqp_url, args.region, args.participant)
            print(f"{args.participant} removed from region {args.region}: left the market, "
                  f"{closed} connection(s) closed, queue and user deleted")
            return 0
        found = a.accounts(admin, args.region)
        try:
            members, agents = asyncio.run(_membership(settings, [x.participant_id for x in found]))
        except OSError as exc:
            print(f"microte: Redis is not reachable ({exc}); membership is not shown", file=sys.stderr)
            members, agents = set(), {}
        print(f"{'participant':<24} {'kind':<11} {'member':<7} agent")
        for x in found:
            print(f"{x.participant_id:<24} {x.kind:<11} {'yes' if x.participant_id in members else 'no':<7} "
                  f"{agents.get(x.participant_id, '')}")
        print(f"{len(found)} account(s) in region {args.region}")
        return 0
    except a.AccountError as exc:
        print(f"microte: {exc}", file=sys.stderr)
        return 1


def start_time(local: str, timezone: str) -> int:
    """UNIX seconds of a local market time (``YYYY-MM-DDTHH:MM``) in ``timezone``."""
    return int(datetime.fromisoformat(local).replace(tzinfo=zone(timezone)).timestamp())


def demo_env(args: argparse.Namespace, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The services' environment for a demo: the MICROTE_* variables, then the options."""
    environ = dict(os.environ) if environ is None else environ
    start = start_time(args.start, args.timezone)
    env = {
        **{k: v for k, v in environ.items() if k.startswith("MICROTE_")},
        **getattr(args, "scenario_env", {}),  # the scenario's tariff
        "MICROTE_REGION": args.region or f"demo{int(time.time())}",
        "MICROTE_TIMEZONE": args.timezone,
        "MICROTE_CLOCK_MODE": "simulation",
        "MICROTE_ROUNDS": str(args.rounds),
        "MICROTE_START_TIME": str(start),
        "MICROTE_ROUND_SECONDS": str(args.round_seconds),
        "MICROTE_LEDGER_URL": args.ledger or environ.get("MICROTE_LEDGER_URL", DEFAULT_LEDGER),
    }
    if args.rule:
        env["MICROTE_PRICING_RULE"] = args.rule
    return env


async def check_new_region(ledger_url: str, region: str) -> None:
    """A demo's region must be new to its ledger: the services would take up the old run
    where its round state left off, and the community would wait for rounds that never come."""
    from shared.runtime.ledger import open_ledger

    store = open_ledger(ledger_url)
    await store.open()
    try:
        known = region in await store.regions()
    finally:
        await store.close()
    if known:
        raise CliError(f"region {region} already has a run in the ledger {redact(ledger_url)}: a demo needs a "
                       "region of its own (leave out --region for a fresh one, or name another)", code=2)


def _demo(args: argparse.Namespace) -> int:
    from services.demo import run_demo

    args = with_scenario(args)
    env = demo_env(args)
    settings = _run_settings(args, env)

    async def run() -> int:
        await _check_servers(settings)
        if args.region:
            await check_new_region(settings.ledger_url, settings.region)
        return await run_demo(env, participants=args.participants, seed=args.seed,
                              log_dir=Path("var/logs") / settings.region, aggregators=args.aggregators,
                              requests=args.requests, homes=args.homes, about=args.about)

    return _running(run, f"region {settings.region} in the ledger {redact(settings.ledger_url)} "
                         f"(microte report --region {settings.region} --ledger {redact(settings.ledger_url)})")


def _run_settings(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    """The settings of a run that starts the services (``demo``, ``compare``), every one
    checked before anything starts."""
    settings = from_env(env)
    if settings.service_key:  # given (else the run makes one): each service would refuse a weak one
        from shared.runtime.trust import Signer

        Signer(settings.service_key)
    check_sqlite(settings.ledger_url, must_exist=False, may_create_folder=settings.ledger_url == DEFAULT_LEDGER,
                 source=_ledger_source(args))
    return settings


async def _check_servers(settings: Settings) -> None:
    await check_amqp(settings.amqp_url)
    await check_redis(settings.redis_url)
    await check_postgres(settings.ledger_url)


def _running(run: Callable[[], Coroutine[Any, Any, int]], where: str) -> int:
    """Runs the services and a community (``demo``, ``compare``) until done; Ctrl-C and
    SIGTERM (a supervisor, ``timeout``) stop them, services last, without a traceback, and
    say where the partial run is."""
    from services.demo import ServicesFailed

    async def main() -> int:
        main_task = asyncio.current_task()
        assert main_task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
        return await run()

    try:
        return asyncio.run(main())
    except ServicesFailed as exc:
        raise CliError(str(exc)) from exc
    except KeyboardInterrupt:
        print(f"microte: interrupted; services stopped; what ran so far is {where}", file=sys.stderr)
        return INTERRUPTED
    except asyncio.CancelledError:
        print(f"microte: terminated; services stopped; what ran so far is {where}", file=sys.stderr)
        return TERMINATED


def compare_runs(args: argparse.Namespace, base: str) -> list[tuple[str, str, str, str | None]]:
    """The runs of ``compare``: (label, rule, region, strategy) for each rule and each strategy
    (None: as the scenario or the default community has it). The label names what differs."""
    strategies: list[str | None] = list(args.strategies or [None])
    rules = args.rules or ([args.rule] if args.rule else list(_RULES))  # the option's, the scenario's, all
    runs = []
    for rule in rules:
        for i, strategy in enumerate(strategies):
            named = [_strategy_label(strategy, i)] if args.strategies else []
            label = ([rule] if len(rules) > 1 or not args.strategies else []) + named
            runs.append((" / ".join(label), rule, "-".join([base, rule, *named]), strategy))
    return runs


def _strategy_label(strategy: str | None, i: int) -> str:
    """A built-in strategy's name; a plug-in's class name (with its place, for a region id)."""
    if strategy is None or _REGION.match(strategy):
        return (strategy or "as-given")[:24]
    name = re.sub(r"[^A-Za-z0-9_]", "", strategy.rpartition(":")[2])[:20] or "plugin"
    return f"{name}{i + 1}"  # short enough for a region id of at most 64


def _compare(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from services.demo import run_demo
    from services.html_report import write_comparison
    from services.participants.profiles import community

    args = with_scenario(args)
    base = f"cmp{int(time.time())}"
    runs = [(label, demo_env(argparse.Namespace(**{**vars(args), "rule": rule, "region": region})), strategy)
            for label, rule, region, strategy in compare_runs(args, base)]
    settings = _run_settings(args, runs[0][1])
    for _, env, _ in runs[1:]:  # every run's settings, before the first starts
        _run_settings(args, env)
    page = Path(args.out or f"var/reports/compare-{base}.html")
    homes = args.homes or community(args.participants, args.seed)

    async def run() -> int:
        await _check_servers(settings)
        failed = 0
        for label, env, strategy in runs:
            print(f"microte compare: {label}", file=sys.stderr)
            mine = homes if strategy is None else [replace(h, strategy=strategy) for h in homes]
            failed |= await run_demo(env, participants=len(mine), seed=args.seed,
                                     log_dir=Path("var/logs") / from_env(env).region, aggregators=args.aggregators,
                                     requests=args.requests, homes=mine, about=args.about)
        try:
            await write_comparison(settings.ledger_url, [from_env(env).market for _, env, _ in runs], page,
                                   labels=[label for label, _, _ in runs])
        except ImportError:
            raise CliError("the comparison page needs plotly: pip install 'microte[report]'", code=2) from None
        print(f"comparison of {', '.join(label for label, _, _ in runs)}: {page}")
        return failed

    return _running(run, f"regions {base}-<rule> in the ledger {redact(settings.ledger_url)}")


def strategy_list(text: str) -> list[str]:
    """An argparse type: strategies, comma-separated, each once (built-in names or plug-ins)."""
    from services.participants.strategies import strategy_class

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct strategies, comma-separated")
    for name in names:
        try:
            strategy_class(name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return names


# The community and market time of ``demo`` and ``compare`` when neither the command line
# nor a scenario file gives them.
COMMUNITY_DEFAULTS: dict[str, Any] = {"participants": 20, "rounds": 1440, "round_seconds": 60, "aggregators": 1,
                                      "requests": "round", "seed": 7, "start": "2026-06-21T00:00",
                                      "timezone": "America/Vancouver"}


def _community_options(parser: argparse.ArgumentParser) -> None:
    """The simulated community and its market time, for ``demo`` and ``compare``: each option
    overrides the scenario file's value, which overrides the default (see ``with_scenario``)."""
    d = COMMUNITY_DEFAULTS
    parser.add_argument("scenario", nargs="?", metavar="SCENARIO",
                        help="a scenario file (TOML: the market, the tariff and the households; "
                             "docs/scenarios.md, examples in scenarios/); the options below override it")
    parser.add_argument("--participants", type=at_least(1),
                        help=f"simulated households (default: {d['participants']})")
    parser.add_argument("--rounds", type=at_least(1),
                        help=f"rounds to simulate (default: {d['rounds']}; 1440 x 60 s = one day)")
    parser.add_argument("--round-seconds", type=at_least(1),
                        help=f"length of a round in market time, seconds (default: {d['round_seconds']})")
    parser.add_argument("--aggregators", type=at_least(0),
                        help="the households act through this many aggregators, each submitting one batch a "
                             f"round for all of its households (default: {d['aggregators']}, the community as one "
                             "aggregator; 0: every household sends its own requests, see --requests)")
    _requests_option(parser, None)
    parser.add_argument("--seed", type=int, help=f"seed of the households' profiles (default: {d['seed']})")
    parser.add_argument("--start", type=local_time, metavar="YYYY-MM-DDTHH:MM",
                        help=f"local market time of the first round, ISO 8601 (default: {d['start']})")
    parser.add_argument("--timezone", type=timezone, metavar="ZONE",
                        help=f"IANA time zone of the market (default: {d['timezone']})")


def _requests_option(parser: argparse.ArgumentParser, default: str | None = "round") -> None:
    parser.add_argument("--requests", choices=REQUESTS, default=default,
                        help="with --aggregators 0, how each household sends its round: 'round', its reading, "
                             "orders and finish in one request of its own (a batch of one); 'single', one "
                             f"message for each (default: {default or COMMUNITY_DEFAULTS['requests']})")


def with_scenario(args: argparse.Namespace) -> argparse.Namespace:
    """The options of a ``demo`` or ``compare`` run: each from the command line if given, else
    from the scenario file, else its default; and the scenario's households and tariff."""
    scenario = _scenario(args.scenario)
    values = _resolved(args, scenario, tuple(COMMUNITY_DEFAULTS))
    rule = args.rule
    if rule is None and scenario and "rule" in scenario.market:
        rule = scenario.market["rule"]
        if rule not in _RULES:
            raise CliError(f"scenario {args.scenario}: market.rule: one of {', '.join(_RULES)}, not {rule!r}", code=2)
    homes = _scenario_households(scenario, args.participants, values["seed"])
    if homes:
        values["participants"] = len(homes)
    return argparse.Namespace(**{**vars(args), **values, "rule": rule, "homes": homes,
                                 "scenario_env": scenario.tariff if scenario else {},
                                 "about": (scenario.name, scenario.description) if scenario else ("", "")})


def _resolved(args: argparse.Namespace, scenario: Scenario | None, keys: tuple[str, ...]) -> dict[str, Any]:
    """Each of ``keys``: the option if given, else the scenario's (checked as the option
    would be), else its default (``COMMUNITY_DEFAULTS``)."""
    given = {**scenario.market, **scenario.community} if scenario else {}
    checks: dict[str, Callable[[str], Any]] = {"start": local_time, "timezone": timezone}
    values: dict[str, Any] = {}
    for key in keys:
        value = getattr(args, key)
        if value is None and key in given:
            try:
                value = checks[key](given[key]) if key in checks else given[key]
            except argparse.ArgumentTypeError as exc:
                raise CliError(f"scenario {args.scenario}: {key}: {exc}", code=2) from None
        values[key] = COMMUNITY_DEFAULTS[key] if value is None else value
    return values


def _scenario_households(scenario: Scenario | None, participants: int | None, seed: int) -> list[Household] | None:
    """The scenario's households, drawn with ``seed``; None when it names none. A
    ``--participants`` option beside them is refused: both would say how many there are."""
    if scenario is None or not scenario.groups:
        return None
    if participants is not None:
        raise CliError(f"--participants and the households of scenario {scenario.path} both say how many "
                       "households there are: leave out one", code=2)
    return scenario.households(seed)


def rule_list(text: str) -> list[str]:
    """An argparse type: pricing rules, comma-separated, each once."""
    rules = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rules if r not in _RULES]
    if unknown or not rules or len(set(rules)) != len(rules):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct pricing rules, comma-separated, from "
                                         f"{', '.join(_RULES)}")
    return rules


def _ledger_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--ledger", type=ledger_url, metavar="URL",
                        help=f"postgresql://user@host:port/database or sqlite:///path: {what} "
                             f"(default: MICROTE_LEDGER_URL, else {DEFAULT_LEDGER})")


def _rule_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--rule", choices=_RULES, help=f"{what} (default: MICROTE_PRICING_RULE, else midpoint)")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="microte", description=__doc__, epilog=_ENVIRONMENT,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                     help="print microte's version and exit")
    sub = top.add_subparsers(dest="command", required=True, metavar="command")
    serve = sub.add_parser("serve", help="run one service (settings from MICROTE_* variables)",
                           epilog=_ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("service", choices=sorted(_APPS), help="the service to run")
    serve.set_defaults(run=_serve)

    sim = sub.add_parser("simulate", help="run a simulated community against running services",
                         epilog=_ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    sim.add_argument("scenario", nargs="?", metavar="SCENARIO",
                     help="a scenario file (docs/scenarios.md): its households and community; its market and "
                          "tariff must be what the services run with (this shell's MICROTE_* variables)")
    sim.add_argument("--participants", type=at_least(1),
                     help=f"simulated households (default: {COMMUNITY_DEFAULTS['participants']})")
    sim.add_argument("--seed", type=int,
                     help=f"seed of the households' profiles (default: {COMMUNITY_DEFAULTS['seed']})")
    sim.add_argument("--rounds", type=at_least(0), default=0,
                     help="leave after this many rounds (default: %(default)s, when the clock's last round "
                          "is recorded)")
    sim.add_argument("--aggregators", type=at_least(0),
                     help="aggregators submitting one batch a round for their households "
                          f"(default: {COMMUNITY_DEFAULTS['aggregators']}; 0: each household its own requests, "
                          "see --requests)")
    _requests_option(sim, None)
    sim.add_argument("--participant-url", metavar="TEMPLATE",
                     default=os.environ.get("MICROTE_PARTICIPANT_AMQP_URL", ""),
                     help="broker identity: each household and aggregator signs in as itself, with this URL, "
                          "'{participant}' standing for its id, e.g. "
                          "amqp://{participant}:secret-{participant}@host:5672/ (default: "
                          "MICROTE_PARTICIPANT_AMQP_URL, else all on MICROTE_AMQP_URL); needs "
                          "--aggregators 1 or more and an account each (microte participants add)")
    sim.add_argument("--wait", type=at_least(0), default=int(SERVICES_WAIT_S), metavar="SECONDS",
                     help="how long to wait for the region's services to run (default: %(default)s)")
    sim.set_defaults(run=_simulate)

    demo = sub.add_parser("demo", help="start the five services, simulate a community, report",
                          description="Start the five services as processes, let a simulated community trade\n"
                                      "through them, then report from the ledger. Ctrl-C stops it all.",
                          epilog=_ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    _community_options(demo)
    _rule_option(demo, "how the double auction prices a match")
    _ledger_option(demo, "where the services record the run (a SQLite file's folder must exist)")
    demo.add_argument("--region", type=region_id,
                      help="region id (default: a fresh one per run, demo<UNIX time>)")
    demo.set_defaults(run=_demo)

    cmp = sub.add_parser("compare", help="the same community under several pricing rules, one run each, and "
                         "one HTML page that compares them",
                         description="Run the demo once per pricing rule, with the same community, seed and market\n"
                                     "time, each in a region of its own, then write one HTML page with the key\n"
                                     "figures side by side and the price and volume series overlaid.",
                         epilog=_ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    _community_options(cmp)
    cmp.add_argument("--rules", type=rule_list, metavar="RULE,RULE",
                     help=f"the pricing rules to compare (default: the scenario's rule, else {','.join(_RULES)})")
    cmp.add_argument("--strategies", type=strategy_list, metavar="STRATEGY,STRATEGY",
                     help="also compare these strategies, every household trading with each in turn: baseline, "
                          "zic, bandit or a plug-in (docs/scenarios.md); one run per rule and strategy, so give "
                          "one --rules to compare strategies alone (default: none, the households' own)")
    _ledger_option(cmp, "where the services record the runs (a SQLite file's folder must exist)")
    cmp.add_argument("--out", metavar="FILE", help="the comparison page (default: var/reports/compare-<time>.html)")
    cmp.set_defaults(run=_compare, rule=None, region=None)

    rep = sub.add_parser("report", help="report on a region's ledger",
                         epilog=_ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    _ledger_option(rep, "the ledger the run wrote")
    rep.add_argument("--region", type=region_id, help="the region (default: MICROTE_REGION, else r1)")
    _rule_option(rep, "the pricing rule the region ran with, to re-derive its settlements")
    rep.add_argument("--html", metavar="FILE", help="also write the HTML report (key figures and plots, one file "
                     "that opens offline) to FILE (default: none)")
    rep.set_defaults(run=_report_cmd)

    exp = sub.add_parser("export", help="a region's per-slot series and per-household summaries, as CSV or "
                         "Parquet files (columns: docs/exports.md)",
                         epilog=_ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    _ledger_option(exp, "the ledger the run wrote")
    exp.add_argument("--region", type=region_id, help="the region (default: MICROTE_REGION, else r1)")
    exp.add_argument("--format", choices=("csv", "parquet"), default="csv", help="file format (default: %(default)s)")
    exp.add_argument("--out", metavar="FOLDER",
                     help="where slots.<format> and households.<format> go (default: var/exports/<region>)")
    exp.set_defaults(run=_export_cmd, rule=None)

    replay = sub.add_parser("replay-slot", help="clear and reconcile a held slot from the ledger's records "
                            "(market settings from MICROTE_* variables, as the region's services have them)",
                            epilog=_ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    replay.add_argument("--region", type=region_id, required=True, help="the region (required)")
    replay.add_argument("--slot", type=int, required=True, help="the held slot's start, UNIX seconds (required)")
    _ledger_option(replay, "the region's ledger")
    _rule_option(replay, "the pricing rule the region runs with")
    replay.set_defaults(run=_replay_cmd)

    bad = sub.add_parser("bad-input", help="who sent malformed, forged or misrouted messages to a region, per day "
                         "(senders: the broker user where the message names one, else the participant it claims)")
    bad.add_argument("--region", type=region_id, required=True, help="the region (required)")
    bad.add_argument("--day", type=utc_day, help="YYYY-MM-DD, UTC (default: today); kept 8 days")
    bad.set_defaults(run=_bad_input_cmd)

    parts = sub.add_parser("participants", help="broker accounts of a region's households and aggregators, "
                           "through RabbitMQ's management API (for MICROTE_IDENTITY=broker_user)")
    parts.add_argument("action", choices=("add", "remove", "list"), help="what to do")
    parts.add_argument("participant", nargs="?", help="participant id (add, remove)")
    parts.add_argument("--region", required=True, help="the region (required)")
    parts.add_argument("--aggregator", action="store_true",
                       help="add: an aggregator, not a household (default: a household)")
    parts.add_argument("--agent", help="add: the aggregator that may act for this household (it is joined "
                       "to the market naming it; default: none)")
    parts.add_argument("--password", help="add: its password (default: a new random one, printed once)")
    parts.add_argument("--management-url", default=os.environ.get("MICROTE_MANAGEMENT_URL", _MANAGEMENT_URL),
                       help="RabbitMQ management API with an administrator's credentials "
                            f"(default: MICROTE_MANAGEMENT_URL, else {_MANAGEMENT_URL})")
    parts.set_defaults(run=_participants_cmd)
    return top


def main(argv: list[str] | None = None) -> int:
    top = parser()
    try:
        args = top.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a bad argument (said in one line)
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    try:
        return int(args.run(args))
    except (SettingsError, TrustError) as exc:
        print(f"microte: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"microte: {_one_line(str(exc))}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("microte: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:
        from shared.runtime.outages import is_outage

        if not is_outage(exc):
            raise
        print(f"microte: a server went away: {type(exc).__name__}: {_one_line(str(exc))[:300]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
