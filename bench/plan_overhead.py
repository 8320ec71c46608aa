"""Daemon overhead per plan: what commitd adds around the AWS calls of one RI purchase, and its Redis commands.

Runs N plans through intake and the executor in this process (no Celery: the task is a thin wrapper), against
the sandbox in-process and a private redis-server. For each plan: the time intake takes to record it, the time
the executor takes, and the time spent inside AWS calls (measured around each boto3 call, as audited); the
daemon's overhead is the executor's time minus the AWS time. Redis commands are counted with INFO commandstats.

    .venv/bin/python bench/plan_overhead.py [--plans 200]

ROADMAP targets (informational): ≤ 5 ms daemon overhead per plan at p50, ≤ 15 Redis commands per plan.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from config.settings import Settings
from sandbox.control import SandboxControl
from sandbox.server import SandboxServer
from tasks import ACTIONS
from worker.execution import run_plan
from worker.intake import Intake
from worker.logs import configure_logging
from worker.runtime import Runtime, set_runtime

ACCOUNT = "111122223333"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def commands(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if not k.startswith("cmdstat_info"))


def count_round_trips(client: redis.Redis) -> list[int]:
    """Count the client's requests to Redis (a pipeline or a script call is one)."""
    counter = [0]
    execute = client.execute_command

    def counted(*args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return execute(*args, **kwargs)

    client.execute_command = counted  # type: ignore[method-assign]
    return counter


def plan(n: int) -> dict[str, Any]:
    return {
        "plan_id": f"bench-{n}",
        "action": "ec2:PurchaseReservedInstancesOffering",
        "account_id": ACCOUNT,
        "region": "us-east-1",
        "params": {"instance_type": "m5.large", "offering_class": "standard", "offering_type": "No Upfront",
                   "duration_years": 1, "scope": "Region", "instance_count": 1, "max_upfront_usd": "0",
                   "max_hourly_usd": "0.10"},
        "requested_by": "bench",
        "trigger": "queued",
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=200)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server is needed (apt-get install redis-server)")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="commitd-bench-"))
    port = free_port()
    redis_proc = subprocess.Popen(
        # appendfsync always: send records are durable before a call without a token (docs/exactly-once.md)
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "yes", "--appendfsync", "always",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    sandbox = SandboxServer().start()
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        accounts = workdir / "accounts.json"
        accounts.write_text(json.dumps({"accounts": [
            {"account_id": ACCOUNT, "role_arn": f"arn:aws:iam::{ACCOUNT}:role/commitd"}]}))
        settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", aws_endpoint_url=sandbox.url,
                            accounts_file=accounts, log_level="WARNING")
        configure_logging("json", "WARNING")
        runtime = Runtime(settings)
        set_runtime(runtime)
        from worker.celery_app import app, configure

        configure(app, settings)  # the look-alike check is scheduled as a task message: on this Redis
        intake = Intake(runtime, ACTIONS, lambda family, plan_id: None)
        for n in range(5):  # warm up: sessions, clients, scripts
            intake.submit_raw(json.dumps(plan(-1 - n)), "bench")
            run_plan(runtime, f"bench-{-1 - n}", ACTIONS)
        SandboxControl(sandbox.url)  # the sandbox keeps its resources; nothing to reset for this measure
        intake_ms: list[float] = []
        run_ms: list[float] = []
        overhead_ms: list[float] = []
        round_trips = count_round_trips(runtime.redis)
        server_before = commands(client)
        trips_before = round_trips[0]
        aws_ms: dict[str, float] = {}
        for n in range(args.plans):
            started = time.perf_counter()
            intake.submit_raw(json.dumps(plan(n)), "bench")
            recorded = time.perf_counter()
            state = run_plan(runtime, f"bench-{n}", ACTIONS)
            finished = time.perf_counter()
            assert state == "succeeded", state
            intake_ms.append((recorded - started) * 1000)
            run_ms.append((finished - recorded) * 1000)
        trips = (round_trips[0] - trips_before) / args.plans
        server = (commands(client) - server_before) / args.plans
        for record in runtime.audit.records():  # read once at the end, so it is not counted above
            if record.get("event") == "aws_call":
                aws_ms[record["plan_id"]] = aws_ms.get(record["plan_id"], 0.0) + record.get("duration_ms", 0.0)
        overhead_ms = [run - aws_ms.get(f"bench-{n}", 0.0) for n, run in enumerate(run_ms)]
        print(f"{args.plans} plans (ec2:PurchaseReservedInstancesOffering, sandbox in-process, private Redis)")
        for name, values in (("intake (record + route)", intake_ms), ("executor (total)", run_ms),
                             ("executor minus AWS calls", overhead_ms)):
            print(f"  {name:28s} p50 {statistics.median(values):7.2f} ms   p90 {pct(values, 0.9):7.2f} ms")
        daemon = [i + o for i, o in zip(intake_ms, overhead_ms, strict=True)]
        print(f"  {'daemon overhead per plan':28s} p50 {statistics.median(daemon):7.2f} ms   (target ≤ 5 ms)")
        print(f"  Redis round trips per plan   {trips:7.1f}        (target ≤ 15)")
        print(f"  Redis commands executed      {server:7.1f}        (counting those inside Lua scripts)")
        return 0
    finally:
        sandbox.stop()
        redis_proc.terminate()
        redis_proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
