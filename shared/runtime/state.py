"""A region's round state in Redis. Every transition that must be atomic is one Lua script.

All keys of a region share the hash tag ``{region}`` so that they land in one Redis
Cluster slot. Slots are keyed ``start:end``. Who cleans what, once a slot is recorded:
order-intake its book and client ids, the matcher its clearing claim, the
meter-collector its readings, settlements and reconciliation claim, and the clock its
round barrier.

Atomicity:
- order insertion checks, in one script, that the round it was validated against is
  still current, so no order slips in after gate closure and none is lost before it;
- a reading is refused once its slot's reconciliation has begun, so no accepted reading
  is left out of the slot it belongs to;
- a clock takes a lease and a fencing number together; a round start with a lower
  fence than the stored one is refused.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from redis.asyncio import Redis

from shared.market import Slot

_INSERT_ORDER = """
local existing = redis.call('HGET', KEYS[2], ARGV[2])
if existing then return {'duplicate', existing} end
if redis.call('HGET', KEYS[1], 'start') ~= ARGV[1] then return {'moved', ''} end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
return {'ok', ARGV[3]}
"""

_CANCEL_ORDER = """
if redis.call('HGET', KEYS[1], 'start') ~= ARGV[1] then return -1 end
return redis.call('HDEL', KEYS[2], ARGV[2])
"""

_ADVANCE_ROUND = """
local fence, start = tonumber(ARGV[2]), tonumber(ARGV[1])
local cur_fence = tonumber(redis.call('HGET', KEYS[1], 'fence') or '-1')
local cur_start = tonumber(redis.call('HGET', KEYS[1], 'start') or '-1')
if fence < cur_fence or start < cur_start then return 0 end
if fence == cur_fence and start == cur_start then return 1 end  -- the same holder again: idempotent
redis.call('HSET', KEYS[1], 'start', ARGV[1], 'fence', ARGV[2], 'at_ms', ARGV[3])
redis.call('SET', KEYS[2], ARGV[1], 'NX')
if redis.call('GET', KEYS[3]) == false then redis.call('SET', KEYS[3], ARGV[1]) end
return 1
"""

_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]))
end
if holder then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('INCR', KEYS[2])
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_ADD_READING = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'duplicate' end  -- accepted before: say so again
if tonumber(redis.call('GET', KEYS[3]) or '-1') >= tonumber(ARGV[3]) then return 'reconciled' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'reconciled' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 'ok'
"""

# A claim freezes a slot's inputs and says who works on it: new (first claim), again
# (claimed before, but its holder's lease lapsed: a crash; redo it, the result is
# deterministic), busy (another replica holds it now), done.
_CLAIM = """
local state = redis.call('GET', KEYS[1])
if state == 'done' then return 'done' end
-- reconciled (and perhaps cleaned up) already: never claim it anew
if tonumber(redis.call('GET', KEYS[3]) or '-1') >= tonumber(ARGV[3]) then return 'done' end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 'busy' end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if state then return 'again' end
redis.call('SET', KEYS[1], 'claimed')
return 'new'
"""

# "done" only while the claim exists: the slot may be recorded and cleaned up already.
_FINISH_RECONCILE = """
redis.call('SET', KEYS[1], 'done', 'XX')
redis.call('DEL', KEYS[3])
local wm = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[1]) > wm then redis.call('SET', KEYS[2], ARGV[1]) end
return 1
"""

@dataclass
class Snapshot:
    """A region's round state as rebuilt from the ledger (see shared.runtime.rebuild); the
    values are already encoded as the services store them."""

    round_start: int | None = None
    fence: int = 0
    first_round: int = 0
    reconciled_upto: int = 0
    seq: int = 0
    members: list[str] = field(default_factory=list)
    books: dict[Slot, list[tuple[str, bytes]]] = field(default_factory=dict)  # order id -> OrderAccepted
    client_ids: dict[Slot, dict[str, str]] = field(default_factory=dict)  # participant/client id -> order id
    readings: dict[Slot, dict[str, bytes]] = field(default_factory=dict)  # participant -> ReadingAccepted
    cleared: dict[Slot, bytes] = field(default_factory=dict)  # SlotCleared of slots cleared before this round
    recorded: list[Slot] = field(default_factory=list)


class RegionStateLost(ConnectionError):
    """Redis holds no round state for the region (no generation key): a restart without
    persistence, a flush, or a failover to an empty replica. The services wait (it is an
    outage) until the ledger-writer has rebuilt the state from the ledger."""


Claim = Literal["new", "again", "busy", "done"]
CLAIM_LEASE_MS = 30_000
BAD_INPUT_SENDERS = 1000
BAD_INPUT_KEEP_S = 8 * 86400
InsertResult = Literal["ok", "duplicate", "moved"]
ReadingResult = Literal["ok", "duplicate", "reconciled"]


def _s(slot: Slot) -> str:
    return f"{slot.start}:{slot.end}"


class RegionState:
    def __init__(self, redis: Redis, region: str) -> None:
        self.redis = redis
        self.region = region
        self._p = f"mt:{{{region}}}:"
        self._insert = redis.register_script(_INSERT_ORDER)
        self._cancel = redis.register_script(_CANCEL_ORDER)
        self._advance = redis.register_script(_ADVANCE_ROUND)
        self._lease = redis.register_script(_LEASE)
        self._release = redis.register_script(_RELEASE)
        self._add_reading = redis.register_script(_ADD_READING)
        self._claim = redis.register_script(_CLAIM)
        self._finish_reconcile = redis.register_script(_FINISH_RECONCILE)

    def key(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    # --- the state's generation -------------------------------------------------------
    # A random token, written once when the region's state is born or rebuilt. Every
    # service checks it before it acts: without it the state is not to be trusted.

    async def generation(self) -> str | None:
        value = await cast(Awaitable[bytes | None], self.redis.get(self.key("gen")))
        return None if value is None else value.decode()

    async def generation_and_round(self) -> tuple[bool, int | None]:
        """Whether the state has its generation, and its current round start: one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(self.key("gen"))
        pipe.hget(self.key("round"), "start")
        exists, start = await pipe.execute()
        return bool(exists), None if start is None else int(start)

    async def create_generation(self, token: str) -> bool:
        """Birth of a region with no history: True when this call created it."""
        return bool(await self.redis.set(self.key("gen"), token, nx=True))

    async def seq(self) -> int:
        value = await cast(Awaitable[bytes | None], self.redis.get(self.key("seq")))
        return 0 if value is None else int(value)

    async def forget_everything(self) -> int:
        """Delete the region's round state (a stale copy), but not a rebuild in progress."""
        keep = self.key("rebuild-lock").encode()
        keys = [k async for k in self.redis.scan_iter(match=self._pattern(), count=1000) if k != keep]
        for i in range(0, len(keys), 1000):
            await self.redis.delete(*keys[i:i + 1000])
        return len(keys)

    def _pattern(self) -> str:
        return self._p.replace("{", "\\{").replace("}", "\\}") + "*"

    async def lock_rebuild(self, holder: str, ttl_ms: int) -> bool:
        return bool(await self.redis.set(self.key("rebuild-lock"), holder, nx=True, px=ttl_ms))

    async def unlock_rebuild(self, holder: str) -> None:
        await self._release(keys=[self.key("rebuild-lock")], args=[holder])

    async def restore(self, snapshot: Snapshot, token: str, now_ms: int) -> None:
        """Write a rebuilt round state and, last, its generation: all of it in one transaction."""
        k = self.key
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(k("lease"))  # whoever led before must take the lease again, under a higher fence
        if snapshot.round_start is not None:
            pipe.hset(k("round"), mapping={"start": snapshot.round_start, "fence": snapshot.fence, "at_ms": now_ms})
            pipe.set(k("fence"), snapshot.fence)
            pipe.set(k("first-round"), snapshot.first_round)
            pipe.set(k("done", "reconcile"), snapshot.reconciled_upto)
        pipe.set(k("seq"), snapshot.seq)
        if snapshot.members:
            pipe.hset(k("members"), mapping={p: now_ms for p in snapshot.members})
        for slot, entries in snapshot.books.items():
            if entries:
                pipe.hset(k("book", _s(slot)), mapping=dict(entries))
        for slot, coids in snapshot.client_ids.items():
            pipe.hset(k("coid", _s(slot)), mapping=dict[Any, Any](coids))
        for slot, readings in snapshot.readings.items():
            pipe.hset(k("readings", _s(slot)), mapping=dict[Any, Any](readings))
        for slot, cleared in snapshot.cleared.items():
            pipe.set(k("settled", _s(slot)), cleared)
            pipe.set(k("claim", "clear", _s(slot)), "done")
        for slot in snapshot.recorded:
            pipe.set(k("recorded", _s(slot)), 1, ex=86400)
        pipe.set(k("gen"), token)
        await pipe.execute()

    # --- bad input, per sender ----------------------------------------------------------
    # One sorted set a day: sender -> messages refused as malformed, forged or misrouted.
    # Senders are broker users where the message names one (validated by RabbitMQ), else
    # the participant id it claims, else "anonymous"; the set keeps its 1000 worst.

    async def count_bad_input(self, sender: str, day: str) -> None:
        key = self.key("bad-input", day)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zincrby(key, 1, sender)
        pipe.expire(key, BAD_INPUT_KEEP_S)
        pipe.zremrangebyrank(key, 0, -BAD_INPUT_SENDERS - 1)
        await pipe.execute()

    async def bad_input(self, day: str, most: int = 20) -> list[tuple[str, int]]:
        found = await cast(Awaitable[list[tuple[bytes, float]]],
                           self.redis.zrevrange(self.key("bad-input", day), 0, most - 1, withscores=True))
        return [(sender.decode(), int(score)) for sender, score in found]

    # --- rounds and the clock --------------------------------------------------------

    async def current_round(self) -> tuple[int, int] | None:
        """(round start, fence) of the current round, or None before the market opens."""
        start, fence = await cast(Awaitable[list[bytes | None]], self.redis.hmget(self.key("round"), "start", "fence"))
        return None if start is None or fence is None else (int(start), int(fence))

    async def advance_round(self, start: int, fence: int, at_ms: int) -> bool:
        keys = [self.key("round"), self.key("first-round"), self.key("done", "reconcile")]
        return bool(await self._advance(keys=keys, args=[start, fence, at_ms]))

    async def first_round(self) -> int | None:
        value = await self.redis.get(self.key("first-round"))
        return None if value is None else int(value)

    async def take_lease(self, holder: str, ttl_ms: int) -> int | None:
        """Take or renew the clock lease; the fencing number, or None if another holds it."""
        fence = int(await self._lease(keys=[self.key("lease"), self.key("fence")], args=[holder, ttl_ms]))
        return None if fence < 0 else fence

    async def release_lease(self, holder: str) -> None:
        await self._release(keys=[self.key("lease")], args=[holder])

    async def finish_round(self, round_start: int, participant_id: str) -> None:
        await self.redis.sadd(self.key("finished", str(round_start)), participant_id)

    async def finished(self, round_start: int) -> set[str]:
        members = await cast(Awaitable[set[bytes]], self.redis.smembers(self.key("finished", str(round_start))))
        return {m.decode() for m in members}

    async def mark_recorded(self, slot: Slot) -> None:
        """The ledger holds everything of ``slot`` (kept a day, for the clock's barrier)."""
        await self.redis.set(self.key("recorded", _s(slot)), 1, ex=86400)

    async def is_recorded(self, slot: Slot) -> bool:
        return bool(await self.redis.exists(self.key("recorded", _s(slot))))

    async def forget_round(self, round_start: int, duration: int) -> None:
        await self.redis.delete(self.key("finished", str(round_start)),
                                self.key("recorded", _s(Slot(round_start, round_start + duration))))

    # --- membership --------------------------------------------------------------------

    async def join(self, participant_id: str, now_ms: int) -> bool:
        """True when the participant was not a member before."""
        return bool(await self.redis.hset(self.key("members"), participant_id, now_ms))

    async def leave(self, participant_id: str) -> bool:
        return bool(await self.redis.hdel(self.key("members"), participant_id))

    async def touch(self, participant_id: str, now_ms: int) -> bool:
        """Record activity of a member; False when it is not a member."""
        if not await self.redis.hexists(self.key("members"), participant_id):
            return False
        await self.redis.hset(self.key("members"), participant_id, now_ms)
        return True

    async def is_member(self, participant_id: str) -> bool:
        return bool(await self.redis.hexists(self.key("members"), participant_id))

    async def member_count(self) -> int:
        return int(await self.redis.hlen(self.key("members")))

    async def active_members(self, now_ms: int, timeout_ms: int) -> set[str]:
        members = await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall(self.key("members")))
        return {p.decode() for p, seen in members.items() if now_ms - int(seen) <= timeout_ms}

    # --- orders ------------------------------------------------------------------------

    async def next_seq(self) -> int:
        return int(await self.redis.incr(self.key("seq")))

    async def order_id_for(self, slot: Slot, participant_id: str, client_order_id: str) -> str | None:
        value = await cast(Awaitable[bytes | None],
                           self.redis.hget(self.key("coid", _s(slot)), f"{participant_id}/{client_order_id}"))
        return None if value is None else value.decode()

    async def insert_order(
        self, slot: Slot, round_start: int, participant_id: str, client_order_id: str, order_id: str, encoded: bytes
    ) -> tuple[InsertResult, str]:
        keys = [self.key("round"), self.key("coid", _s(slot)), self.key("book", _s(slot))]
        status, value = await self._insert(
            keys=keys, args=[round_start, f"{participant_id}/{client_order_id}", order_id, encoded]
        )
        return cast(InsertResult, status.decode()), value.decode()

    async def get_order(self, slot: Slot, order_id: str) -> bytes | None:
        return await cast(Awaitable[bytes | None], self.redis.hget(self.key("book", _s(slot)), order_id))

    async def cancel_order(self, slot: Slot, round_start: int, order_id: str) -> Literal["ok", "gone", "moved"]:
        result = int(await self._cancel(keys=[self.key("round"), self.key("book", _s(slot))],
                                        args=[round_start, order_id]))
        return "moved" if result < 0 else ("ok" if result else "gone")

    async def book(self, slot: Slot) -> list[bytes]:
        return await cast(Awaitable[list[bytes]], self.redis.hvals(self.key("book", _s(slot))))

    async def drop_book(self, slot: Slot) -> None:
        await self.redis.delete(self.key("book", _s(slot)), self.key("coid", _s(slot)))

    # --- clearing and reconciliation -------------------------------------------------------

    async def claim(self, kind: Literal["clear", "reconcile"], slot: Slot, holder: str) -> Claim:
        keys = [self.key("claim", kind, _s(slot)), self.key("holder", kind, _s(slot)), self.key("done", "reconcile")]
        return cast(Claim, (await self._claim(keys=keys, args=[holder, CLAIM_LEASE_MS, slot.end])).decode())

    async def is_cleared(self, slot: Slot) -> bool:
        if await self.redis.get(self.key("claim", "clear", _s(slot))) == b"done":
            return True
        upto = await self.reconciled_upto()
        return upto is not None and slot.end <= upto  # cleared, delivered and cleaned up since

    async def finish_clearing(self, slot: Slot) -> None:
        await self.redis.set(self.key("claim", "clear", _s(slot)), "done", xx=True)
        await self.redis.delete(self.key("holder", "clear", _s(slot)))

    async def finish_reconciling(self, slot: Slot) -> None:
        await self._finish_reconcile(
            keys=[self.key("claim", "reconcile", _s(slot)), self.key("done", "reconcile"),
                  self.key("holder", "reconcile", _s(slot))], args=[slot.end]
        )

    async def reconciled_upto(self) -> int | None:
        value = await self.redis.get(self.key("done", "reconcile"))
        return None if value is None else int(value)

    async def drop_claim(self, kind: Literal["clear", "reconcile"], slot: Slot) -> None:
        await self.redis.delete(self.key("claim", kind, _s(slot)), self.key("holder", kind, _s(slot)))

    async def add_reading(self, slot: Slot, participant_id: str, encoded: bytes) -> ReadingResult:
        keys = [self.key("readings", _s(slot)), self.key("claim", "reconcile", _s(slot)),
                self.key("done", "reconcile")]
        return cast(ReadingResult, (await self._add_reading(keys=keys, args=[participant_id, encoded, slot.end]))
                    .decode())

    async def readings(self, slot: Slot) -> dict[str, bytes]:
        raw = await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall(self.key("readings", _s(slot))))
        return {p.decode(): v for p, v in raw.items()}

    async def reading_count(self, slot: Slot) -> int:
        return int(await self.redis.hlen(self.key("readings", _s(slot))))

    async def store_settlements(self, slot: Slot, encoded: bytes) -> None:
        await self.redis.set(self.key("settled", _s(slot)), encoded, nx=True)

    async def settlements(self, slot: Slot) -> bytes | None:
        return cast(bytes | None, await self.redis.get(self.key("settled", _s(slot))))

    async def drop_delivery(self, slot: Slot) -> None:
        await self.redis.delete(self.key("readings", _s(slot)), self.key("settled", _s(slot)),
                                self.key("claim", "reconcile", _s(slot)), self.key("holder", "reconcile", _s(slot)))

    async def key_count(self) -> int:
        count = 0
        async for _ in self.redis.scan_iter(match=self._pattern(), count=500):
            count += 1
        return count
