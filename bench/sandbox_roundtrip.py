"""Loopback purchase round trip: boto3 → sandbox (in this process, over HTTP) → boto3.

Two runs of ``--calls`` purchases of one No Upfront offering, each on a freshly reset sandbox, with one boto3 EC2
client whose connection is kept alive:

1. latency: every call timed; prints p50, p90, p99 (ms) and calls/s;
2. throughput on one core: the process (client and server threads) pinned to a single CPU, one client thread;
   prints calls/s.

Targets (issue 2, item 10): p50 under 5 ms, and at least 300 calls/s on one core. This prints figures; it is not a
test. Run: ``.venv/bin/python bench/sandbox_roundtrip.py [--calls 2000]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import boto3
import botocore
from botocore.config import Config

from sandbox.control import SandboxControl
from sandbox.server import SandboxServer

P50_TARGET_MS = 5.0
RATE_TARGET = 300.0
WARMUP_CALLS = 50


def ec2_client(url: str) -> Any:
    config = Config(retries={"total_max_attempts": 1}, max_pool_connections=1, tcp_keepalive=True)
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=url, config=config,
                        aws_access_key_id="bench", aws_secret_access_key="bench")


def no_upfront_offering(ec2: Any) -> str:
    offerings = ec2.describe_reserved_instances_offerings(
        InstanceType="m5.large", ProductDescription="Linux/UNIX", OfferingClass="standard",
        OfferingType="No Upfront", InstanceTenancy="default", IncludeMarketplace=False,
        Filters=[{"Name": "duration", "Values": ["31536000"]}, {"Name": "scope", "Values": ["Region"]}],
    )["ReservedInstancesOfferings"]
    if len(offerings) != 1:
        sys.exit(f"expected one m5.large No Upfront regional offering, found {len(offerings)}")
    return str(offerings[0]["ReservedInstancesOfferingId"])


def purchaser(ec2: Any, offering_id: str) -> Callable[[], None]:
    def buy() -> None:
        ec2.purchase_reserved_instances_offering(
            ReservedInstancesOfferingId=offering_id, InstanceCount=1,
            LimitPrice={"Amount": 0.0, "CurrencyCode": "USD"},
        )

    return buy


def timed_calls(call: Callable[[], None], count: int) -> tuple[list[float], float]:
    """(each call's seconds, total seconds)."""
    for _ in range(WARMUP_CALLS):
        call()
    durations = []
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        call()
        durations.append(time.perf_counter() - t0)
    return durations, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity on this system)"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def count_connections(server: SandboxServer) -> list[int]:
    """Counts the TCP connections the sandbox accepts (one per run shows keep-alive works)."""
    accepted = [0]
    inner = server._server  # the stdlib server under SandboxServer
    process_request = inner.process_request

    def counting(request: Any, client_address: Any) -> None:
        accepted[0] += 1
        process_request(request, client_address)

    inner.process_request = counting  # type: ignore[method-assign]
    return accepted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="purchases per run (default 2000)")
    args = parser.parse_args(argv)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  Python {platform.python_version()}, boto3 {boto3.__version__}, "
          f"botocore {botocore.__version__}, {cpu_model()}, {cpus} CPUs available")

    with SandboxServer() as server:
        accepted = count_connections(server)
        control = SandboxControl(server.url)  # each control call opens a connection of its own (urllib)
        ec2 = ec2_client(server.url)
        buy = purchaser(ec2, no_upfront_offering(ec2))

        control.reset()
        durations, total = timed_calls(buy, args.calls)
        p50, p90, p99 = (percentile(durations, q) * 1000 for q in (50, 90, 99))
        rate = args.calls / total
        print(f"latency     {args.calls} purchases: p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms, "
              f"mean {statistics.fmean(durations) * 1000:.2f} ms; {rate:.0f} calls/s")

        control.reset()
        pinned = pin_to_one_core()
        _, total_one = timed_calls(buy, args.calls)
        rate_one = args.calls / total_one
        print(f"throughput  {args.calls} purchases, one client thread, {pinned}: {rate_one:.0f} calls/s")
        print(f"keep-alive  boto3 opened {accepted[0] - 2} TCP connection(s) for {2 * (args.calls + WARMUP_CALLS) + 1} "
              "calls")

    p50_ok, rate_ok = p50 < P50_TARGET_MS, rate_one >= RATE_TARGET
    print(f"target p50 < {P50_TARGET_MS:g} ms: {'holds' if p50_ok else 'MISSED'} ({p50:.2f} ms)")
    print(f"target >= {RATE_TARGET:g} calls/s on one core: {'holds' if rate_ok else 'MISSED'} ({rate_one:.0f} calls/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
