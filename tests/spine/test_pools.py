"""The threads pool (worker/celery_app.py ``ThreadsPool``): plans of a `commitd worker --pool threads` at
concurrency 16 run side by side and finish, each bought exactly once; a finished task wakes the worker's event loop
(which otherwise would not take the next message until its next timer, seconds later)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sandbox.control import SandboxControl
from tests.spine.conftest import ACCOUNT, ROOT, TAGGING_ACCOUNT, WorkerProcess, ri_plan, wait_for_state
from worker.celery_app import ThreadsPool
from worker.runtime import Runtime

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
TYPES = ("m5.large", "m5.xlarge", "c5.large", "r5.large", "t3.medium")


class ThreadsWorker(WorkerProcess):
    """`commitd worker --pool threads --concurrency N` (every family queue) in its own process group; stopped and
    killed like the spine's prefork workers."""

    def __init__(self, env: dict[str, str], name: str, concurrency: int) -> None:
        self.log = Path(tempfile.mkstemp(prefix=f"commitd-threads-{name}-", suffix=".log")[1])
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker", "--pool", "threads", "--concurrency", str(concurrency)],
            cwd=ROOT, env={**os.environ, **env}, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            if b"ready." in self.log.read_bytes():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"threads worker {name} did not start:\n{self.log.read_text()[-3000:]}")


def submit_all(intake: Any, plans: list[dict[str, Any]]) -> None:
    for plan in plans:
        result = intake.submit_raw(json.dumps(plan), "test")
        assert result.outcome == "accepted", result


def most_at_once(runtime: Runtime, operation: str) -> int:
    """The most calls of ``operation`` in flight at the same moment, from the audit (each entry is appended when
    its call ends and records how long it took)."""
    edges = []
    for entry in runtime.audit.records():
        if entry.get("event") == "aws_call" and entry.get("operation") == operation:
            end = datetime.fromisoformat(entry["at"])
            edges += [(end - timedelta(milliseconds=entry["duration_ms"]), 1), (end, -1)]
    peak = current = 0
    for _, step in sorted(edges):
        current += step
        peak = max(peak, current)
    return peak


def test_sixteen_plans_at_once_in_a_threads_worker_each_buy_exactly_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, env: dict[str, str]
) -> None:
    # 30 plans, each its own purchase signature (account, region, offering), so none waits for another; every
    # purchase takes 2 s at the sandbox, long enough for the plans' reads (which share one process's GIL, slowly on a
    # busy machine: 200 ms let only 10 overlap under load) to bring most threads to their purchase at once. The
    # worker's write timeout and lease are raised to fit a 2 s answer.
    plans = [{**ri_plan(f"pool-{n}", instance_type=t, instance_count=1, max_hourly_usd="1.00"), "account_id": a,
              "region": r}
             for n, (a, r, t) in enumerate((a, r, t) for a in (ACCOUNT, TAGGING_ACCOUNT) for r in REGIONS
                                           for t in TYPES)]
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "latency", probability=1.0, latency_ms=2000)
    slow_answers = {"COMMITD_WRITE_READ_TIMEOUT": "5", "COMMITD_LEASE_SECONDS": "10"}
    worker = ThreadsWorker({**env, **slow_answers}, "sixteen", 16)
    try:
        submit_all(intake, plans)
        records = [wait_for_state(runtime, p["plan_id"], {"succeeded"}, timeout=90) for p in plans]
    finally:
        worker.stop()
    bought = [r for r in sandbox.resources(type="reserved-instances")
              if r["created_by"]["operation"] == "ec2:PurchaseReservedInstancesOffering"]
    assert sorted(r["id"] for r in bought) == sorted(rec.result["resource_ids"][0] for rec in records)
    assert len(bought) == len(plans)  # one RI per plan: nothing bought twice
    assert all(rec.book is not None and rec.book["sends"] == 1 for rec in records)
    assert most_at_once(runtime, "purchase_reserved_instances_offering") >= 12, "the pool ran plans side by side"
    assert runtime.audit.verify().ok


class _Hub:
    """What ThreadsPool needs of Celery's event loop: readers on file descriptors."""

    def __init__(self) -> None:
        self.readers: dict[int, Any] = {}

    def add_reader(self, fd: int, callback: Any) -> None:
        self.readers[fd] = callback


def test_a_finished_task_wakes_the_event_loop() -> None:
    pool = ThreadsPool(limit=2)
    hub = _Hub()
    pool.register_with_event_loop(hub)
    [(fd, drain)] = hub.readers.items()
    acked: list[Any] = []
    try:
        assert select.select([fd], [], [], 0)[0] == []  # asleep: nothing to wake it for
        pool.on_apply(lambda: "done", callback=acked.append)
        # The loop's poll returns (the pipe is readable) once the task ran and its callback acknowledged it.
        assert select.select([fd], [], [], 30)[0] == [fd]
        assert acked == ["done"]
        drain()
        assert select.select([fd], [], [], 0)[0] == []
    finally:
        pool.on_stop()
