"""Leases: a running plan is held by one worker at a time.

A lease is ``SET key owner NX PX ttl``; it is renewed by a heartbeat thread while the plan runs and checked
(fencing) right before a mutating call, so a worker that stalled past its lease never sends on behalf of a plan
another worker has taken over.
"""

from __future__ import annotations

import threading
from types import TracebackType

import redis

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseLost(RuntimeError):
    pass


class Lease:
    def __init__(self, client: redis.Redis, key: str, owner: str, ttl_seconds: float) -> None:
        self.redis = client
        self.key = key
        self.owner = owner
        self.ttl_ms = max(int(ttl_seconds * 1000), 100)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self.redis.set(self.key, self.owner, nx=True, px=self.ttl_ms):
            return False
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease:{self.key}", daemon=True)
        self._thread.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]):
                    return
            except redis.RedisError:
                continue  # the fencing check before any send decides; keep trying

    def held(self) -> bool:
        value = self.redis.get(self.key)
        return value is not None and (value.decode() if isinstance(value, bytes) else value) == self.owner

    def ensure_held(self) -> None:
        if not self.held():
            raise LeaseLost(f"lease {self.key} is no longer held by {self.owner}")

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
