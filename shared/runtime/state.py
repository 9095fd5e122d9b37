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

from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import msgpack
from redis.asyncio import Redis

from shared.market import Slot

# One call for every order, cancel and finish drained together (single requests and
# batches alike), so that membership, the agent's entitlement, the duplicate check, the
# round and the insertion are one atomic step. The round is checked once, first: if it
# moved since the orders were validated, nothing is written and the caller validates again.
# KEYS: gen, round, members, agents, wake, request rates, the sequence counter, connections,
# then the keys the ops name by index. ARGV: round start ('' for no check: finishes only), now
# in ms, the orders a participant may submit for one slot, its requests per second and burst
# (0: no rate limit), the floor the sequence counter is raised to (0: none), a slot's seconds,
# what a member's bids for one day may cost (units of 10**-7 $; 0: no limit), then ARGV[9],
# the ops (``_packed``: one MessagePack array of strings), 12 fields each: kind, participant,
# sender (the agent that sent its batch; '' for the participant itself), key indexes 1 to 4,
# and five arguments.
# Answers: 'ok', then a status and a value per op.
# A member with a connection (KEYS[8]: participant -> 'import_w:export_w', a part empty for
# no limit) has its open offers' and bids' energy per slot summed in the slot's orders-of
# hash ('<participant>|a', '<participant>|b'), with each order's share under '#<order id>',
# which a cancel gives back. With a spending limit, the bids' worth per local day is summed
# the same way in the day's spend hash (k4: '<participant>' -> units, '#<order id>' -> units).
_INTAKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'lost'} end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[2], 'start') ~= ARGV[1] then return {'moved'} end
local floor = tonumber(ARGV[6])  -- the sequence counter stays at or above every number handed out
if floor > 0 and (tonumber(redis.call('GET', KEYS[7])) or 0) < floor then redis.call('SET', KEYS[7], floor) end
local now, out, woke = ARGV[2], {'ok'}, false
local per_slot, rate, burst, seconds = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
local spend_limit = tonumber(ARGV[8])
local function refused(pid, sender, need_member)
  if sender ~= '' and pid ~= sender and redis.call('HGET', KEYS[4], pid) ~= sender then return 'not_entitled' end
  if need_member and redis.call('HEXISTS', KEYS[3], pid) == 0 then return 'not_a_member' end
  return nil
end
local function limited(pid)  -- a token bucket per participant: 'rate_limited' when it is empty
  if rate <= 0 then return nil end
  local held = redis.call('HMGET', KEYS[6], pid, pid .. '@')
  local t = tonumber(now)
  local at = tonumber(held[2]) or t
  local tokens = math.min(burst, (tonumber(held[1]) or burst) + math.max(0, t - at) * rate / 1000)
  if tokens < 1 then
    redis.call('HSET', KEYS[6], pid, tostring(tokens), pid .. '@', now)
    return 'rate_limited'
  end
  redis.call('HSET', KEYS[6], pid, tostring(tokens - 1), pid .. '@', now)
  return nil
end
local function committed(pid, share, counts)  -- the member's energy for the slot with this order,
                                             -- or nil when its connection has no limit for the side
  local held = redis.call('HGET', KEYS[8], pid)
  if not held then return nil end
  local import_w, export_w = string.match(held, '^(%d*):(%d*)$')
  local side = string.sub(share, 1, 1)
  local watts = side == 'b' and import_w or export_w
  if watts == nil or watts == '' then return nil end
  local total = tonumber(redis.call('HGET', counts, pid .. '|' .. side) or '0') + tonumber(string.sub(share, 2))
  return total, total * 3600 > tonumber(watts) * seconds
end
local A = cmsgpack.unpack(ARGV[9])
for i = 1, #A, 12 do
  local kind, pid, sender = A[i], A[i + 1], A[i + 2]
  local k1, k2, k3 = KEYS[tonumber(A[i + 3])], KEYS[tonumber(A[i + 4])], KEYS[tonumber(A[i + 5])]
  local k4 = KEYS[tonumber(A[i + 6])]
  local a, b, c, d, e = A[i + 7], A[i + 8], A[i + 9], A[i + 10], tonumber(A[i + 11])
  local status, value = nil, ''
  if kind == 'o' or kind == 'd' then  -- an order (k1 client ids, k2 book, k3 orders per participant,
                                      -- k4 the day's spend; a client id, b order id, c body,
                                      -- d side and Wh: 'a500', e what a bid may cost)
    status = refused(pid, sender, true)
    local existing = not status and redis.call('HGET', k1, a)
    -- A repeat (a request sent again, its answer lost) takes no token: it is answered as before.
    if not status and not existing then status = limited(pid) end
    if not status then
      local total, beyond = nil, false
      if not existing and kind == 'o' and d ~= '' then total, beyond = committed(pid, d, k3) end
      local spent = 0
      if spend_limit > 0 and e > 0 then spent = tonumber(redis.call('HGET', k4, pid) or '0') + e end
      if existing then
        local stored = redis.call('HGET', k2, existing)
        if stored then status, value = 'duplicate', stored else status = 'cancelled' end
      elseif kind == 'd' then
        status = 'none'  -- an order the market core refused, and no duplicate: the refusal stands
      elseif tonumber(redis.call('HGET', k3, pid) or '0') >= per_slot then
        status = 'too_many_orders'
      elseif beyond then
        status = 'beyond_connection'
      elseif spent > spend_limit then
        status = 'beyond_spend_limit'
      else
        redis.call('HSET', k1, a, b)
        redis.call('HSET', k2, b, c)
        redis.call('HINCRBY', k3, pid, 1)
        if total then
          redis.call('HSET', k3, pid .. '|' .. string.sub(d, 1, 1), string.format('%.0f', total), '#' .. b, d)
        end
        if spent > 0 then
          redis.call('HSET', k4, pid, string.format('%.0f', spent), '#' .. b, string.format('%.0f', e))
          redis.call('EXPIRE', k4, 259200)  -- SPEND_KEEP_S
        end
        status = 'ok'
      end
    end
  elseif kind == 'c' then  -- a cancel (k1 client ids, k2 book, k3 orders per participant;
                           -- a client id, c '1' when its gate closed)
    status = refused(pid, sender, false)
    local oid = not status and redis.call('HGET', k1, a)
    if not status and not (oid and redis.call('HEXISTS', k2, oid) == 0) then status = limited(pid) end
    if not status then
      if not oid then status = 'unknown'
      elseif c == '1' then status, value = 'closed', oid
      elseif redis.call('HDEL', k2, oid) == 1 then
        status, value = 'ok', oid
        local share = redis.call('HGET', k3, '#' .. oid)  -- its energy, given back to the connection
        if share then
          redis.call('HINCRBY', k3, pid .. '|' .. string.sub(share, 1, 1), '-' .. string.sub(share, 2))
          redis.call('HDEL', k3, '#' .. oid)
        end
        local worth = k4 ~= KEYS[1] and redis.call('HGET', k4, '#' .. oid)  -- and its worth, to the day's spending
        if worth then
          redis.call('HINCRBY', k4, pid, '-' .. worth)
          redis.call('HDEL', k4, '#' .. oid)
        end
      else status, value = 'gone', oid end
    end
  elseif kind == 'm' then  -- membership and entitlement only (a request the core refused before)
    status = refused(pid, sender, true) or 'ok'
  elseif kind == 'f' then  -- a finish (k1 the round's finished set, k2 the count the clock waits for)
    status = refused(pid, sender, true)
    if not status then
      redis.call('HSET', KEYS[3], pid, now)
      redis.call('SADD', k1, pid)
      status = 'ok'
      if redis.call('SCARD', k1) >= tonumber(redis.call('GET', k2) or '0') then woke = true end
    end
  end
  out[#out + 1] = status
  out[#out + 1] = value
end
if woke then
  redis.call('RPUSH', KEYS[5], '1')
  redis.call('LTRIM', KEYS[5], -1, -1)
end
return out
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

# Every reading drained together, in one call. A reading is refused once its slot's
# reconciliation has begun, so no accepted reading is left out of the slot it belongs to.
# KEYS: gen, members, agents, reconciled-up-to, connections, the provisional slots (a sorted
# set: slot -> end of its true-up window), the slots with late readings to adjust for, then
# the keys the ops name by index. ARGV[1]: the ops (``_packed``), 15 fields each: kind ('r' a
# reading, 'm' membership only), participant, sender (the agent that sent its batch; '' for the
# participant itself), readings key index, claim key index, slot end, body, import Wh,
# export Wh (all sources), the slot's seconds (for the member's connection, KEYS[5]), late
# readings key index, their order's key index, '1' when a reading of a reconciled slot may
# still come as a true-up, the slot ('start:end'), its held marker's key index.
# Answers: 'ok', the member count, then a status and a value per op (for 'ok' the slot's
# reading count, for 'duplicate' the reading that stands; 'late': kept for a true-up;
# 'late_duplicate': kept for a true-up before, value the reading that stands; 'reconciling':
# the slot is being reconciled, and may take it as late once that is done: nothing stored).
_READINGS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'lost'} end
local out = {'ok', tostring(redis.call('HLEN', KEYS[2]))}
local upto = tonumber(redis.call('GET', KEYS[4]) or '-1')
local function beyond(pid, import_wh, export_wh, seconds)  -- more than the member's connection carries
  local held = redis.call('HGET', KEYS[5], pid)
  if not held then return false end
  local import_w, export_w = string.match(held, '^(%d*):(%d*)$')
  if import_w ~= nil and import_w ~= '' and import_wh * 3600 > tonumber(import_w) * seconds then return true end
  return export_w ~= nil and export_w ~= '' and export_wh * 3600 > tonumber(export_w) * seconds
end
local A = cmsgpack.unpack(ARGV[1])
for i = 1, #A, 15 do
  local kind, pid, sender = A[i], A[i + 1], A[i + 2]
  local readings, claim = KEYS[tonumber(A[i + 3])], KEYS[tonumber(A[i + 4])]
  local late, late_order = KEYS[tonumber(A[i + 10])], KEYS[tonumber(A[i + 11])]
  local status, value = nil, ''
  if sender ~= '' and pid ~= sender and redis.call('HGET', KEYS[3], pid) ~= sender then status = 'not_entitled'
  elseif redis.call('HEXISTS', KEYS[2], pid) == 0 then status = 'not_a_member'
  elseif kind == 'm' then status = 'ok'
  else
    local stored, late_stored = redis.call('HGET', readings, pid), redis.call('HGET', late, pid)
    if stored then status, value = 'duplicate', stored  -- accepted before: say so again
    elseif late_stored then status, value = 'late_duplicate', late_stored
    elseif beyond(pid, tonumber(A[i + 7]), tonumber(A[i + 8]), tonumber(A[i + 9])) then
      status = 'beyond_connection'
    elseif upto >= tonumber(A[i + 5]) or redis.call('EXISTS', claim) == 1 then
      -- reconciled, or being reconciled: a true-up while the slot's window is open, else too late
      if A[i + 12] == '1' and redis.call('ZSCORE', KEYS[6], A[i + 13]) then
        redis.call('HSET', late, pid, A[i + 6])
        redis.call('RPUSH', late_order, pid)
        redis.call('SADD', KEYS[7], A[i + 13])
        status = 'late'
      elseif A[i + 12] == '1' and redis.call('GET', claim) == 'claimed'
          and redis.call('EXISTS', KEYS[tonumber(A[i + 14])]) == 0 then
        status = 'reconciling'  -- its reconciliation is under way: ask again once it is provisional
      else
        status = 'reconciled'
      end
    else
      redis.call('HSET', readings, pid, A[i + 6])
      status, value = 'ok', tostring(redis.call('HLEN', readings))
    end
  end
  out[#out + 1] = status
  out[#out + 1] = value
end
return out
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

# "done" only while the claim exists: the slot may be recorded and cleaned up already. With
# a true-up window (ARGV[2], its end; 0: none), the slot becomes provisional (KEYS[4]).
_FINISH_RECONCILE = """
redis.call('SET', KEYS[1], 'done', 'XX')
redis.call('DEL', KEYS[3])
local wm = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[1]) > wm then redis.call('SET', KEYS[2], ARGV[1]) end
if tonumber(ARGV[2]) > 0 then redis.call('ZADD', KEYS[4], 'NX', ARGV[2], ARGV[3]) end
return 1
"""

# A provisional slot's window closed: it is final once every late reading it kept has its
# adjustment (its revision count equals its late readings). Then no reading comes late any
# more (it leaves the provisional set) and its final statements are due (it is finalizing).
_BEGIN_FINAL = """
if redis.call('LLEN', KEYS[1]) ~= tonumber(redis.call('GET', KEYS[2]) or '0') then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
return 1
"""

# Every late reading kept for the slot has its adjustment: nothing more to adjust.
_DONE_ADJUSTING = """
if redis.call('LLEN', KEYS[1]) == tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SREM', KEYS[3], ARGV[1])
  return 1
end
return 0
"""

# The ledger recorded the slot (SlotRecorded): drop what reconciling it needed, and count it
# reconciled. A meter-collector that published the slot's SlotReconciled but lost Redis
# before finish_reconciling would otherwise come back to a slot whose inputs are gone, and
# wait for its clearing for ever.
# KEYS: what to delete, then the watermark. With a true-up window (ARGV[2], its end; 0:
# none): KEYS are the claim, its holder, the held marker, the provisional set and the
# slot's readings and settlements, then the watermark. A held slot's inputs go. A slot
# whose reconciler stopped before finishing (still 'claimed') becomes provisional here; one
# it finished ('done') is provisional already, and one without a claim (a SlotRecorded seen
# again, or a state rebuilt) is left as it is.
_DROP_DELIVERY = """
local wm_key = KEYS[#KEYS]
if tonumber(ARGV[2]) > 0 then
  local claim = redis.call('GET', KEYS[1])
  redis.call('DEL', KEYS[1], KEYS[2])
  if redis.call('DEL', KEYS[3]) == 1 then redis.call('DEL', KEYS[5], KEYS[6])
  elseif claim == 'claimed' then redis.call('ZADD', KEYS[4], 'NX', ARGV[2], ARGV[3]) end
else
  redis.call('DEL', unpack(KEYS, 1, #KEYS - 1))
end
local wm = tonumber(redis.call('GET', wm_key) or '-1')
if tonumber(ARGV[1]) > wm then redis.call('SET', wm_key, ARGV[1]) end
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
    agents: dict[str, str] = field(default_factory=dict)  # member -> the agent it named
    connections: dict[str, str] = field(default_factory=dict)  # member -> 'import_w:export_w' (Joined.connection)
    # per slot, the energy of open orders held against connections: '<member>|a' -> Wh, '#<order id>' -> 'a500'
    committed: dict[Slot, dict[str, str]] = field(default_factory=dict)
    # per local day from the current round's on, what bids may cost: '<member>' -> units, '#<order id>' -> units
    spend: dict[str, dict[str, str]] = field(default_factory=dict)
    # provisional slots (reconciled, true-up window open or not yet final): the end of the
    # window, the SlotCleared and the readings of the reconciliation, and the late readings in order
    provisional: dict[Slot, int] = field(default_factory=dict)
    kept_cleared: dict[Slot, bytes] = field(default_factory=dict)
    kept_readings: dict[Slot, dict[str, bytes]] = field(default_factory=dict)
    late: dict[Slot, list[tuple[str, bytes]]] = field(default_factory=dict)
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
SPEND_KEEP_S = 3 * 86400  # a day's spending, kept after its last bid (as the intake script keeps it)


@dataclass(frozen=True)
class IntakeLimits:
    """What one participant may send to order-intake (``MICROTE_MAX_ORDERS_PER_SLOT``,
    ``MICROTE_MAX_REQUESTS_PER_S``, ``MICROTE_REQUEST_BURST``)."""

    orders_per_slot: int = 1_000_000
    requests_per_s: float = 0.0  # 0: no rate limit
    burst: int = 1
    slot_seconds: int = 0  # a slot's length, for the members' connections (0: none is checked)
    spend_per_day: int = 0  # what a member's bids for one local day may cost, in 10**-7 $ (0: no limit)


NO_LIMITS = IntakeLimits()


@dataclass(frozen=True)
class IntakeOp:
    """One order, cancel or finish for ``RegionState.apply_intake``.

    kind: "o" an order to insert, "d" an order the market core refused (checked for
    membership and for a duplicate only), "c" a cancel, "f" a finish, "m" membership
    and entitlement only."""

    kind: Literal["o", "d", "c", "f", "m"]
    participant_id: str
    slot: Slot | None = None  # orders and cancels
    client_order_id: str = ""
    order_id: str = ""
    body: bytes = b""  # the encoded OrderAccepted of an order to insert
    share: str = ""  # an order to insert: its side and Wh ('a500', 'b120'), for its member's connection
    day: str = ""  # orders and cancels: the local day of the slot ('2026-06-21'), for the spending limit
    worth: int = 0  # a bid to insert: what it may cost, in 10**-7 $
    gate_closed: bool = False  # a cancel whose slot's gate has closed
    round_start: int = 0  # a finish: the round it finishes
    sender: str = ""  # the agent that sent its batch; "" for the participant itself


@dataclass(frozen=True)
class Joined:
    """A member as ``RegionState.join`` stores it: its agent and the connection it is held to."""

    participant_id: str
    agent: str | None = None
    import_w: int | None = None  # W; None: no limit
    export_w: int | None = None

    @property
    def connection(self) -> str:
        """As the scripts read it: 'import_w:export_w', a part empty for no limit; '' for none."""
        if self.import_w is None and self.export_w is None:
            return ""
        return f"{'' if self.import_w is None else self.import_w}:{'' if self.export_w is None else self.export_w}"


@dataclass(frozen=True)
class ReadingOp:
    """One reading for ``RegionState.apply_readings``; without a body, membership only."""

    participant_id: str
    slot: Slot | None = None
    body: bytes = b""
    sender: str = ""  # the agent that sent its batch; "" for the participant itself
    import_wh: int = 0  # what the reading says, for the member's connection
    export_wh: int = 0  # every source together
    late_ok: bool = False  # its slot's true-up window is open: kept as a late reading if reconciled


# Per op: (status, value). Orders: ok, duplicate (value: the order that stands), cancelled
# (its client id was cancelled), none (a refused order with no duplicate), not_a_member,
# not_entitled. Cancels: ok, gone (cancelled before), closed, unknown (value: the order id).
# Finishes: ok. Readings: ok (value: the slot's reading count), duplicate (value: the
# reading that stands), reconciled.
OpResults = list[tuple[str, bytes]]


class _KeyList:
    """A script's KEYS: the fixed ones first, then each other key once, named by its
    1-based index (``named(key)``), as the scripts' ops refer to them."""

    def __init__(self, *fixed: str) -> None:
        self.keys = list(fixed)
        self._index = {k: str(i + 1) for i, k in enumerate(fixed)}

    def __call__(self, key: str) -> str:
        if key not in self._index:
            self.keys.append(key)
            self._index[key] = str(len(self.keys))
        return self._index[key]


def _packed(fields: list[str | bytes]) -> bytes:
    """A script's ops as one argument: a MessagePack array of strings (an int as its digits,
    as Redis passes arguments; bytes and text alike in the format's old raw type, since
    Redis's ``cmsgpack`` knows no ``bin``), which the script reads with ``cmsgpack.unpack``. The Redis
    client encodes each argument of a command on its own, in Python: thousands of them were
    a fifth of order-intake's time with a batch of 1,000 households."""
    return cast(bytes, msgpack.packb(fields, use_bin_type=False))


def _s(slot: Slot) -> str:
    return f"{slot.start}:{slot.end}"


def _slot(name: bytes | str) -> Slot:
    start, end = (name.decode() if isinstance(name, bytes) else name).split(":")
    return Slot(int(start), int(end))


class RegionState:
    def __init__(self, redis: Redis, region: str) -> None:
        self.redis = redis
        self.region = region
        self._p = f"mt:{{{region}}}:"
        self._intake = redis.register_script(_INTAKE)
        self._advance = redis.register_script(_ADVANCE_ROUND)
        self._lease = redis.register_script(_LEASE)
        self._release = redis.register_script(_RELEASE)
        self._readings = redis.register_script(_READINGS)
        self._claim = redis.register_script(_CLAIM)
        self._finish_reconcile = redis.register_script(_FINISH_RECONCILE)
        self._begin_final = redis.register_script(_BEGIN_FINAL)
        self._done_adjusting = redis.register_script(_DONE_ADJUSTING)
        self._drop_delivery = redis.register_script(_DROP_DELIVERY)

    def key(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    # --- the state's generation -------------------------------------------------------
    # A random token, written once when the region's state is born or rebuilt. Every
    # service checks it before it acts: without it the state is not to be trusted.

    async def generation(self) -> str | None:
        value = await cast(Awaitable[bytes | None], self.redis.get(self.key("gen")))
        return None if value is None else value.decode()

    async def mark_busy(self, service: str, for_ms: int) -> None:
        """``service`` holds work the broker no longer counts as waiting (delivered, not yet
        handled), for the next ``for_ms``: the simulation clock waits for it (``busy``)."""
        await self.redis.set(self.key("busy", service), "1", px=for_ms)

    async def busy(self, services: list[str]) -> list[str]:
        """The services of ``services`` that said within their last mark that they hold work."""
        found = await self.redis.mget([self.key("busy", s) for s in services])
        return [s for s, held in zip(services, found, strict=True) if held is not None]

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
        if snapshot.agents:
            pipe.hset(k("agents"), mapping=dict[Any, Any](snapshot.agents))
        if snapshot.connections:
            pipe.hset(k("connections"), mapping=dict[Any, Any](snapshot.connections))
        for slot, entries in snapshot.books.items():
            if entries:
                pipe.hset(k("book", _s(slot)), mapping=dict(entries))
        for slot, coids in snapshot.client_ids.items():
            pipe.hset(k("coid", _s(slot)), mapping=dict[Any, Any](coids))
            counts = Counter(key.split("/", 1)[0] for key in coids)  # "<participant>/<client order id>"
            pipe.hset(k("orders-of", _s(slot)), mapping=dict[Any, Any](counts))
        for slot, shares in snapshot.committed.items():
            if shares:
                pipe.hset(k("orders-of", _s(slot)), mapping=dict[Any, Any](shares))
        for day, worth in snapshot.spend.items():
            if worth:
                pipe.hset(k("spend", day), mapping=dict[Any, Any](worth))
                pipe.expire(k("spend", day), SPEND_KEEP_S)
        for slot, readings in snapshot.readings.items():
            pipe.hset(k("readings", _s(slot)), mapping=dict[Any, Any](readings))
        for slot, cleared in snapshot.cleared.items():
            pipe.set(k("settled", _s(slot)), cleared)
            pipe.set(k("claim", "clear", _s(slot)), "done")
        for slot in snapshot.recorded:
            pipe.set(k("recorded", _s(slot)), 1, ex=86400)
        for slot, window_end in snapshot.provisional.items():
            s = _s(slot)
            pipe.zadd(k("provisional"), {s: window_end})
            if slot in snapshot.kept_cleared:
                pipe.set(k("settled", s), snapshot.kept_cleared[slot])
            if snapshot.kept_readings.get(slot):
                pipe.hset(k("readings", s), mapping=dict[Any, Any](snapshot.kept_readings[slot]))
            late = snapshot.late.get(slot, [])
            if late:
                pipe.hset(k("late", s), mapping=dict[Any, Any](dict(late)))
                pipe.rpush(k("late-order", s), *[pid for pid, _ in late])
                pipe.set(k("revised", s), len(late))
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

    async def finish_simulation(self) -> None:
        """The simulation's last round is done: no clock is to lead the region again."""
        await self.redis.set(self.key("simulation-finished"), 1)

    async def simulation_finished(self) -> bool:
        return bool(await self.redis.exists(self.key("simulation-finished")))

    async def first_round(self) -> int | None:
        value = await self.redis.get(self.key("first-round"))
        return None if value is None else int(value)

    async def take_lease(self, holder: str, ttl_ms: int) -> int | None:
        """Take or renew the clock lease; the fencing number, or None if another holds it."""
        fence = int(await self._lease(keys=[self.key("lease"), self.key("fence")], args=[holder, ttl_ms]))
        return None if fence < 0 else fence

    async def release_lease(self, holder: str) -> None:
        await self._release(keys=[self.key("lease")], args=[holder])

    async def await_finishes(self, round_start: int, count: int) -> None:
        """Wake the clock (``wait_wake``) once this many participants finished the round."""
        await self.redis.set(self.key("finish-target", str(round_start)), count, ex=86400)

    async def round_progress(self, round_start: int, closing: Slot, delivered: Slot) -> tuple[int, bool, bool]:
        """One round trip: how many participants finished the round, whether the slot whose
        gate closed is cleared, whether the delivered slot is recorded in the ledger."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.scard(self.key("finished", str(round_start)))
        pipe.get(self.key("claim", "clear", _s(closing)))
        pipe.get(self.key("done", "reconcile"))
        pipe.exists(self.key("recorded", _s(delivered)))
        finished, claim, upto, recorded = await pipe.execute()
        cleared = claim == b"done" or (upto is not None and closing.end <= int(upto))
        return int(finished), cleared, bool(recorded)

    async def finished_count(self, round_start: int) -> int:
        return int(await self.redis.scard(self.key("finished", str(round_start))))

    async def finished(self, round_start: int) -> set[str]:
        members = await cast(Awaitable[set[bytes]], self.redis.smembers(self.key("finished", str(round_start))))
        return {m.decode() for m in members}

    async def mark_recorded(self, slot: Slot) -> None:
        """The ledger holds everything of ``slot`` (kept a day, for the clock's barrier)."""
        await self.redis.set(self.key("recorded", _s(slot)), 1, ex=86400)

    async def is_recorded(self, slot: Slot) -> bool:
        return bool(await self.redis.exists(self.key("recorded", _s(slot))))

    async def forget_round(self, round_start: int, duration: int) -> None:
        await self.redis.delete(self.key("finished", str(round_start)), self.key("finish-target", str(round_start)),
                                self.key("recorded", _s(Slot(round_start, round_start + duration))))

    # --- membership --------------------------------------------------------------------

    async def join(self, members: list[Joined], now_ms: int) -> None:
        """Members joined at ``now_ms``, each with its agent and connection: one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.key("members"), mapping={m.participant_id: now_ms for m in members})
        for name, values in (("agents", {m.participant_id: m.agent for m in members}),
                             ("connections", {m.participant_id: m.connection for m in members})):
            held = {pid: value for pid, value in values.items() if value}
            if held:
                pipe.hset(self.key(name), mapping=dict[Any, Any](held))
            without = [pid for pid, value in values.items() if not value]
            if without:
                pipe.hdel(self.key(name), *without)
        await pipe.execute()

    async def leave(self, participant_id: str) -> bool:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(self.key("members"), participant_id)
        pipe.hdel(self.key("agents"), participant_id)
        pipe.hdel(self.key("connections"), participant_id)
        left, _, _ = await pipe.execute()
        return bool(left)

    async def agents(self) -> dict[str, str]:
        found = await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall(self.key("agents")))
        return {p.decode(): a.decode() for p, a in found.items()}

    async def touch(self, participant_id: str, now_ms: int) -> bool:
        """Record activity of a member; False when it is not a member."""
        if not await self.redis.hexists(self.key("members"), participant_id):
            return False
        await self.redis.hset(self.key("members"), participant_id, now_ms)
        return True

    async def members(self) -> set[str]:
        """Every member's id."""
        names = await cast(Awaitable[list[bytes]], self.redis.hkeys(self.key("members")))
        return {p.decode() for p in names}

    async def is_member(self, participant_id: str) -> bool:
        return bool(await self.redis.hexists(self.key("members"), participant_id))

    async def active_members(self, now_ms: int, timeout_ms: int) -> set[str]:
        members = await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall(self.key("members")))
        return {p.decode() for p, seen in members.items() if now_ms - int(seen) <= timeout_ms}

    # --- orders ------------------------------------------------------------------------

    async def intake_view(self, reserve: int) -> tuple[bool, tuple[int, int] | None, int]:
        """One round trip: whether the state has its generation, the current round (start,
        fence), and the first of ``reserve`` fresh sequence numbers (0 when none reserved).
        A reserved number left unused is a gap; numbers only order, they never count."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(self.key("gen"))
        pipe.hmget(self.key("round"), "start", "fence")
        if reserve:
            pipe.incrby(self.key("seq"), reserve)
        found = await pipe.execute()
        start, fence = found[1]
        current = None if start is None or fence is None else (int(start), int(fence))
        first = int(found[2]) - reserve + 1 if reserve else 0
        return bool(found[0]), current, first

    async def apply_intake(self, ops: list[IntakeOp], *, round_start: int | None, now_ms: int,
                           limits: IntakeLimits = NO_LIMITS, seq_floor: int = 0) -> OpResults | None:
        """Every op in one atomic script; None (and nothing written) when the round is no
        longer ``round_start``. Raises ``RegionStateLost`` when the state has no generation.
        ``limits``: an order beyond a participant's orders per slot is ``too_many_orders``;
        an order or cancel beyond its request rate is ``rate_limited``. ``seq_floor``: the
        sequence counter is raised to it (the numbers of a simulated round, which are not
        drawn from the counter, stay below it: a lagging replica is still told by its counter)."""
        named = _KeyList(self.key("gen"), self.key("round"), self.key("members"), self.key("agents"),
                         self.key("wake"), self.key("rates"), self.key("seq"), self.key("connections"))

        head: list[Any] = ["" if round_start is None else round_start, now_ms, limits.orders_per_slot,
                           limits.requests_per_s, limits.burst, seq_floor, limits.slot_seconds, limits.spend_per_day]
        args: list[str | bytes] = []
        for op in ops:
            pid = op.participant_id
            if op.kind == "f":
                done, target = named(self.key("finished", str(op.round_start))), named(self.key(
                    "finish-target", str(op.round_start)))
                args += ["f", pid, op.sender, done, target, "1", "1", "", "", "", "", "0"]
                continue
            if op.kind == "m":
                args += ["m", pid, op.sender, "1", "1", "1", "1", "", "", "", "", "0"]
                continue
            assert op.slot is not None
            coids, book = named(self.key("coid", _s(op.slot))), named(self.key("book", _s(op.slot)))
            counts = named(self.key("orders-of", _s(op.slot)))
            spend = named(self.key("spend", op.day)) if op.day and limits.spend_per_day else "1"
            last = op.body if op.kind == "o" else ("1" if op.gate_closed else "0")
            share = op.share if op.kind == "o" and limits.slot_seconds else ""
            worth = str(op.worth) if op.kind == "o" and spend != "1" else "0"
            args += [op.kind, pid, op.sender, coids, book, counts, spend, f"{pid}/{op.client_order_id}", op.order_id,
                     last, share, worth]
        found = await self._intake(keys=named.keys, args=[*head, _packed(args)])
        return self._results(found)

    async def apply_readings(self, ops: list[ReadingOp]) -> tuple[int, OpResults]:
        """Every reading in one atomic script: the member count, and each op's result."""
        named = _KeyList(self.key("gen"), self.key("members"), self.key("agents"), self.key("done", "reconcile"),
                         self.key("connections"), self.key("provisional"), self.key("to-adjust"))

        args: list[str | bytes] = []
        for op in ops:
            if op.slot is None or not op.body:
                args += ["m", op.participant_id, op.sender, "1", "1", "0", "", "0", "0", "0", "1", "1", "0", "", "1"]
                continue
            s = _s(op.slot)
            readings, claim = named(self.key("readings", s)), named(self.key("claim", "reconcile", s))
            late, order = named(self.key("late", s)), named(self.key("late-order", s))
            args += ["r", op.participant_id, op.sender, readings, claim, str(op.slot.end), op.body, str(op.import_wh),
                     str(op.export_wh), str(op.slot.seconds), late, order, "1" if op.late_ok else "0", s,
                     named(self.key("held", s))]
        found = await self._readings(keys=named.keys, args=[_packed(args)])
        results = self._results([found[0], *found[2:]])
        assert results is not None
        return int(found[1]), results

    def _results(self, found: list[bytes]) -> OpResults | None:
        head = found[0].decode()
        if head == "lost":
            raise RegionStateLost(f"no round state for region {self.region} in Redis: waiting for its rebuild")
        if head == "moved":
            return None
        return [(found[i].decode(), found[i + 1]) for i in range(1, len(found), 2)]

    async def wait_wake(self, timeout_s: float) -> bool:
        """Block until a finish was counted (``apply_intake``) or the timeout passed."""
        return await self.redis.blpop([self.key("wake")], timeout=timeout_s) is not None

    async def book(self, slot: Slot) -> list[bytes]:
        return await cast(Awaitable[list[bytes]], self.redis.hvals(self.key("book", _s(slot))))

    async def drop_book(self, slot: Slot) -> None:
        await self.redis.delete(self.key("book", _s(slot)), self.key("coid", _s(slot)),
                                self.key("orders-of", _s(slot)))

    # --- clearing and reconciliation -------------------------------------------------------

    async def claim(self, kind: Literal["clear", "reconcile"], slot: Slot, holder: str) -> Claim:
        keys = [self.key("claim", kind, _s(slot)), self.key("holder", kind, _s(slot)), self.key("done", "reconcile")]
        return cast(Claim, (await self._claim(keys=keys, args=[holder, CLAIM_LEASE_MS, slot.end])).decode())

    async def finish_clearing(self, slot: Slot) -> None:
        await self.redis.set(self.key("claim", "clear", _s(slot)), "done", xx=True)
        await self.redis.delete(self.key("holder", "clear", _s(slot)))

    async def finish_reconciling(self, slot: Slot, window_end: int = 0) -> None:
        """The slot is reconciled; with ``window_end`` (> 0) it is provisional until then."""
        await self._finish_reconcile(
            keys=[self.key("claim", "reconcile", _s(slot)), self.key("done", "reconcile"),
                  self.key("holder", "reconcile", _s(slot)), self.key("provisional")],
            args=[slot.end, window_end, _s(slot)]
        )

    async def reconciled_upto(self) -> int | None:
        value = await self.redis.get(self.key("done", "reconcile"))
        return None if value is None else int(value)

    async def drop_claim(self, kind: Literal["clear", "reconcile"], slot: Slot) -> None:
        await self.redis.delete(self.key("claim", kind, _s(slot)), self.key("holder", kind, _s(slot)))

    async def readings(self, slot: Slot) -> dict[str, bytes]:
        raw = await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall(self.key("readings", _s(slot))))
        return {p.decode(): v for p, v in raw.items()}

    async def reading_and_member_count(self, slot: Slot) -> tuple[int, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hlen(self.key("readings", _s(slot)))
        pipe.hlen(self.key("members"))
        readings, members = await pipe.execute()
        return int(readings), int(members)

    async def reporters(self, slot: Slot) -> set[str]:
        """Who has a reading of ``slot`` (the names only)."""
        names = await cast(Awaitable[list[bytes]], self.redis.hkeys(self.key("readings", _s(slot))))
        return {p.decode() for p in names}

    async def store_settlements(self, slot: Slot, encoded: bytes) -> None:
        await self.redis.set(self.key("settled", _s(slot)), encoded, nx=True)

    async def settlements(self, slot: Slot) -> bytes | None:
        return cast(bytes | None, await self.redis.get(self.key("settled", _s(slot))))

    async def drop_delivery(self, slot: Slot, *, window_end: int = 0) -> None:
        """The ledger recorded ``slot``: its readings, settlements and claim go, and the
        slot counts as reconciled (``reconciled_upto`` never moves back). With ``window_end``
        (a true-up window's end) its readings and settlements stay, and it is provisional
        (``end_final`` drops them), unless it was held (``mark_held``)."""
        s = _s(slot)
        if window_end:
            keys = [self.key("claim", "reconcile", s), self.key("holder", "reconcile", s), self.key("held", s),
                    self.key("provisional"), self.key("readings", s), self.key("settled", s)]
        else:
            keys = [self.key("readings", s), self.key("settled", s), self.key("claim", "reconcile", s),
                    self.key("holder", "reconcile", s)]
        await self._drop_delivery(keys=[*keys, self.key("done", "reconcile")], args=[slot.end, window_end, s])

    async def mark_held(self, slot: Slot) -> None:
        """The slot is held (no entries): nothing to true up; its inputs go when it is recorded."""
        await self.redis.set(self.key("held", _s(slot)), 1, ex=7 * 86400)

    # --- true-up ---------------------------------------------------------------------------
    # A provisional slot keeps its readings and settlements, and its late readings in the
    # order they came ('late' and 'late-order'), and how many of them have their adjustment
    # ('revised'), until its window closes and its final statements are out.

    async def late_readings(self, slot: Slot) -> list[bytes]:
        """The slot's late readings, in the order they came."""
        s = _s(slot)
        order = await cast(Awaitable[list[bytes]], self.redis.lrange(self.key("late-order", s), 0, -1))
        if not order:
            return []
        found = await cast(Awaitable[list[bytes | None]], self.redis.hmget(self.key("late", s), order))
        return [body for body in found if body is not None]

    async def revised(self, slot: Slot) -> int:
        """How many of the slot's late readings have their adjustment published."""
        value = await self.redis.get(self.key("revised", _s(slot)))
        return 0 if value is None else int(value)

    async def set_revised(self, slot: Slot, revision: int) -> None:
        await self.redis.set(self.key("revised", _s(slot)), revision)

    async def to_adjust(self) -> list[Slot]:
        """Slots with late readings whose adjustments are not all published."""
        return sorted(_slot(s) for s in await cast(Awaitable[set[bytes]], self.redis.smembers(self.key("to-adjust"))))

    async def done_adjusting(self, slot: Slot) -> bool:
        s = _s(slot)
        return bool(await self._done_adjusting(
            keys=[self.key("late-order", s), self.key("revised", s), self.key("to-adjust")], args=[s]))

    async def due_final(self, market_now: int) -> list[Slot]:
        """Provisional slots whose window has closed by ``market_now``, and those whose final
        statements were begun and not yet ended (a crash), oldest first."""
        closed = await cast(Awaitable[list[bytes]], self.redis.zrangebyscore(self.key("provisional"), "-inf",
                                                                             market_now))
        begun = await cast(Awaitable[set[bytes]], self.redis.smembers(self.key("finalizing")))
        return sorted({_slot(s) for s in [*closed, *begun]})

    async def is_finalizing(self, slot: Slot) -> bool:
        return bool(await self.redis.sismember(self.key("finalizing"), _s(slot)))

    async def begin_final(self, slot: Slot) -> bool:
        """Close the slot to late readings; False while one still waits for its adjustment."""
        s = _s(slot)
        return bool(await self._begin_final(
            keys=[self.key("late-order", s), self.key("revised", s), self.key("provisional"), self.key("finalizing"),
                  self.key("to-adjust")], args=[s]))

    async def end_final(self, slot: Slot) -> None:
        """The final statements are out: whatever the slot kept for its true-up goes."""
        s = _s(slot)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key("readings", s), self.key("settled", s), self.key("late", s), self.key("late-order", s),
                    self.key("revised", s))
        pipe.srem(self.key("finalizing"), s)
        await pipe.execute()

    async def lock(self, name: str, holder: str, ttl_ms: int = CLAIM_LEASE_MS) -> bool:
        return bool(await self.redis.set(self.key("lock", name), holder, nx=True, px=ttl_ms))

    async def unlock(self, name: str, holder: str) -> None:
        await self._release(keys=[self.key("lock", name)], args=[holder])

    async def key_count(self, *, but: tuple[str, ...] = ()) -> int:
        """The region's keys, but those whose first part after the region is in ``but``
        (``but=("busy",)``: the busy marks, which expire by themselves)."""
        skip = tuple(self.key(part, "") for part in but)
        count = 0
        async for key in self.redis.scan_iter(match=self._pattern(), count=500):
            count += not (skip and key.decode().startswith(skip))
        return count
