"""Worker heartbeats and task timings, written from the worker's own processes.

Celery's ``inspect ping`` needs the broadcast channel that ``--without-gossip --without-mingle`` leave quiet, and
answers only for nodes, not pool processes. Instead every worker process (the main one, and each prefork child)
runs a daemon thread that writes, every ``COMMITD_HEARTBEAT_SECONDS`` (5 s), one Lua call: its id in the sorted
set ``{prefix}workers`` scored by Redis's clock (one clock for every host), and what it is doing in the hash
``{prefix}workers:info``. ``commitd status`` and the metrics count a process alive while its last beat is at most
three intervals old; a process that stops cleanly removes itself, one killed ages out, and one not seen for an
hour is forgotten.

Each task run is also timed (``task_prerun`` to ``task_postrun``) into the Redis histogram of
``worker.prometheus`` (one round trip per task). Nothing here can fail a task: Redis errors are logged and the
beat tries again on its next interval.

Connected when the worker imports this module (``import worker.heartbeat`` in worker/celery_app.py, or
``celery worker --include worker.heartbeat``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from celery import signals

from worker.logs import get_logger

log = get_logger("commitd.heartbeat")

ALIVE_BEATS = 3  # a process is alive while its last beat is at most this many intervals old
FORGET_AFTER_MS = 3_600_000

# KEYS: the sorted set, the info hash. ARGV: process id, info JSON, forget-after ms. Returns Redis's time (ms).
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]), 'LIMIT', 0, 100)
for _, id in ipairs(gone) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return now
"""


def workers_key(prefix: str) -> str:
    return f"{prefix}workers"


def workers_info_key(prefix: str) -> str:
    return f"{prefix}workers:info"


def family_of(task_name: str) -> str:
    """``commitd.<family>.run_plan`` → the family's name (other tasks keep their full name)."""
    parts = task_name.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "commitd" and parts[2] == "run_plan" else task_name


@dataclass
class Heartbeat:
    """One process's heartbeat thread, and the tasks it is running now."""

    client: redis.Redis
    prefix: str
    identity: dict[str, Any]
    interval: float
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def id(self) -> str:
        return str(self.identity["id"])

    def info(self) -> dict[str, Any]:
        with self._lock:
            return {**self.identity, "tasks": list(self.tasks.values()), "done": self.done,
                    "interval_s": self.interval}

    def __post_init__(self) -> None:
        self._script = self.client.register_script(_BEAT)

    def beat(self) -> None:
        try:
            self._script(keys=[workers_key(self.prefix), workers_info_key(self.prefix)],
                         args=[self.id, json.dumps(self.info()), FORGET_AFTER_MS])
        except redis.RedisError as exc:
            log.warning("heartbeat_not_written", worker=self.id, error=str(exc))

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.beat()
                self._stop.wait(self.interval)

        threading.Thread(target=loop, name="commitd-heartbeat", daemon=True).start()

    def stop(self) -> None:
        """Stop beating and say so at once (``commitd status`` no longer counts this process)."""
        self._stop.set()
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.zrem(workers_key(self.prefix), self.id)
            pipe.hdel(workers_info_key(self.prefix), self.id)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("heartbeat_not_removed", worker=self.id, error=str(exc))

    def task_started(self, task_id: str, name: str, plan_id: str | None) -> None:
        with self._lock:
            self.tasks[task_id] = {"task": name, "plan_id": plan_id, "since": datetime.now(UTC).isoformat()}

    def task_finished(self, task_id: str) -> None:
        with self._lock:
            if self.tasks.pop(task_id, None) is not None:
                self.done += 1


# --- the worker's signals --------------------------------------------------------------------------------------
# The node's identity, set in the main process before the pool forks (children inherit it).
_node: dict[str, Any] = {}
# This process's heartbeat: keyed by pid, so a child forked from a process that has one starts its own.
_beats: dict[int, Heartbeat] = {}
# Task start times (monotonic), by task id.
_started: dict[str, float] = {}


def _start(role: str) -> None:
    from worker.results import ObservabilitySettings
    from worker.runtime import get_runtime

    runtime = get_runtime()
    node = _node.get("node") or socket.gethostname()
    pid = os.getpid()
    identity = {"id": f"{node}:{pid}", "node": node, "host": socket.gethostname(), "pid": pid, "role": role,
                "pool": _node.get("pool"), "concurrency": _node.get("concurrency"), "queues": _node.get("queues", []),
                "started_at": datetime.now(UTC).isoformat()}
    interval = ObservabilitySettings.load(runtime.settings).heartbeat_seconds
    beat = Heartbeat(runtime.redis, runtime.settings.key_prefix, identity, interval)
    _beats[pid] = beat
    beat.start()


def _current() -> Heartbeat | None:
    return _beats.get(os.getpid())


@signals.worker_init.connect(dispatch_uid="commitd.heartbeat.worker_init")
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    try:
        _node.update(node=str(sender.hostname), concurrency=sender.concurrency,
                     pool=getattr(sender.pool_cls, "__name__", str(sender.pool_cls)),
                     queues=sorted(sender.app.amqp.queues.consume_from or {}))
    except Exception as exc:  # identity is decoration: the heartbeat goes on with what it has
        log.warning("heartbeat_identity_incomplete", error=str(exc))


@signals.worker_ready.connect(dispatch_uid="commitd.heartbeat.worker_ready")
def _on_worker_ready(**_: Any) -> None:
    _start("main")


@signals.worker_process_init.connect(dispatch_uid="commitd.heartbeat.worker_process_init")
def _on_process_init(**_: Any) -> None:
    _start("pool")


@signals.worker_process_shutdown.connect(dispatch_uid="commitd.heartbeat.worker_process_shutdown")
@signals.worker_shutdown.connect(dispatch_uid="commitd.heartbeat.worker_shutdown")
def _on_shutdown(**_: Any) -> None:
    beat = _beats.pop(os.getpid(), None)
    if beat is not None:
        beat.stop()


@signals.task_prerun.connect(dispatch_uid="commitd.heartbeat.task_prerun")
def _on_task_prerun(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    if task_id is None:
        return
    _started[task_id] = time.monotonic()
    beat = _current()
    if beat is not None and task is not None:
        plan_id = args[0] if args and isinstance(args[0], str) else None
        beat.task_started(task_id, str(task.name), plan_id)


@signals.task_postrun.connect(dispatch_uid="commitd.heartbeat.task_postrun")
def _on_task_postrun(task_id: str | None = None, task: Any = None, retval: Any = None, state: str | None = None,
                     **_: Any) -> None:
    started = _started.pop(task_id, None) if task_id is not None else None
    beat = _current()
    if beat is not None and task_id is not None:
        beat.task_finished(task_id)
    if started is None or task is None:
        return
    from worker.prometheus import record_task_run
    from worker.runtime import get_runtime

    runtime = get_runtime()
    record_task_run(runtime.redis, runtime.settings.key_prefix, family_of(str(task.name)),
                    task_outcome(retval, state), time.monotonic() - started)


# What a family task returns (worker.execution.run_plan): the plan's state afterwards, or why it did not run.
KNOWN_RETURNS = frozenset({"received", "rejected", "scheduled", "awaiting_approval", "queued", "running", "submitted",
                           "succeeded", "failed", "needs_attention", "cancelled", "expired", "leased_elsewhere",
                           "concurrent_update", "lease_lost", "not_found"})


def task_outcome(retval: Any, state: str | None) -> str:
    """A bounded label for a task run: the plan's state after it, ``requeued`` (it waits), or ``error``."""
    if state is not None and state != "SUCCESS":
        return "error"
    if isinstance(retval, str):
        if retval.startswith("requeued"):
            return "requeued"
        if retval in KNOWN_RETURNS:
            return retval
    return "other"
