"""Rate limits: a token bucket per (account, region, service) in Redis, shared by every worker.

AWS throttles per account and region (EC2's mutating calls refill at a few per second); commitd keeps its own calls
below that, whatever the number of workers. Each AWS call takes a token first (one Lua script: refill by the time
elapsed on Redis's clock, then take one or say how long until one is there). A call without a token waits for it
(a short sleep in the worker, the plan's lease kept alive by its own thread); after
``COMMITD_RATE_LIMIT_MAX_WAIT_SECONDS`` the plan is given back to its queue (``RequeueLater``) before anything was
sent, so throttled work is deferred, never failed. ``COMMITD_RATE_LIMIT_PER_SECOND=0`` turns the limit off.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from worker.logs import get_logger
from worker.requeue import RequeueLater

log = get_logger("commitd.ratelimit")

# KEYS: the bucket. ARGV: tokens per second, burst. Returns 0 when a token was taken, else milliseconds to wait.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]), tonumber(b[2])
if tokens == nil or at == nil then tokens, at = burst, now end
if now > at then tokens = math.min(burst, tokens + (now - at) * rate / 1000) end
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(math.max(now, at)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 60000)
return wait
"""


class RateLimited(RequeueLater):
    """No token within the longest wait: the plan goes back to its queue (nothing was sent)."""


class RateLimiter:
    def __init__(self, client: redis.Redis, prefix: str, per_second: float, burst: int, max_wait_seconds: float,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.prefix = prefix
        self.per_second = per_second
        self.burst = burst
        self.max_wait_seconds = max_wait_seconds
        self._take = client.register_script(_TAKE)
        self._sleep = sleep
        self.waited_seconds = 0.0  # in this process, for the figures

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def key(self, account: str, region: str, service: str) -> str:
        return f"{self.prefix}rate:{account}:{region}:{service}"

    def acquire(self, account: str, region: str, service: str) -> None:
        """Return once a token for this account, region and service is taken; raise ``RateLimited`` after the
        longest wait."""
        if not self.enabled:
            return
        key = self.key(account, region, service)
        deadline = time.monotonic() + self.max_wait_seconds
        while True:
            wait_ms = int(self._take(keys=[key], args=[self.per_second, self.burst]))
            if wait_ms <= 0:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                log.info("rate_limited", account=account, region=region, service=service)
                raise RateLimited(f"rate limit of {self.per_second}/s for {service} in {account} {region}",
                                  min(self.max_wait_seconds, 5.0))
            pause = min(wait_ms / 1000, left)
            self.waited_seconds += pause
            self._sleep(pause)
