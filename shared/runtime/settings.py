"""Typed settings, read from the environment once at start and passed down.

Nothing else in microte reads ``os.environ``. Defaults point at loopback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TypeVar

from shared.market import PricingRule, Schedule, Tariff, check_price_cap, price_to_ticks
from shared.market.numbers import check_spend_limit
from shared.runtime.trust import service_users as parse_users

_REGION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class MarketSettings:
    """What every service of one region must agree on."""

    region: str = "r1"
    schedule: Schedule = field(default_factory=Schedule)
    tariff: Tariff = field(default_factory=Tariff)
    rule: PricingRule = PricingRule.MIDPOINT
    price_cap: Decimal = Decimal("10")
    reading_deadline_s: int = 120
    # A reading that arrives after its slot was reconciled, within this many seconds of the
    # slot's end (market time), is a true-up: its adjustment is appended. 0: none; a slot's
    # reconciliation is final at once.
    true_up_s: int = 0
    member_timeout_s: int = 300
    # What one participant may send (order-intake): orders per slot (cancelled ones count),
    # and orders and cancels per second with a burst (0 per second: no rate limit).
    max_orders_per_slot: int = 100
    max_requests_per_s: Decimal = Decimal(0)
    request_burst: int = 0  # 0: twice the rate per second, at least 1
    # The largest connection a member may register, in W (0: no cap). A member that registers
    # none is held to these; one that registers more is held to these too.
    max_import_w: int = 0
    max_export_w: int = 0
    # What a member's bids for the slots of one local day may cost together, at their limit
    # prices, in $ (0: no limit); a cancel gives its part back.
    max_spend_per_day: Decimal = Decimal(0)


@dataclass(frozen=True)
class Settings:
    market: MarketSettings = field(default_factory=MarketSettings)
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    redis_url: str = "redis://127.0.0.1:6379/0"
    ledger_url: str = "sqlite:///var/ledger.sqlite"
    http_host: str = "127.0.0.1"
    http_port: int = 0  # 0: the service's own default
    log_level: str = "info"
    clock_mode: str = "simulation"
    round_timeout_s: float = 30.0
    start_time: int = 0  # simulation: market time of the first round (0: the current round)
    rounds: int = 0  # simulation: stop after this many rounds (0: never)
    min_members: int = 0  # simulation: start a round only once this many members are active
    duplicate_delivery: bool = False  # test aid: publish every message twice
    # "message": a request's participant_id is taken as sent (simulation, trusted networks);
    # "broker_user": it must equal the AMQP user_id, which RabbitMQ checks against the
    # connection's credentials (docs/market.md section 3).
    identity: str = "message"
    # Facts and answers are acted on only when signed with this key (shared.runtime.trust)
    # and, if service_users is set, only from those AMQP users.
    service_key: str = ""
    service_users: frozenset[str] = frozenset()
    max_request_bytes: int = 1 << 20  # a request body larger than this is refused unread
    # order-intake: the most requests of one sender a pass takes while others' wait, so that a
    # flood is held back behind the others (0: every request in arrival order)
    fair_share: int = 8
    dead_letter_max: int = 100_000  # the dead-letter queue keeps at most this many messages ...
    dead_letter_ttl_s: int = 7 * 86400  # ... for at most this long

    @property
    def region(self) -> str:
        return self.market.region


def _identity(value: str) -> str:
    if value not in ("message", "broker_user"):
        raise SettingsError("MICROTE_IDENTITY must be 'message' or 'broker_user'")
    return value


def _get(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(f"MICROTE_{name}", default)


def _decimal(env: Mapping[str, str], name: str, default: str) -> Decimal:
    text = _get(env, name, default)
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise SettingsError(f"MICROTE_{name} {text!r} is not a number") from None
    if not value.is_finite():
        raise SettingsError(f"MICROTE_{name} {text!r} is not a finite number")
    return value


_N = TypeVar("_N", int, Decimal)


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    value = int(_get(env, name, str(default)))
    if value <= 0:
        raise SettingsError(f"MICROTE_{name} must be a positive integer, got {value}")
    return value


def _spend_limit(value: Decimal) -> Decimal:
    try:
        check_spend_limit(value)
    except ValueError as exc:
        raise SettingsError(f"MICROTE_MAX_SPEND_PER_DAY: {exc}") from exc
    return value


def _not_negative(value: _N, name: str) -> _N:
    if value < 0:
        raise SettingsError(f"MICROTE_{name} must not be negative, got {value}")
    return value


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    e = os.environ if env is None else env
    try:
        region = _get(e, "REGION", "r1")
        if not _REGION.match(region):
            raise SettingsError(f"MICROTE_REGION {region!r} must match {_REGION.pattern}")
        schedule = Schedule(
            duration=int(_get(e, "ROUND_SECONDS", "60")),
            close_steps=int(_get(e, "CLOSE_STEPS", "2")),
            horizon_s=int(_get(e, "HORIZON_S", "86400")),
        )
        tariff = Tariff(
            price=_decimal(e, "GRID_PRICE", "0.069"),
            fee_ratio=_decimal(e, "FEE_RATIO", "1.1"),
            timezone=_get(e, "TIMEZONE", "UTC"),
            time_of_use=parse_time_of_use(_get(e, "TIME_OF_USE", "")),
        )
        market = MarketSettings(
            region=region,
            schedule=schedule,
            tariff=tariff,
            rule=PricingRule(_get(e, "PRICING_RULE", "midpoint")),
            price_cap=check_price_cap(_decimal(e, "PRICE_CAP", "10")),
            reading_deadline_s=int(_get(e, "READING_DEADLINE_S", "120")),
            true_up_s=_not_negative(int(_get(e, "TRUE_UP_S", "0")), "TRUE_UP_S"),
            member_timeout_s=int(_get(e, "MEMBER_TIMEOUT_S", "300")),
            max_orders_per_slot=_positive(e, "MAX_ORDERS_PER_SLOT", 100),
            max_requests_per_s=_not_negative(_decimal(e, "MAX_REQUESTS_PER_S", "0"), "MAX_REQUESTS_PER_S"),
            request_burst=_not_negative(int(_get(e, "REQUEST_BURST", "0")), "REQUEST_BURST"),
            max_import_w=_not_negative(int(_get(e, "MAX_IMPORT_W", "0")), "MAX_IMPORT_W"),
            max_export_w=_not_negative(int(_get(e, "MAX_EXPORT_W", "0")), "MAX_EXPORT_W"),
            max_spend_per_day=_spend_limit(_decimal(e, "MAX_SPEND_PER_DAY", "0")),
        )
        if 0 < market.true_up_s <= market.reading_deadline_s:
            # A slot is reconciled by its reading deadline at the latest: a window that
            # ends before it would never take a late reading.
            raise SettingsError(f"MICROTE_TRUE_UP_S ({market.true_up_s}) must be 0 or longer than "
                                f"MICROTE_READING_DEADLINE_S ({market.reading_deadline_s})")
        mode = _get(e, "CLOCK_MODE", "simulation")
        if mode not in ("simulation", "realtime"):
            raise SettingsError("MICROTE_CLOCK_MODE must be 'simulation' or 'realtime'")
        return Settings(
            market=market,
            amqp_url=_get(e, "AMQP_URL", Settings.amqp_url),
            redis_url=_get(e, "REDIS_URL", Settings.redis_url),
            ledger_url=_get(e, "LEDGER_URL", Settings.ledger_url),
            http_host=_get(e, "HTTP_HOST", Settings.http_host),
            http_port=int(_get(e, "HTTP_PORT", "0")),
            log_level=_get(e, "LOG_LEVEL", "info"),
            clock_mode=mode,
            round_timeout_s=float(_get(e, "ROUND_TIMEOUT_S", "30")),
            start_time=int(_get(e, "START_TIME", "0")),
            rounds=int(_get(e, "ROUNDS", "0")),
            min_members=int(_get(e, "MIN_MEMBERS", "0")),
            duplicate_delivery=_get(e, "DUPLICATE_DELIVERY", "0") == "1",
            identity=_identity(_get(e, "IDENTITY", "message")),
            service_key=_get(e, "SERVICE_KEY", ""),
            service_users=parse_users(_get(e, "SERVICE_USERS", "")),
            max_request_bytes=_positive(e, "MAX_REQUEST_BYTES", 1 << 20),
            fair_share=_not_negative(int(_get(e, "FAIR_SHARE", "8")), "FAIR_SHARE"),
            dead_letter_max=_positive(e, "DEAD_LETTER_MAX", 100_000),
            dead_letter_ttl_s=_positive(e, "DEAD_LETTER_TTL_S", 7 * 86400),
        )
    except (ValueError, ArithmeticError) as exc:
        raise SettingsError(f"bad microte setting: {exc}") from exc


# --- the market settings a region's ledger keeps --------------------------------------
# What decides a slot's ledger entries, so that the report, the audit and a replay
# re-derive the slots with the settings the region ran with, never with whatever the
# environment of the command says. Stored once, by the region's first ledger-writer.

RECORDED = ("PRICING_RULE", "ROUND_SECONDS", "CLOSE_STEPS", "HORIZON_S", "GRID_PRICE", "FEE_RATIO", "TIMEZONE",
            "TIME_OF_USE", "PRICE_CAP")
# What a record made before a setting was kept means for it: no time-of-use table.
_UNRECORDED = {"MICROTE_TIME_OF_USE": ""}


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def market_record(m: MarketSettings) -> dict[str, str]:
    """The settings of ``RECORDED``, as MICROTE_* values in a canonical form."""
    return {
        "MICROTE_PRICING_RULE": str(m.rule),
        "MICROTE_ROUND_SECONDS": str(m.schedule.duration),
        "MICROTE_CLOSE_STEPS": str(m.schedule.close_steps),
        "MICROTE_HORIZON_S": str(m.schedule.horizon_s),
        "MICROTE_GRID_PRICE": _plain(m.tariff.price),
        "MICROTE_FEE_RATIO": _plain(m.tariff.fee_ratio),
        "MICROTE_TIMEZONE": m.tariff.timezone,
        "MICROTE_TIME_OF_USE": format_time_of_use(m.tariff.time_of_use),
        "MICROTE_PRICE_CAP": _plain(m.price_cap),
    }


def with_record(settings: Settings, record: Mapping[str, str]) -> Settings:
    """``settings`` with the market settings a region's ledger keeps in place of its own."""
    unknown = set(record) - {f"MICROTE_{name}" for name in RECORDED}
    if unknown:
        raise SettingsError(f"the ledger keeps market settings this version does not know: {sorted(unknown)}")
    env = {**market_record(settings.market), **_UNRECORDED, "MICROTE_REGION": settings.region, **record}
    market = from_env(env).market
    return replace(settings, market=replace(settings.market, schedule=market.schedule, tariff=market.tariff,
                                            rule=market.rule, price_cap=market.price_cap))


def record_differences(stored: Mapping[str, str], mine: Mapping[str, str]) -> list[str]:
    """``NAME: stored -> mine`` for each recorded setting that differs."""
    stored = {**_UNRECORDED, **stored}
    return [f"{name}: {stored.get(name)} -> {mine.get(name)}" for name in sorted(set(stored) | set(mine))
            if stored.get(name) != mine.get(name)]


_TOU_PART = re.compile(r"^(\d{1,2})(?:-(\d{1,2}))?:(\d{1,2})(?:-(\d{1,2}))?=([0-9.]+)$")
_TOU_HELP = ("use MONTHS:HOURS=PRICE parts separated by ';', e.g. '6-9:17-20=0.15;12:7-9=0.12' (months 1-12, "
             "local weekday hours 0-23, ranges inclusive, $/kWh)")


def parse_time_of_use(text: str) -> dict[int, dict[int, Decimal]]:
    """``MICROTE_TIME_OF_USE``: the grid's base price by month and local weekday hour (the
    tariff's ``time_of_use``); empty for none. Each hour of a month is priced once."""
    table: dict[int, dict[int, Decimal]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        found = _TOU_PART.match(part)
        if found is None:
            raise SettingsError(f"MICROTE_TIME_OF_USE: {part!r} is not a part: {_TOU_HELP}")
        m1, m2, h1, h2 = (int(g) if g else None for g in found.groups()[:4])
        assert m1 is not None and h1 is not None
        months, hours = range(m1, (m2 if m2 is not None else m1) + 1), range(h1, (h2 if h2 is not None else h1) + 1)
        if not months or not hours or months[0] < 1 or months[-1] > 12 or hours[-1] > 23:
            raise SettingsError(f"MICROTE_TIME_OF_USE: {part!r} has a month or hour out of range: {_TOU_HELP}")
        price = Decimal(found.group(5))
        try:
            price_to_ticks(price)
        except ValueError as exc:
            raise SettingsError(f"MICROTE_TIME_OF_USE: {part!r}: {exc}") from None
        for month in months:
            for hour in hours:
                if hour in table.setdefault(month, {}):
                    raise SettingsError(f"MICROTE_TIME_OF_USE: {part!r} prices month {month} hour {hour} again")
                table[month][hour] = price
    return table


def format_time_of_use(table: Mapping[int, Mapping[int, Decimal]]) -> str:
    """The canonical text of a table: per month, each run of hours at one price."""
    parts = []
    for month in sorted(table):
        hours = sorted(table[month].items())
        i = 0
        while i < len(hours):
            j = i
            while j + 1 < len(hours) and hours[j + 1][0] == hours[j][0] + 1 and hours[j + 1][1] == hours[i][1]:
                j += 1
            span = f"{hours[i][0]}" if i == j else f"{hours[i][0]}-{hours[j][0]}"
            parts.append(f"{month}:{span}={_plain(hours[i][1])}")
            i = j + 1
    return ";".join(parts)
