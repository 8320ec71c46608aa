"""AWS sessions at scale: assumed-role clients for many accounts from one shared botocore session.

For N accounts (default 1000), each assumes its role in the sandbox and builds an EC2 read client, through
``worker.aws.AwsSessions`` exactly as the executor does. Prints the time per new client, the time for a cached
one, and the process's peak RSS, with the client cache at its default size and with room for every account.

    .venv/bin/python bench/client_cache.py [--accounts 1000]

ROADMAP target (informational): ≤ 300 MB RSS with 1,000 accounts cached.
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import time

from config.accounts import AccountConfig
from config.settings import Settings
from tasks.families import EC2_RESERVED_INSTANCES
from worker.aws import AwsSessions
from worker.logs import configure_logging


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(sessions: AwsSessions, accounts: list[AccountConfig]) -> list[float]:
    times = []
    for account in accounts:
        started = time.perf_counter()
        sessions.client(account, "us-east-1", "ec2", EC2_RESERVED_INSTANCES, "read", "bench")
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--cache-size", type=int, default=0, help="client cache size (default: one per account)")
    args = parser.parse_args()
    # The sandbox runs as a child process, so that this process's memory is commitd's alone.
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
        print(f"start: peak RSS {peak_rss_mb():.0f} MB")
        cache_size = args.cache_size or args.accounts
        sessions = AwsSessions(Settings(aws_endpoint_url=url.group(1), client_cache_size=cache_size))
        new = timed(sessions, accounts)
        cached = timed(sessions, accounts[-min(100, cache_size):])  # still in the client cache
        rebuilt = timed(sessions, accounts[:100]) if cache_size < args.accounts else []  # evicted; credentials kept
        print(f"{args.accounts} accounts, client cache {cache_size}:")
        print(f"  new account (AssumeRole + client)      p50 {statistics.median(new):7.2f} ms")
        if rebuilt:
            print(f"  evicted client, credentials cached     p50 {statistics.median(rebuilt):7.2f} ms")
        print(f"  cached client                          p50 {statistics.median(cached):7.3f} ms")
        print(f"  peak RSS {peak_rss_mb():.0f} MB (target ≤ 300 MB with 1,000 accounts cached)")
    finally:
        process.terminate()
        process.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
