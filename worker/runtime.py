"""The objects a daemon process shares: settings, Redis, ledger, accounts, AWS sessions.

Built once per process, on first use, from the environment; tests build their own with explicit settings.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from functools import cached_property

import redis
from redis import Redis

from config.accounts import AccountRegistry, ReloadingRegistry
from config.settings import Settings, get_settings
from worker.audit import AuditLog
from worker.aws import AwsSessions
from worker.budgets import Budgets
from worker.durability import SendRecordDurability
from worker.ledger import Ledger
from worker.metrics import Metrics
from worker.ratelimit import RateLimiter
from worker.redis_connect import redis_client
from worker.switches import Switches


@dataclass
class Runtime:
    settings: Settings
    _per_thread: threading.local = field(default_factory=threading.local, init=False, repr=False, compare=False)

    @cached_property
    def redis(self) -> redis.Redis:
        """The pooled client of the ledger, intake, audit, leases and metrics (``worker.redis_connect``: a plain
        or TLS URL, or the master the sentinels name)."""
        return redis_client(self.settings)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.redis, self.settings.key_prefix, results_maxlen=self.settings.results_maxlen)

    @property
    def audit(self) -> AuditLog:
        return self.ledger.audit

    @cached_property
    def _accounts(self) -> ReloadingRegistry:
        return ReloadingRegistry(self.settings.accounts_file)

    @property
    def accounts(self) -> AccountRegistry:
        """The account registry as its file is now: reloaded when the file changes (checked on every use, so a
        running worker sees a limit lowered or an action withdrawn before its next send)."""
        return self._accounts.current()

    @property
    def send_record_redis(self) -> Redis:
        """One connection for a send record and the wait for its durability (WAIT counts this connection's writes),
        per thread: a threads pool runs plans side by side, and redis-py's single-connection client is not safe to
        share between threads (replies would reach the wrong caller).
        With Sentinel it is a connection to the current master; a failover breaks it, and the next command opens
        one to the new master. A command is never retried on the new connection by itself, so a WAIT always asks
        about the writes made on the connection it runs on."""
        client: Redis | None = getattr(self._per_thread, "send_record_redis", None)
        if client is None:
            client = self._per_thread.send_record_redis = redis_client(self.settings, single_connection=True)
        return client

    @property
    def send_record_durability(self) -> SendRecordDurability:
        """How send records are made durable: detected once and re-checked once a minute, per thread (over that
        thread's send record connection)."""
        durability: SendRecordDurability | None = getattr(self._per_thread, "send_record_durability", None)
        if durability is None:
            s = self.settings
            durability = self._per_thread.send_record_durability = SendRecordDurability(
                self.send_record_redis, s.send_record_durability, s.durability_replicas, s.durability_timeout_ms)
        return durability

    @cached_property
    def metrics(self) -> Metrics:
        return Metrics(self.redis, self.key("metrics"))

    @cached_property
    def switches(self) -> Switches:
        return Switches(self.redis, self.settings.key_prefix)

    @cached_property
    def budgets(self) -> Budgets:
        return Budgets(self.redis, self.settings.key_prefix)

    @cached_property
    def rate_limiter(self) -> RateLimiter:
        s = self.settings
        return RateLimiter(self.redis, s.key_prefix, s.rate_limit_per_second, s.rate_limit_burst,
                           s.rate_limit_max_wait_seconds)

    @cached_property
    def sessions(self) -> AwsSessions:
        return AwsSessions(self.settings, self.audit)

    def key(self, *parts: str) -> str:
        return self.settings.key(*parts)

    @property
    def worker_id(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None or _runtime_pid != os.getpid():
            _set(Runtime(get_settings()))
        assert _runtime is not None
        return _runtime


_runtime_pid = -1


def _set(runtime: Runtime) -> None:
    global _runtime, _runtime_pid
    _runtime = runtime
    _runtime_pid = os.getpid()


def set_runtime(runtime: Runtime) -> None:
    """Use this runtime in this process (tests, the demo)."""
    with _lock:
        _set(runtime)
