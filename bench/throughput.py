"""Throughput end to end, as deployed, beside two baselines; writes bench/results/latest.{json,md,png}.

Everything runs on this machine in one go, on one private redis-server (appendfsync always) and one sandbox
process (with a latency fault on every call for the 50 ms runs):

- commitd: RI purchase plans XADDed to the plan stream, read by ``commitd intake`` (its own process), run by a
  Celery worker (its own process, ``-P threads`` unless said otherwise), bought in the sandbox over HTTP; each plan
  ends with its look-alike check (a second task, due 1.5 s after success here). Plans rotate over the 48 No
  Upfront offerings of a region, because one plan at a time may hold an offering in an account and region.
- no-op Celery: a task that does nothing but count itself, on the same broker with commitd's Celery settings (late
  acks, prefetch 1, JSON): the floor Celery sets.
- bare boto3: the same AWS calls per plan (AssumeRole for reads once per account, DescribeReservedInstancesOfferings,
  AssumeRole for the plan, PurchaseReservedInstancesOffering, DescribeReservedInstances) from a thread pool of the
  same size, one client per thread and region: no Celery, ledger, audit, lease or durable write.

Per run: plans/s (plans / time from the first XADD to the last success), p50/p95/p99 from XADD to succeeded, the
daemon's CPU time per plan (intake + worker processes, /proc), Redis commands per plan (INFO commandstats, counting
those inside scripts; the look-alike checks included). One run with MONITOR counts round trips, commitd's and
Celery's apart. One run takes 1,000 accounts × 3 regions through one worker and reads its RSS and cache figures.

    .venv/bin/python bench/throughput.py [--quick]

Targets are reported against (issue 8), not asserted: nothing fails on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3
import botocore
from botocore.config import Config

from bench.e2e import harness
from bench.e2e.harness import REGIONS, Daemon, RedisServer, Sandbox
from bench.e2e.report import write_report

PREFIX = "commitd:"
CELERY_PREFIX = f"{PREFIX}celery:"
COMMITD_QUEUE = "commitd.ec2_reserved_instances"


class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.workdir = Path(tempfile.mkdtemp(prefix="commitd-bench-"))
        self.redis = RedisServer()
        self.sandbox = Sandbox()
        self.accounts: dict[int, tuple[Path, list[str]]] = {}
        self.polls = 0

    def close(self) -> None:
        self.sandbox.stop()
        self.redis.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def scale(self, n: int) -> int:
        return max(n // 4, 8) if self.quick else n

    def env(self, accounts: int, stats_dir: Path | None = None) -> dict[str, str]:
        if accounts not in self.accounts:
            self.accounts[accounts] = harness.accounts_file(self.workdir, accounts)
        values = {
            "COMMITD_REDIS_URL": self.redis.url,
            "COMMITD_AWS_ENDPOINT_URL": self.sandbox.url,
            "COMMITD_ACCOUNTS_FILE": str(self.accounts[accounts][0]),
            "COMMITD_KEY_PREFIX": PREFIX,
            "COMMITD_LOG_FORMAT": "json",
            "COMMITD_LOG_LEVEL": "INFO",  # as deployed
            # The look-alike check is due consistency delay + margin after success (35 s by default): shortened,
            # so that each run's checks happen inside it and are counted.
            "COMMITD_CONSISTENCY_DELAY_SECONDS": "0.5",
            "COMMITD_SEND_MARGIN_SECONDS": "1",
            "AWS_ACCESS_KEY_ID": "commitd-base",
            "AWS_SECRET_ACCESS_KEY": "commitd-base",
        }
        if stats_dir is not None:
            values["BENCH_STATS_DIR"] = str(stats_dir)
        return values

    # --- helpers ------------------------------------------------------------------------------------------------
    def _count(self, key: str, kind: str = "scard") -> int:
        self.polls += 1
        return int(getattr(self.redis.client, kind)(key))

    def _settled(self) -> tuple[int, int]:
        """(succeeded, settled otherwise)."""
        ok = self._count(f"{PREFIX}index:state:succeeded")
        other = sum(self._count(f"{PREFIX}index:state:{s}") for s in ("failed", "needs_attention", "expired"))
        return ok, other

    def _submit(self, plans: list[dict[str, Any]]) -> dict[str, int]:
        """XADD the plans (as a producer would, 100 to a pipeline); their entry ids' times."""
        added: dict[str, int] = {}
        for chunk in harness.chunks(plans, 100):
            pipe = self.redis.client.pipeline(transaction=False)
            for plan in chunk:
                pipe.xadd(f"{PREFIX}plans", {"plan": json.dumps(plan)})
            for plan, entry in zip(chunk, pipe.execute(), strict=True):
                added[plan["plan_id"]] = int(entry.decode().split("-")[0])
        return added

    def _wait_for(self, total: int, timeout: float) -> None:
        harness.wait_until(lambda: sum(self._settled()) >= total, timeout, f"{total} plans to settle", 0.02)

    def _wait_checks(self, timeout: float = 60) -> None:
        harness.wait_until(lambda: self._count(f"{PREFIX}verify-due", "zcard") == 0, timeout, "look-alike checks",
                           0.05)

    def _latencies(self, added: dict[str, int]) -> list[float]:
        from worker.ledger import Ledger
        from worker.plans import PlanState

        ledger = Ledger(self.redis.client, PREFIX)
        out = []
        for record in ledger.list(PlanState.SUCCEEDED):
            if record.plan_id in added:
                done = next(t.at for t in record.history if t.state == PlanState.SUCCEEDED)
                out.append(done.timestamp() * 1000 - added[record.plan_id])
        return out

    def _plans(self, tag: str, n: int, pairs: list[tuple[str, str]], start: int = 0) -> list[dict[str, Any]]:
        return [harness.ri_plan(f"{tag}-{i}", *pairs[i % len(pairs)], i // len(pairs) + i) for i in
                range(start, start + n)]

    # --- commitd ------------------------------------------------------------------------------------------------
    def commitd(self, name: str, pool: str, concurrency: int, latency_ms: int, plans: int, accounts: int = 1,
                regions: int = 1, closed_loop: int = 0, monitor: bool = False) -> dict[str, Any]:
        self.redis.client.flushall()
        self.sandbox.prepare(latency_ms)
        stats_dir = self.workdir / f"stats-{name}"
        stats_dir.mkdir()
        env = self.env(accounts, stats_dir)
        ids = self.accounts[accounts][1]
        pairs = [(a, r) for a in ids for r in REGIONS[:regions]]
        daemons: list[Daemon] = []
        try:
            daemons.append(harness.intake(env))
            worker = harness.celery_worker(env, "bench.e2e.apps:commitd", pool, concurrency, COMMITD_QUEUE)
            daemons.append(worker)
            warm = self._plans(f"{name}-warm", min(max(2 * concurrency, 4), 32), pairs[:1] if accounts == 1 else
                               pairs[-8:])
            self._submit(warm)
            self._wait_for(len(warm), 120)
            self._wait_checks()
            measured = self._plans(name, plans, pairs)
            self.redis.client.config_resetstat()
            watcher = harness.Monitor(self.redis.port) if monitor else None
            self.polls = 0
            cpu_before = sum(d.cpu_seconds() for d in daemons)
            redis_cpu_before = self.redis.cpu_seconds()
            sandbox_cpu_before = self.sandbox.cpu_seconds()
            started = time.time()
            added = self._submit(measured)
            self._wait_for(len(warm) + plans, 600)
            elapsed = time.time() - started
            self._wait_checks()
            cpu = sum(d.cpu_seconds() for d in daemons) - cpu_before
            redis_cpu = self.redis.cpu_seconds() - redis_cpu_before
            sandbox_cpu = self.sandbox.cpu_seconds() - sandbox_cpu_before
            polls = self.polls
            commands = self.redis.commands()
            rounds = watcher.count(CELERY_PREFIX, watcher.addresses(self.redis.client, "bench")) if watcher else None
            if watcher:
                watcher.stop()
            ok, other = self._settled()
            latencies = self._latencies(added)
            own = commands.get("scard", 0) + commands.get("zcard", 0)
            total_commands = sum(commands.values()) - min(polls, own) - commands.get("config|resetstat", 0)
            result: dict[str, Any] = {
                "name": name, "system": "commitd", "pool": pool, "concurrency": concurrency,
                "latency_ms": latency_ms, "plans": plans, "account_regions": len(pairs),
                "plans_per_s": round(plans / elapsed, 1), "seconds": round(elapsed, 2),
                "not_succeeded": other + (len(warm) + plans - ok - other),
                "xadd_to_succeeded_ms": {f"p{q}": round(harness.percentile(latencies, q), 1) for q in (50, 95, 99)},
                "daemon_cpu_ms_per_plan": round(cpu * 1000 / plans, 2),
                "redis_cpu_ms_per_plan": round(redis_cpu * 1000 / plans, 2),
                "sandbox_cpu_ms_per_plan": round(sandbox_cpu * 1000 / plans, 2),
                "redis_commands_per_plan": round(total_commands / plans, 1),
                "rss_mb": round(sum(worker.rss_mb().values()), 1),
            }
            if rounds is not None:
                result["monitor"] = {
                    "round_trips_per_plan": {k: round(v / plans, 1) for k, v in rounds["trips"].items()},
                    "commands_per_plan": {k: round(v / plans, 1) for k, v in rounds["commands"].items()},
                    "by_command_per_plan": {k: round(v / plans, 2) for k, v in sorted(rounds["by_command"].items())},
                }
            if closed_loop:
                result["one_at_a_time_ms"] = self._one_at_a_time(name, closed_loop, pairs)
        finally:
            for daemon in reversed(daemons):
                daemon.stop()
        result["workers"] = [json.loads(p.read_text()) for p in sorted(stats_dir.glob("*.json"))]
        print(f"  {name:34s} {result['plans_per_s']:7.1f} plans/s  p50 {result['xadd_to_succeeded_ms']['p50']:7.1f} ms"
              f"  cpu {result['daemon_cpu_ms_per_plan']:5.1f} ms/plan  {result['redis_commands_per_plan']:5.1f} "
              f"cmds/plan  rss {result['rss_mb']:.0f} MB", flush=True)
        return result

    def _one_at_a_time(self, name: str, count: int, pairs: list[tuple[str, str]]) -> dict[str, float]:
        """One plan in flight at a time: XADD, then wait for its success (what a single plan's round trip costs)."""
        from worker.ledger import Ledger

        ledger = Ledger(self.redis.client, PREFIX)
        times = []
        for plan in self._plans(f"{name}-single", count, pairs, start=10_000):
            added = self._submit([plan])
            while True:
                record = ledger.get(plan["plan_id"])
                if record is not None and record.state.value == "succeeded":
                    break
                time.sleep(0.001)
            times.append(self._latencies(added)[0])
        return {f"p{q}": round(harness.percentile(times, q), 1) for q in (50, 95, 99)}

    # --- baselines ----------------------------------------------------------------------------------------------
    def noop(self, pool: str, concurrency: int, tasks: int) -> dict[str, Any]:
        self.redis.client.flushall()
        env = self.env(1)
        worker = harness.celery_worker(env, "bench.e2e.apps:noop", pool, concurrency, "bench.noop")
        os.environ.update(env)
        from bench.e2e.apps import noop as app

        app.conf.broker_url = self.redis.url
        counter = f"{PREFIX}bench:noop-done"
        try:
            for n in range(8):
                app.send_task("bench.noop", args=[n], queue="bench.noop")
            harness.wait_until(lambda: int(self.redis.client.get(counter) or 0) >= 8, 60, "warm-up", 0.01)
            self.redis.client.set(counter, 0)
            self.redis.client.config_resetstat()
            cpu_before = worker.cpu_seconds()
            started = time.time()
            for n in range(tasks):
                app.send_task("bench.noop", args=[n], queue="bench.noop")
            harness.wait_until(lambda: int(self.redis.client.get(counter) or 0) >= tasks, 300, "no-op tasks", 0.005)
            elapsed = time.time() - started
            cpu = worker.cpu_seconds() - cpu_before
            commands = self.redis.commands()
            single = []
            for n in range(min(100, tasks)):
                sent = time.perf_counter()
                app.send_task("bench.noop", args=[n], queue="bench.noop")
                harness.wait_until(partial(self._counted, counter, tasks + n + 1), 30, "a no-op task", 0.0005)
                single.append((time.perf_counter() - sent) * 1000)
        finally:
            worker.stop()
        # The bench's own GETs are left out; the task's INCR is in.
        total = sum(commands.values()) - commands.get("get", 0) - commands.get("config|resetstat", 0)
        result: dict[str, Any] = {"name": f"noop-{pool}-c{concurrency}", "system": "noop", "pool": pool,
                  "concurrency": concurrency, "latency_ms": 0, "plans": tasks,
                  "plans_per_s": round(tasks / elapsed, 1), "redis_commands_per_plan": round(total / tasks, 1),
                  "worker_cpu_ms_per_task": round(cpu * 1000 / tasks, 2),
                  "one_at_a_time_ms": {f"p{q}": round(harness.percentile(single, q), 2) for q in (50, 95, 99)}}
        print(f"  {result['name']:34s} {result['plans_per_s']:7.1f} tasks/s  one at a time p50 "
              f"{result['one_at_a_time_ms']['p50']:.1f} ms", flush=True)
        return result

    def _counted(self, counter: str, at_least: int) -> bool:
        return int(self.redis.client.get(counter) or 0) >= at_least

    def bare(self, concurrency: int, latency_ms: int, plans: int) -> dict[str, Any]:
        self.sandbox.prepare(latency_ms)
        self.env(1)
        ids = self.accounts[1][1]
        url = self.sandbox.url
        local = threading.local()
        read_credentials: dict[str, dict[str, str]] = {}
        lock = threading.Lock()
        config = Config(retries={"total_max_attempts": 1}, max_pool_connections=4)
        base = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "endpoint_url": url}

        def credentials(account: str, session: str) -> dict[str, str]:
            c = local.sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/commitd", RoleSessionName=session,
                                      DurationSeconds=3600)["Credentials"]
            return {"aws_access_key_id": c["AccessKeyId"], "aws_secret_access_key": c["SecretAccessKey"],
                    "aws_session_token": c["SessionToken"]}

        def one(plan: dict[str, Any]) -> None:
            if not hasattr(local, "sts"):
                local.sts = boto3.client("sts", region_name="us-east-1", config=config, **base)
                local.ec2 = {}
            account, region, p = plan["account_id"], plan["region"], plan["params"]
            with lock:
                creds = read_credentials.get(account)
            if creds is None:
                creds = credentials(account, "commitd-reads")
                with lock:
                    read_credentials[account] = creds
            if region not in local.ec2:
                local.ec2[region] = boto3.client("ec2", region_name=region, config=config, endpoint_url=url, **creds)
            ec2 = local.ec2[region]
            filters = [{"Name": "duration", "Values": [str(p["duration_years"] * 31536000)]},
                       {"Name": "scope", "Values": [p["scope"]]}]
            offering = ec2.describe_reserved_instances_offerings(
                InstanceType=p["instance_type"], ProductDescription=p["product_description"],
                OfferingClass=p["offering_class"], OfferingType=p["offering_type"], InstanceTenancy="default",
                IncludeMarketplace=False, Filters=filters,
                **({"AvailabilityZone": p["availability_zone"]} if "availability_zone" in p else {}),
            )["ReservedInstancesOfferings"][0]
            credentials(account, f"commitd-{plan['plan_id']}")
            ec2.purchase_reserved_instances_offering(ReservedInstancesOfferingId=offering["ReservedInstancesOfferingId"],
                                                     InstanceCount=1, LimitPrice={"Amount": 0.0, "CurrencyCode": "USD"})
            ec2.describe_reserved_instances(Filters=[{"Name": "instance-type", "Values": [p["instance_type"]]}])

        pairs = [(ids[0], REGIONS[0])]
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, self._plans("bare-warm", concurrency * 2, pairs)))
            started = time.time()
            list(pool.map(one, self._plans("bare", plans, pairs)))
            elapsed = time.time() - started
        result = {"name": f"bare-c{concurrency}-{latency_ms}ms", "system": "bare_boto3", "pool": "threads",
                  "concurrency": concurrency, "latency_ms": latency_ms, "plans": plans,
                  "plans_per_s": round(plans / elapsed, 1)}
        print(f"  {result['name']:34s} {result['plans_per_s']:7.1f} plans/s", flush=True)
        return result


def machine() -> dict[str, Any]:
    model = "unknown CPU"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "boto3": boto3.__version__, "botocore": botocore.__version__,
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer plans per run (a look, not figures)")
    parser.add_argument("--only", default="", help="run only the runs whose name contains this (a look)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    from worker.logs import configure_logging

    configure_logging("json", "WARNING")
    bench = Bench(args.quick)
    began = time.time()
    runs: list[dict[str, Any]] = []
    load_before = harness.load_average()
    s = bench.scale
    plan: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    for c in (1, 2, 4, 16):
        plan.append((f"noop-threads-c{c}", partial(bench.noop, "threads", c, s(500))))
    plan.append(("noop-prefork-c2", partial(bench.noop, "prefork", 2, s(500))))
    for latency in (0, 50):
        for c in (1, 2, 4, 16, 64):
            count = s((20, 40, 80, 200, 300)[(1, 2, 4, 16, 64).index(c)]) if latency else s(200)
            plan.append((f"bare-c{c}-{latency}ms", partial(bench.bare, c, latency, count)))
    commitd_runs: list[tuple[str, str, int, int, int, dict[str, Any]]] = [
        ("threads-c1-0ms", "threads", 1, 0, 100, {"closed_loop": 30}),
        ("threads-c2-0ms", "threads", 2, 0, 150, {}),
        ("prefork-c2-0ms", "prefork", 2, 0, 150, {}),
        ("threads-c4-0ms", "threads", 4, 0, 200, {}),
        ("threads-c16-0ms", "threads", 16, 0, 300, {}),
        ("threads-c16-0ms-150-account-regions", "threads", 16, 0, 300, {"accounts": 50, "regions": 3}),
        ("threads-c1-50ms", "threads", 1, 50, 20, {}),
        ("threads-c4-50ms", "threads", 4, 50, 60, {}),
        ("threads-c16-50ms", "threads", 16, 50, 200, {}),
        ("threads-c64-50ms", "threads", 64, 50, 300, {}),
        ("prefork-c16-50ms", "prefork", 16, 50, 200, {}),
        ("threads-c16-0ms-monitor", "threads", 16, 0, 100, {"monitor": True}),
        ("threads-c16-0ms-1000x3", "threads", 16, 0, 3000, {"accounts": 1000, "regions": 3}),
    ]
    for name, pool, c, latency, count, extra in commitd_runs:
        plan.append((name, partial(bench.commitd, name, pool, c, latency, s(count), **extra)))
    try:
        for name, run in plan:
            if args.only in name:
                runs.append(run())
    finally:
        bench.close()
    results = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
               "load_average": {"before": round(load_before, 2), "after": round(harness.load_average(), 2)},
               "seconds": round(time.time() - began), "quick": args.quick, "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_report(results, out)
    print(f"wrote {out}/latest.json, latest.md, latest.png in {results['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
