"""Retention and the operator's reads: Redis memory before and after retention, and how long the CLI's pages take.

1. Memory: N RI purchase plans (default 3,000; every tenth invalid, so rejected with a dead letter) XADDed to the
   intake stream, recorded by the intake and run by the executor in this process, each one's look-alike check run
   too (the sandbox in-process, a private redis-server); then `commitd retention run` (the real CLI) with every age
   at 0 and an archive directory, and again once purged tombstones are past the redelivery window
   (COMMITD_VISIBILITY_TIMEOUT, its minimum of 10 s). Redis's used_memory after MEMORY PURGE, and the largest key
   families, at each step.
2. Reads: plans written through the ledger API (received, running, then succeeded, or failed for every tenth), and
   the wall time of `commitd plans list --state failed --limit 20` and `commitd audit tail -n 20` (the CLI as a
   subprocess, median of 5) at 200 and at 10,000 plans; `commitd --help`, the interpreter and imports alone, beside
   them.

It prints a table and writes nothing else (with --json, the figures as JSON on stdout instead).

    .venv/bin/python bench/retention.py [--plans 3000] [--ledger 200,10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the bench/e2e helpers and commitd's packages

from bench.e2e.harness import OFFERINGS, free_port, wait_until  # noqa: E402
from config.settings import Settings  # noqa: E402
from sandbox.server import SandboxServer  # noqa: E402
from worker.demo import scoped_environ  # noqa: E402
from worker.logs import configure_logging  # noqa: E402
from worker.plans import PlanState  # noqa: E402
from worker.runtime import Runtime, set_runtime  # noqa: E402

ACCOUNT = "111122223333"
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
COMMITD = [sys.executable, "-m", "worker.cli"]
RUNS = 5


def ri_plan(n: int, prefix: str = "bench") -> dict[str, Any]:
    """The n-th plan; its offering and region rotate, so no two plans in a row share a signature."""
    offering = dict(OFFERINGS[n % len(OFFERINGS)])
    region = REGIONS[(n // len(OFFERINGS)) % len(REGIONS)]
    if "availability_zone" in offering:
        offering["availability_zone"] = region + str(offering["availability_zone"])
    return {"plan_id": f"{prefix}-{n:06d}", "action": "ec2:PurchaseReservedInstancesOffering", "account_id": ACCOUNT,
            "region": region, "requested_by": "bench", "trigger": "queued",
            "params": {**offering, "offering_type": "No Upfront", "instance_count": 0 if n % 10 == 9 else 1,
                       "max_upfront_usd": "0", "max_hourly_usd": "1.00"}}


class RedisServer:
    """A private redis-server on a free port, without AOF: fsync on every write would make 3,000 plans take many
    minutes on a shared disk and changes no byte of the dataset, so send records go without durability here
    (COMMITD_SEND_RECORD_DURABILITY=none, for throwaway setups)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port)
        wait_until(self._up, 10, "redis-server")

    def _up(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


@contextmanager
def environment(sandbox_url: str) -> Iterator[tuple[RedisServer, dict[str, str], Path]]:
    """A private redis-server and the environment commitd's processes use with it."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    workdir = Path(tempfile.mkdtemp(prefix="commitd-bench-retention-"))
    server = RedisServer(workdir)
    accounts = workdir / "accounts.json"
    accounts.write_text(json.dumps({"accounts": [
        {"account_id": ACCOUNT, "role_arn": f"arn:aws:iam::{ACCOUNT}:role/commitd"}]}))
    env = {"COMMITD_REDIS_URL": server.url, "COMMITD_AWS_ENDPOINT_URL": sandbox_url,
           "COMMITD_ACCOUNTS_FILE": str(accounts), "COMMITD_CONSISTENCY_DELAY_SECONDS": "0",
           "COMMITD_SEND_MARGIN_SECONDS": "0", "COMMITD_SEND_RECORD_DURABILITY": "none",
           "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    try:
        yield server, env, workdir
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def runtime_for(env: dict[str, str], **settings: Any) -> Runtime:
    with scoped_environ(env):
        runtime = Runtime(Settings(**settings))
    set_runtime(runtime)
    return runtime


def memory(client: redis.Redis) -> int:
    client.execute_command("MEMORY", "PURGE")  # freed pages back to the system: RSS follows used_memory
    return int(client.info("memory")["used_memory"])


def families(client: redis.Redis, top: int = 5) -> list[tuple[str, int, int]]:
    """The largest key families (digits folded), as (pattern, keys, bytes)."""
    sizes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for key in client.scan_iter(count=1000):
        pattern = "".join("#" if ch.isdigit() else ch for ch in key.decode(errors="replace"))
        sizes[pattern] += int(client.memory_usage(key) or 0)
        counts[pattern] += 1
    return [(k, counts[k], v) for k, v in sizes.most_common(top)]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*COMMITD, *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"commitd {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done


# --- 1. memory before and after retention -----------------------------------------------------------------------
def memory_run(sandbox_url: str, plans: int) -> dict[str, Any]:
    from tasks import ACTIONS
    from worker import celery_app
    from worker.execution import run_plan
    from worker.intake import Intake

    # The look-alike check is run here right after the plan, not sent to a Celery worker there is none of.
    celery_app.enqueue = lambda *args, **kwargs: None  # type: ignore[assignment]
    with environment(sandbox_url) as (server, env, workdir):
        runtime = runtime_for(env)
        celery_app.configure(celery_app.app, runtime.settings)
        intake = Intake(runtime, ACTIONS, lambda family, plan_id: None)
        client, stream = server.client, runtime.key("plans")
        empty = memory(client)
        started = time.monotonic()
        for n in range(plans):
            client.xadd(stream, {"plan": json.dumps(ri_plan(n))})
            intake.consume_once("bench", block_ms=10)
            record = runtime.ledger.get(ri_plan(n)["plan_id"])
            if record is not None and record.state == PlanState.QUEUED:
                run_plan(runtime, record.plan_id, ACTIONS)
                run_plan(runtime, record.plan_id, ACTIONS)  # its look-alike check
        settled = {s.value: n for s in PlanState if (n := len(runtime.ledger.ids(s)))}
        steps: list[dict[str, Any]] = [{"step": f"{plans} plans settled", "used_memory": memory(client),
                                        "families": families(client), "seconds": time.monotonic() - started}]
        retention = {**env, "COMMITD_RETENTION_PLANS_DAYS": "0", "COMMITD_RETENTION_STREAM_DAYS": "0",
                     "COMMITD_AUDIT_RETENTION_DAYS": "0", "COMMITD_AUDIT_ARCHIVE_DIR": str(workdir / "archive"),
                     "COMMITD_VISIBILITY_TIMEOUT": "10"}
        reports: list[dict[str, Any]] = []
        for step in ("after retention", "after retention, tombstones past 10 s"):
            if reports:
                time.sleep(11)
            t0 = time.monotonic()
            reports.append(json.loads(cli(retention, "retention", "run").stdout))
            steps.append({"step": step, "used_memory": memory(client), "families": families(client),
                          "seconds": time.monotonic() - t0})
        archive = sum(p.stat().st_size for p in (workdir / "archive").glob("*"))
        return {"plans": plans, "empty_redis": empty, "steps": steps, "retention_runs": reports,
                "archive_bytes": archive, "states": settled}


# --- 2. the CLI's reads at 200 and 10,000 plans -----------------------------------------------------------------
def write_plans(runtime: Runtime, start: int, stop: int) -> None:
    """Plans through the ledger API: received, running, then failed (every tenth) or succeeded."""
    from worker.ledger import PlanRecord

    ledger = runtime.ledger
    for n in range(start, stop):
        body = ri_plan(n, "ledger")
        body["params"]["instance_count"] = 1
        now = datetime.now(UTC)
        record = ledger.create(PlanRecord(plan_id=body["plan_id"], state=PlanState.QUEUED, plan=body,
                                          canonical=json.dumps(body, sort_keys=True), received_at=now,
                                          updated_at=now), "bench")
        record = ledger.transition(record, PlanState.RUNNING, "bench")
        if n % 10 == 9:
            ledger.transition(record, PlanState.FAILED, "bench",
                              error={"code": "InsufficientInstanceCapacity", "message": "bench"})
        else:
            ledger.transition(record, PlanState.SUCCEEDED, "bench", result={"resource_ids": [f"ri-{n:08d}"]})


def timed(env: dict[str, str], *args: str) -> tuple[float, str]:
    times = []
    out = ""
    for _ in range(RUNS):
        t0 = time.perf_counter()
        out = cli(env, *args).stdout
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def inprocess(read: Callable[[], object]) -> float:
    """The same read in this process (no interpreter start, no imports): median of RUNS."""
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        read()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reads_run(sandbox_url: str, sizes: list[int]) -> list[dict[str, Any]]:
    from worker.ledger_views import plans_page

    rows = []
    with environment(sandbox_url) as (server, env, _):
        runtime = runtime_for(env)
        written = 0
        for size in sorted(sizes):
            t0 = time.monotonic()
            write_plans(runtime, written, size)
            written = size
            wrote = time.monotonic() - t0
            listed, out = timed(env, "plans", "list", "--state", "failed", "--limit", "20")
            tail, tail_out = timed(env, "audit", "tail", "-n", "20")
            startup, _ = timed(env, "--help")
            page = inprocess(lambda: plans_page(runtime.ledger, PlanState.FAILED, 20))
            tail_in = inprocess(lambda: list(runtime.audit.tail(20, None)))
            rows.append({"plans": size, "plans_list_failed_20_s": listed, "audit_tail_20_s": tail,
                         "cli_startup_s": startup, "page_inprocess_s": page, "tail_inprocess_s": tail_in,
                         "listed_rows": len(out.strip().splitlines()),
                         "tail_rows": len(tail_out.strip().splitlines()),
                         "audit_entries": int(server.client.xlen(runtime.key("audit"))),
                         "used_memory": memory(server.client), "write_seconds": wrote})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=3000, help="plans settled before retention")
    parser.add_argument("--ledger", default="200,10000", help="ledger sizes at which the reads are timed")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args()
    configure_logging("json", "ERROR")  # the table is the output (rejected plans warn by design)
    sandbox = SandboxServer().start()
    try:
        mem = memory_run(sandbox.url, args.plans)
        reads = reads_run(sandbox.url, [int(s) for s in args.ledger.split(",")])
    finally:
        sandbox.stop()
    if args.json:
        print(json.dumps({"memory": mem, "reads": reads}, indent=2, default=str))
        return 0
    mb = 1024 * 1024
    print(f"Redis memory (used_memory after MEMORY PURGE; an empty Redis: {mem['empty_redis'] / mb:.2f} MB)")
    print(f"  {'step':42s} {'used_memory':>12s}  largest key families (keys, bytes)")
    for step in mem["steps"]:
        top = ", ".join(f"{k} {n}/{b / 1024:.0f} KB" for k, n, b in step["families"][:4])
        print(f"  {step['step']:42s} {step['used_memory'] / mb:9.2f} MB  {top}")
    first = mem["retention_runs"][0]
    print(f"  first run: {first.get('plans_purged')} plans purged, {first.get('stream_trimmed')} stream entries and "
          f"{first.get('dead_letters_archived')} dead letters trimmed, audit {first.get('audit')}; "
          f"archive {mem['archive_bytes'] / mb:.1f} MB")
    print()
    print(f"CLI reads, wall time of the command as a subprocess, median of {RUNS}")
    print("  (in process: the same read without starting Python, plans_page and AuditLog.tail)")
    print(f"  {'plans':>7s} {'audit entries':>13s} {'plans list --state failed --limit 20':>38s} "
          f"{'audit tail -n 20':>22s} {'commitd --help':>15s}")
    for row in reads:
        print(f"  {row['plans']:7d} {row['audit_entries']:13d} {row['plans_list_failed_20_s'] * 1000:11.0f} ms "
              f"(in process {row['page_inprocess_s'] * 1000:6.1f} ms) {row['audit_tail_20_s'] * 1000:6.0f} ms "
              f"({row['tail_inprocess_s'] * 1000:5.1f} ms) {row['cli_startup_s'] * 1000:12.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
