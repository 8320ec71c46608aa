"""Leases and signature locks: who may act for a plan, and one plan at a time per purchase signature.

A lease is ``SET key owner NX PX ttl``, renewed by a heartbeat thread while the plan runs. Before a mutating
call the executor renews it and reads how long it has left (``renew_remaining``), on Redis's clock: a send only
starts with more lease left than the send can take (the write client's timeouts plus a margin), so a worker that
pauses after the check for less than the margin has finished its send before anyone else can take the plan over.
A signature lock (calls without a token) is a plain key released by compare-and-delete, the same script as the
lease's release.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

import redis

# Renew if still ours; answer the milliseconds left and Redis's clock (one clock for every worker).
_RENEW_REMAINING = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, now_ms} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {redis.call('PTTL', KEYS[1]), now_ms}
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# Compare-and-delete: shared by leases and signature locks.
RELEASE_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseLost(RuntimeError):
    pass


def redis_now_ms(client: redis.Redis) -> int:
    """Redis's clock in milliseconds: the one clock the executor's deadlines are kept on."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class Lease:
    def __init__(self, client: redis.Redis, key: str, owner: str, ttl_seconds: float) -> None:
        self.redis = client
        self.key = key
        self.owner = owner
        self.ttl_ms = max(int(ttl_seconds * 1000), 100)
        self._renew = client.register_script(_RENEW)
        self._renew_remaining = client.register_script(_RENEW_REMAINING)
        self._release = client.register_script(RELEASE_IF_HELD)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        return self.acquire_reading(None, None)[0]

    def acquire_reading(self, key: str | None, hash_field: str | None) -> tuple[bool, bytes | None]:
        """Take the lease and read one hash field, in one round trip (a pipeline: Redis runs the read after the
        ``SET NX``, so it sees what the new holder would have read next). The value is None when the lease was not
        taken: it must not be used then."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.key, self.owner, nx=True, px=self.ttl_ms)
        if key is not None and hash_field is not None:
            pipe.hget(key, hash_field)
        replies = pipe.execute()
        if not replies[0]:
            return False, None
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease:{self.key}", daemon=True)
        self._thread.start()
        return True, replies[1] if len(replies) > 1 else None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]):
                    return
            except redis.RedisError:
                continue  # the check before any send decides; keep trying

    def held(self) -> bool:
        return _text(self.redis.get(self.key)) == self.owner

    def ensure_held(self) -> None:
        if not self.held():
            raise LeaseLost(f"lease {self.key} is no longer held by {self.owner}")

    def renew_remaining(self) -> tuple[int, int]:
        """Renew the lease and return (milliseconds left, Redis's time in ms); raise LeaseLost if not ours."""
        remaining, now_ms = self._renew_remaining(keys=[self.key], args=[self.owner, self.ttl_ms])
        if int(remaining) < 0:
            raise LeaseLost(f"lease {self.key} is no longer held by {self.owner}")
        return int(remaining), int(now_ms)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        try:
            self._release(keys=[self.key], args=[self.owner])
        except redis.RedisError:
            pass  # it expires on its own

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class SignatureLock:
    """One plan at a time per purchase signature (calls without a token), so that reconciliation can tell whose
    purchase it sees. Held from the intent until the plan settles; a settled holder that crashed before releasing
    is taken over only if it is still that holder (WATCH)."""

    def __init__(self, client: redis.Redis, key: str, plan_id: str) -> None:
        self.redis = client
        self.key = key
        self.plan_id = plan_id
        self._release = client.register_script(RELEASE_IF_HELD)

    def take(self, holder_settled: Callable[[str], bool]) -> str | None:
        """Take the lock; return the other holder if it is busy (``holder_settled(plan_id)`` says whether a
        holder's plan is settled, so its lock is stale)."""
        for _ in range(3):
            if self.redis.set(self.key, self.plan_id, nx=True):
                return None
            holder = _text(self.redis.get(self.key))
            if holder is None:
                continue
            if holder == self.plan_id:
                return None
            if not holder_settled(holder):
                return holder
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(self.key)
                    if _text(pipe.get(self.key)) == holder:
                        pipe.multi()
                        pipe.set(self.key, self.plan_id)
                        pipe.execute()
                        return None
                except redis.WatchError:
                    continue
        return "unknown"

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.plan_id])
