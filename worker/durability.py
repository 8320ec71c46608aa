"""Making a send record durable before a call that has no idempotency token.

The ledger acknowledges a write once Redis has it in memory; a Redis that crashes a moment later can come back
without it (AOF ``everysec`` loses up to a second, a failover loses what the replica had not copied). If the lost
write was "send 1 is about to go out", a worker resuming the plan could think nothing was sent. So before such a
send, the executor waits until the record is durable, in the way the setting ``send_record_durability`` names:

- ``waitaof``: ``WAITAOF 1 0`` (Redis 7.2+ with AOF on): fsynced on the primary;
- ``replicas``: ``WAIT n`` : copied to ``durability_replicas`` replicas;
- ``fsync_always``: the server runs ``appendonly yes`` with ``appendfsync always`` (every write is fsynced);
- ``auto`` (default): the first of those the server offers, checked again once a minute; none: refuse to send;
- ``none``: no wait (throwaway setups only; the docs say what it risks).

Independently of this, a resumed plan always reconciles before it sends (docs/exactly-once.md).
"""

from __future__ import annotations

import time
from typing import Any

import redis

RECHECK_SECONDS = 60.0


class DurabilityUnavailable(RuntimeError):
    """The send record could not be made durable: nothing may be sent."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _config(client: redis.Redis, name: str) -> str | None:
    try:
        values = client.config_get(name)
    except redis.ResponseError:  # CONFIG disabled (managed Redis)
        return None
    value = values.get(name)
    return _text(value) if value is not None else None


def _version(client: redis.Redis) -> tuple[int, ...]:
    raw = str(client.info("server").get("redis_version", "0"))
    return tuple(int(p) for p in raw.split(".")[:3] if p.isdigit())


class SendRecordDurability:
    def __init__(
        self, client: redis.Redis, mode: str, replicas: int = 1, timeout_ms: int = 2000,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        self.redis = client
        self.recheck_seconds = recheck_seconds
        self.mode = mode
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._detected: str | None = None
        self._detected_at = 0.0

    def method(self) -> str:
        """The method in use: waitaof, replicas, fsync_always, none, or unavailable."""
        if self.mode != "auto":
            return self.mode
        if self._detected is None or time.monotonic() - self._detected_at > self.recheck_seconds:
            self._detected, self._detected_at = self._detect(), time.monotonic()
        return self._detected

    def _detect(self) -> str:
        aof = _config(self.redis, "appendonly") == "yes"
        if aof and _version(self.redis) >= (7, 2):
            return "waitaof"
        if int(self.redis.info("replication").get("connected_slaves", 0)) >= self.replicas:
            return "replicas"
        if aof and _config(self.redis, "appendfsync") == "always":
            return "fsync_always"
        return "unavailable"

    def wait(self) -> str:
        """Block until everything written on this connection so far is durable; return the method used."""
        method = self.method()
        if method == "waitaof":
            local, _ = self.redis.execute_command("WAITAOF", 1, 0, self.timeout_ms)
            if int(local) < 1:
                raise DurabilityUnavailable("WAITAOF: the send record was not fsynced in time")
        elif method == "replicas":
            acked = int(self.redis.execute_command("WAIT", self.replicas, self.timeout_ms))
            if acked < self.replicas:
                raise DurabilityUnavailable(f"WAIT: {acked} of {self.replicas} replicas acknowledged the send record")
        elif method == "unavailable":
            raise DurabilityUnavailable(
                "Redis offers no durable write (no WAITAOF, no replica, appendfsync is not 'always'); see "
                "COMMITD_SEND_RECORD_DURABILITY"
            )
        return method
