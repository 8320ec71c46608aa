"""Spend caps: per account, per UTC day and calendar month, on total commitment and on upfront payments.

Before a plan's mutating call the executor *reserves* its amounts in one Lua script, which refuses when any cap
would be crossed counting everything reserved or used in the period; so concurrent plans on any number of workers
can never together exceed a cap. The reservation is the plan's *hold* (``{prefix}budget_hold:<plan>``), made once
(reserving again is a no-op; a new intent replaces the old amounts). When the plan settles:

- succeeded → the hold becomes *used* (it stays counted);
- failed, expired or cancelled (nothing was committed) → released;
- needs attention (the outcome is unknown) → kept as reserved until a person settles the plan.

Amounts are whole cents, rounded up. Periods are read from Redis's clock (the one all workers share). What each
account has used, reserved and may spend is published in ``{prefix}budgets`` (``<account>:day`` and
``<account>:month`` → JSON of decimal strings, with the period it covers) for ``commitd status`` and the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any

import redis

from config.accounts import AccountLimits
from worker.plans import PlanState

PERIOD_KEY_DAYS = {"day": 40, "month": 400}  # how long a period's counters outlive it (for status and audits)
HOLD_USED_SECONDS = 40 * 86_400  # a used hold is kept this long: a late release of a settled plan stays a no-op

# KEYS: the plan's hold, the day's counters, the month's counters, the published hash. ARGV: account, day label,
# month label, commitment cents, upfront cents, then the four caps in cents ('' = none: day_commitment,
# day_upfront, month_commitment, month_upfront), the counters' TTLs (day, month). A hold is
# "<day key>|<month key>|<commitment>|<upfront>|reserved|used".
_COMMON = """
local function cents(c)
  c = tonumber(c) or 0
  local sign = ''
  if c < 0 then sign = '-'; c = -c end
  return sign .. string.format('%d.%02d', math.floor(c / 100), c % 100)
end
local function num(key, field) return tonumber(redis.call('HGET', key, field) or '0') end
local function publish(published, account, period, key, cap_c, cap_u)
  local v = {period = string.match(key, ':([^:]+)$'), used_usd = cents(num(key, 'commitment_used')),
             reserved_usd = cents(num(key, 'commitment_reserved')),
             upfront_used_usd = cents(num(key, 'upfront_used')),
             upfront_reserved_usd = cents(num(key, 'upfront_reserved'))}
  if cap_c ~= nil and cap_c ~= '' then v['cap_usd'] = cents(cap_c) end
  if cap_u ~= nil and cap_u ~= '' then v['upfront_cap_usd'] = cents(cap_u) end
  redis.call('HSET', published, account .. ':' .. period, cjson.encode(v))
end
local function split(hold)
  local parts = {}
  for p in string.gmatch(hold, '([^|]+)') do parts[#parts + 1] = p end
  return parts
end
local function unreserve(parts)  -- 0 - x, not -x: Lua's -0 reaches Redis as "-0", which HINCRBY refuses
  for _, key in ipairs({parts[1], parts[2]}) do
    redis.call('HINCRBY', key, 'commitment_reserved', 0 - tonumber(parts[3]))
    redis.call('HINCRBY', key, 'upfront_reserved', 0 - tonumber(parts[4]))
  end
end
"""

_RESERVE = _COMMON + """
local hold = redis.call('GET', KEYS[1])
if hold then
  local parts = split(hold)
  if parts[5] == 'used' then return {1, 'used'} end
  if parts[1] == KEYS[2] and parts[2] == KEYS[3] and parts[3] == ARGV[4] and parts[4] == ARGV[5] then
    return {1, 'held'}
  end
  unreserve(parts)  -- a new intent: its amounts replace the old ones
  redis.call('DEL', KEYS[1])
end
local amount_c, amount_u = tonumber(ARGV[4]), tonumber(ARGV[5])
local checks = {{KEYS[2], 'commitment', amount_c, ARGV[6], 'day'}, {KEYS[2], 'upfront', amount_u, ARGV[7], 'day'},
                {KEYS[3], 'commitment', amount_c, ARGV[8], 'month'}, {KEYS[3], 'upfront', amount_u, ARGV[9], 'month'}}
for _, c in ipairs(checks) do
  if c[4] ~= '' then
    local used, reserved = num(c[1], c[2] .. '_used'), num(c[1], c[2] .. '_reserved')
    if used + reserved + c[3] > tonumber(c[4]) then
      return {0, c[5], c[2], cents(used), cents(reserved), cents(c[3]), cents(c[4])}
    end
  end
end
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  redis.call('HINCRBY', key, 'commitment_reserved', amount_c)
  redis.call('HINCRBY', key, 'upfront_reserved', amount_u)
end
redis.call('EXPIRE', KEYS[2], ARGV[10])
redis.call('EXPIRE', KEYS[3], ARGV[11])
redis.call('SET', KEYS[1], KEYS[2] .. '|' .. KEYS[3] .. '|' .. ARGV[4] .. '|' .. ARGV[5] .. '|reserved')
publish(KEYS[4], ARGV[1], 'day', KEYS[2], ARGV[6], ARGV[7])
publish(KEYS[4], ARGV[1], 'month', KEYS[3], ARGV[8], ARGV[9])
return {1, 'reserved'}
"""

# KEYS: the plan's hold, the published hash. ARGV: 'release' or 'use', the used hold's TTL, account, then the caps
# as in _RESERVE (for the published figures). The hold names its own counters' keys
# (a plan reserved on one day may settle on the next).
_SETTLE = _COMMON + """
local hold = redis.call('GET', KEYS[1])
if not hold then return 'none' end
local parts = split(hold)
if parts[5] == 'used' then return 'used' end
if ARGV[1] == 'release' then
  unreserve(parts)
  redis.call('DEL', KEYS[1])
else
  unreserve(parts)
  for _, key in ipairs({parts[1], parts[2]}) do
    redis.call('HINCRBY', key, 'commitment_used', tonumber(parts[3]))
    redis.call('HINCRBY', key, 'upfront_used', tonumber(parts[4]))
  end
  redis.call('SET', KEYS[1], parts[1] .. '|' .. parts[2] .. '|' .. parts[3] .. '|' .. parts[4] .. '|used',
             'EX', ARGV[2])
end
publish(KEYS[2], ARGV[3], 'day', parts[1], ARGV[4], ARGV[5])
publish(KEYS[2], ARGV[3], 'month', parts[2], ARGV[6], ARGV[7])
return ARGV[1]
"""


def to_cents(amount: Decimal | None) -> int:
    if amount is None:
        return 0
    return int((amount * 100).to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True)
class CapReached:
    """The reservation was refused: the numbers for the plan's reason."""

    period: str
    measure: str
    used_usd: str
    reserved_usd: str
    amount_usd: str
    cap_usd: str

    def message(self, account: str) -> str:
        period = {"day": "daily", "month": "monthly"}.get(self.period, self.period)
        return (f"the {period} {self.measure} cap of account {account} is {self.cap_usd} USD: {self.used_usd} "
                f"used and {self.reserved_usd} reserved, and this plan needs {self.amount_usd} more")


def _caps_cents(limits: AccountLimits) -> list[str]:
    caps = limits.caps()
    return ["" if caps.get(name) is None else str(to_cents(caps[name]))
            for name in ("day_commitment", "day_upfront", "month_commitment", "month_upfront")]


def has_caps(limits: AccountLimits) -> bool:
    return bool(limits.caps())


class Budgets:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)

    def hold_key(self, plan_id: str) -> str:
        return f"{self.prefix}budget_hold:{plan_id}"

    def _labels(self, now_ms: int) -> tuple[str, str]:
        when = datetime.fromtimestamp(now_ms / 1000, UTC)
        return when.strftime("%Y-%m-%d"), when.strftime("%Y-%m")

    def reserve(self, plan_id: str, account: str, limits: AccountLimits, commitment: Decimal | None,
                upfront: Decimal | None, now_ms: int) -> CapReached | None:
        """Reserve the plan's amounts in the period of ``now_ms`` (Redis's clock). None: reserved (or held already)."""
        day, month = self._labels(now_ms)
        day_key = f"{self.prefix}budget:{account}:day:{day}"
        month_key = f"{self.prefix}budget:{account}:month:{month}"
        reply: list[Any] = self._reserve(
            keys=[self.hold_key(plan_id), day_key, month_key, f"{self.prefix}budgets"],
            args=[account, day, month, to_cents(commitment), to_cents(upfront), *_caps_cents(limits),
                  PERIOD_KEY_DAYS["day"] * 86_400, PERIOD_KEY_DAYS["month"] * 86_400])
        if int(reply[0]) == 1:
            return None
        text = [v.decode() if isinstance(v, bytes) else str(v) for v in reply[1:]]
        return CapReached(*text)

    def settle(self, plan_id: str, state: PlanState, account: str, limits: AccountLimits) -> str:
        """The plan reached ``state``: its hold becomes used (succeeded), is released (failed, expired, cancelled;
        awaiting approval, which sends nothing until it runs again and reserves again) or stays (anything else).
        Returns what happened ('none' when the plan held no budget)."""
        if state == PlanState.SUCCEEDED:
            how = "use"
        elif state in (PlanState.FAILED, PlanState.EXPIRED, PlanState.CANCELLED, PlanState.REJECTED,
                       PlanState.AWAITING_APPROVAL):
            how = "release"
        else:
            return "kept"
        reply = self._settle(keys=[self.hold_key(plan_id), f"{self.prefix}budgets"],
                             args=[how, HOLD_USED_SECONDS, account, *_caps_cents(limits)])
        return reply.decode() if isinstance(reply, bytes) else str(reply)
