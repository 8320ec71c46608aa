"""AWS sessions at scale: many accounts × regions through one ``worker.aws.AwsSessions``, as the executor uses it.

For N accounts (default 1000) in 3 regions, each account assumes its role in the sandbox (a child process, so the
RSS is commitd's) and makes one read call in every region, through the clients every account shares. Prints the
time of a first call for an account (AssumeRole + the call), of a later call, the clients built, the cache's bytes,
its hit rate, and the process's RSS.

    .venv/bin/python bench/client_cache.py [--accounts 1000] [--regions 3]

Target (issue 8): ≤ 300 MB RSS per worker process with 1,000 accounts × 3 regions.
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from config.accounts import AccountConfig
from config.settings import Settings
from tasks.families import EC2_RESERVED_INSTANCES
from worker.aws import AwsSessions
from worker.logs import configure_logging

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
POLICY = ["ec2:DescribeReservedInstances"]


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def timed_reads(sessions: AwsSessions, accounts: list[AccountConfig], regions: tuple[str, ...]) -> list[float]:
    times = []
    for account in accounts:
        for region in regions:
            started = time.perf_counter()
            sessions.call(account, region, "ec2", EC2_RESERVED_INSTANCES, "read", "bench", POLICY,
                          "describe_reserved_instances", {})
            times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--regions", type=int, default=3, choices=(1, 2, 3))
    args = parser.parse_args()
    regions = REGIONS[:args.regions]
    process = subprocess.Popen([sys.executable, "-m", "sandbox", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = re.search(r"(http://\S+)", process.stdout.readline())
        assert url, "the sandbox did not start"
        configure_logging("json", "WARNING")
        accounts = [
            AccountConfig(account_id=f"{200000000000 + n}", role_arn=f"arn:aws:iam::{200000000000 + n}:role/commitd")
            for n in range(args.accounts)
        ]
        start = rss_mb()
        sessions = AwsSessions(Settings(aws_endpoint_url=url.group(1)))
        first = timed_reads(sessions, accounts, regions)
        again = timed_reads(sessions, accounts[:100], regions)
        stats = sessions.stats()
        lookups = stats["client_hits"] + stats["client_misses"]
        print(f"{args.accounts} accounts × {len(regions)} regions, one read call each:")
        print(f"  first calls of an account (AssumeRole + call)  p50 {statistics.median(first):7.2f} ms")
        print(f"  later calls (credentials and client cached)    p50 {statistics.median(again):7.2f} ms")
        print(f"  clients built {stats['client_misses']}, kept {stats['clients']} "
              f"({stats['client_bytes'] / 2**20:.1f} MB by the cache's estimate), hit rate "
              f"{stats['client_hits'] / lookups:.4f} of {lookups} lookups; {stats['assume_role_calls']} AssumeRole "
              f"calls, {stats['read_credentials']} read sessions kept")
        print(f"  RSS {start:.0f} MB at start, {rss_mb():.0f} MB after (peak "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB); target ≤ 300 MB")
    finally:
        process.terminate()
        process.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
