"""Points where a test can hold or kill a real worker process, and shift its clock. Off in production.

A test sets ``COMMITD_TEST_HOOK_REDIS`` (a Redis URL) and ``COMMITD_TEST_HOOK_<POINT>=stop|kill`` in a worker's
environment. The first process to reach the point (once per point, across processes) pushes its pid to the Redis
list ``testhook:<point>`` and then stops itself with SIGSTOP (the test resumes it with SIGCONT) or dies with
SIGKILL. ``COMMITD_TEST_BARRIER_<POINT>=N`` makes every process that reaches the point wait there until N have
(so N operators' commands read before any of them writes). ``COMMITD_TEST_CLOCK_OFFSET_SECONDS`` makes the worker's
clock run fast or slow.
"""

from __future__ import annotations

import os
import signal
import time

import redis

POINTS = ("AFTER_READS", "BEFORE_CONTROLS", "BEFORE_SEND", "AFTER_SEND")
BARRIERS = ("BEFORE_APPROVAL_WRITE",)
BARRIER_TIMEOUT_SECONDS = 30.0


def _hook_client(setting: str) -> tuple[str, redis.Redis] | None:
    """The setting's value and a client to the test's Redis, or None when this hook is off (always in production)."""
    value = os.environ.get(setting)
    url = os.environ.get("COMMITD_TEST_HOOK_REDIS")
    if not value or not url:
        return None
    return value, redis.Redis.from_url(url)


def checkpoint(point: str) -> None:
    hook = _hook_client(f"COMMITD_TEST_HOOK_{point}")
    if hook is None:
        return
    what, client = hook
    if not client.set(f"testhook:fired:{point}", os.getpid(), nx=True):
        return
    client.rpush(f"testhook:{point}", f"{os.getpid()} {time.time()}")
    client.close()
    os.kill(os.getpid(), signal.SIGSTOP if what == "stop" else signal.SIGKILL)


def barrier(point: str) -> None:
    """Wait until ``COMMITD_TEST_BARRIER_<point>`` processes have reached this point (then all go on at once)."""
    hook = _hook_client(f"COMMITD_TEST_BARRIER_{point}")
    if hook is None:
        return
    wanted, client = hook
    key = f"testhook:barrier:{point}"
    client.incr(key)
    deadline = time.monotonic() + BARRIER_TIMEOUT_SECONDS
    while int(client.get(key) or 0) < int(wanted):
        if time.monotonic() > deadline:
            raise RuntimeError(f"test barrier {point}: fewer than {wanted} processes arrived")
        time.sleep(0.01)
    client.close()


def clock_offset_seconds() -> float:
    return float(os.environ.get("COMMITD_TEST_CLOCK_OFFSET_SECONDS", "0") or 0)
