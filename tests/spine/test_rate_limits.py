"""Rate limits (worker/ratelimit.py): one token bucket per (account, region, service) in Redis, shared by every
worker process. What reaches AWS is counted where it arrives: in the sandbox (it runs in this process), each call
stamped as its request comes in."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sandbox.control import SandboxControl
from sandbox.protocol import caller_from_headers, identify
from sandbox.server import SandboxServer
from tests.spine.conftest import ACCOUNT, WorkerProcess, ri_plan, wait_for, wait_for_state
from tests.spine.test_exactly_once import SETTLED
from worker.plans import PlanState
from worker.ratelimit import RateLimited, RateLimiter
from worker.runtime import Runtime

# Five instance types, each regional or in one of two zones: fifteen different offerings, so the plans never wait on
# each other's signature lock and only the rate limit holds them back.
OFFERINGS = [(t, zone) for t in ("m5.large", "c5.large", "r5.large", "m5.xlarge", "t3.medium")
             for zone in (None, "us-east-1a", "us-east-1b")]
# Between taking its token and reaching the sandbox a call still assumes a role, records its send and is signed: on
# a loaded machine that can take a while, and calls may arrive closer together than their tokens were taken. The
# bound is checked with this much slack on each window (a broken limit overshoots by whole seconds' worth).
ARRIVAL_JITTER_SECONDS = 1.0


@dataclass(frozen=True)
class Arrival:
    at: float  # time.monotonic() of this process, when the request reached the sandbox
    account: str
    region: str
    service: str
    operation: str


@pytest.fixture
def arrivals(sandbox_server: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Arrival]]:
    """Every AWS request the sandbox receives during the test, as it comes in (before any fault or handler)."""
    app = sandbox_server.app
    seen: list[Arrival] = []
    original = app._aws

    def recording(environ: dict[str, Any], request: Any, body: bytes) -> Any:
        at = time.monotonic()
        caller = caller_from_headers(request.headers)
        identified = identify(request.method, request.path, request.headers, body)
        if caller is not None and identified is not None:
            seen.append(Arrival(at, app.account_for(caller.access_key), caller.region, identified[0], identified[1]))
        return original(environ, request, body)

    monkeypatch.setattr(app, "_aws", recording)
    yield seen


def plan_for(n: int) -> dict[str, Any]:
    instance_type, zone = OFFERINGS[n % len(OFFERINGS)]
    plan = ri_plan(f"rl-{n}", instance_type=instance_type, instance_count=1, max_hourly_usd="1.00")
    if zone is not None:
        plan["params"].update(scope="Availability Zone", availability_zone=zone)
    return plan


def submit_all(intake: Any, count: int) -> list[str]:
    ids = []
    for n in range(count):
        plan = plan_for(n)
        result = intake.submit_raw(json.dumps(plan), "test")
        assert result.outcome == "accepted", result
        ids.append(plan["plan_id"])
    return ids


def worst_window(times: list[float], per_second: float, burst: int,
                 jitter: float = ARRIVAL_JITTER_SECONDS) -> tuple[float, float, int]:
    """The window between two arrivals with the most calls beyond what the bucket allows in it
    (``burst + per_second × (length + jitter)``): (that excess, the window's length, the calls in it)."""
    times = sorted(times)
    worst = (float("-inf"), 0.0, 0)
    for i in range(len(times)):
        for j in range(i, len(times)):
            length, calls = times[j] - times[i], j - i + 1
            excess = calls - (burst + per_second * (length + jitter))
            worst = max(worst, (excess, length, calls))
    return worst


def by_bucket(seen: list[Arrival]) -> dict[tuple[str, str, str], list[float]]:
    """Arrivals of the calls the rate limit covers (everything through a plan's handle; AssumeRole is the daemon's
    own call to STS, not the customer's API), by (account, region, service)."""
    buckets: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for arrival in seen:
        if arrival.service != "sts":
            buckets[(arrival.account, arrival.region, arrival.service)].append(arrival.at)
    return buckets


def assert_within_bucket(seen: list[Arrival], per_second: float, burst: int) -> dict[str, float]:
    buckets = by_bucket(seen)
    assert (ACCOUNT, "us-east-1", "ec2") in buckets, buckets.keys()
    figures: dict[str, float] = {}
    for bucket, times in buckets.items():
        excess, length, calls = worst_window(times, per_second, burst)
        figures[f"{'/'.join(bucket)} worst_excess"] = round(excess, 2)
        assert excess <= 0, (f"{bucket}: {calls} calls reached AWS within {length:.2f} s; at most "
                             f"{burst} + {per_second}/s × ({length:.2f} + {ARRIVAL_JITTER_SECONDS}) s are allowed")
        span = max(times) - min(times)
        figures.update({f"{'/'.join(bucket)} calls": len(times), f"{'/'.join(bucket)} span_s": round(span, 2)})
    return figures


def plans_run_by(worker: WorkerProcess, plan_ids: list[str]) -> set[str]:
    text = worker.log.read_text(errors="replace")
    return {p for p in plan_ids if f'"plan_id": "{p}"' in text}


def test_two_workers_share_one_bucket_and_every_plan_succeeds(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, arrivals: list[Arrival]
) -> None:
    """Twelve plans on two workers (concurrency 2 each) under 4 calls/s with a burst of 2: the EC2 calls of the
    account in the region never come faster than the bucket allows, whichever worker makes them, and every plan
    is bought once: throttled work waits, it does not fail."""
    per_second, burst = 4.0, 2
    limits = {"COMMITD_RATE_LIMIT_PER_SECOND": str(per_second), "COMMITD_RATE_LIMIT_BURST": str(burst)}
    workers = [start_worker(f"rl-{n}", concurrency=2, **limits) for n in (1, 2)]
    started = time.monotonic()
    plan_ids = submit_all(intake, 12)
    records = [wait_for_state(runtime, p, SETTLED, timeout=120) for p in plan_ids]
    elapsed = time.monotonic() - started
    assert [r.state for r in records] == [PlanState.SUCCEEDED] * len(records), [
        (r.plan_id, r.state.value, r.error) for r in records]
    assert [r.attempts for r in records] == [1] * len(records)
    bought = sandbox.resources(account_id=ACCOUNT, type="reserved-instances")
    assert {ri["id"] for ri in bought} == {i for r in records for i in (r.result or {})["resource_ids"]}
    assert len(bought) == len(records)
    for worker in workers:  # the bucket was shared: both workers ran plans
        assert plans_run_by(worker, plan_ids), f"{worker.log} ran no plan"

    # A succeeded purchase's look-alike check (more EC2 reads) runs after it settles, and a call's audit entry is
    # written once its answer is back: wait for both before counting.
    wait_for(lambda: all(runtime.ledger.get(p).verification != "due" for p in plan_ids),  # type: ignore[union-attr]
             60, "the look-alike checks")

    def audited() -> list[dict[str, Any]]:
        return [r for r in runtime.audit.records() if r.get("event") == "aws_call" and r.get("service") == "ec2"]

    def ec2() -> list[Any]:
        return by_bucket(arrivals)[(ACCOUNT, "us-east-1", "ec2")]

    wait_for(lambda: len(audited()) == len(ec2()), 30,
             "every call that reached AWS to be in the audit trail, and no other")
    figures = assert_within_bucket(arrivals, per_second, burst)
    # The limit was what held them: without it the same calls take a fraction of a second.
    calls = ec2()
    assert max(calls) - min(calls) >= (len(calls) - burst - 1) / per_second - ARRIVAL_JITTER_SECONDS
    print({"plans": len(records), "elapsed_s": round(elapsed, 2), **figures})


def test_a_call_that_waits_too_long_gives_its_plan_back_without_using_an_attempt(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, arrivals: list[Arrival]
) -> None:
    """COMMITD_RATE_LIMIT_MAX_WAIT_SECONDS short (one refill and a little): a plan whose call does not get its token
    in that time, with three others after the same bucket, is given back to its queue (a new task message, its
    attempt given back). With COMMITD_MAX_ATTEMPTS=1, a plan given back even once would fail on its next run had
    the wait used its attempt: every plan succeeds, each with one attempt."""
    per_second, burst = 4.0, 1
    limits = {"COMMITD_RATE_LIMIT_PER_SECOND": str(per_second), "COMMITD_RATE_LIMIT_BURST": str(burst),
              "COMMITD_RATE_LIMIT_MAX_WAIT_SECONDS": "0.3", "COMMITD_MAX_ATTEMPTS": "1"}
    for n in (1, 2):
        start_worker(f"rl-given-back-{n}", concurrency=2, **limits)
    plan_ids = submit_all(intake, 8)
    records = [wait_for_state(runtime, p, SETTLED, timeout=120) for p in plan_ids]
    assert [r.state for r in records] == [PlanState.SUCCEEDED] * len(records), [
        (r.plan_id, r.state.value, r.error) for r in records]
    given_back = dict.fromkeys(plan_ids, 0)
    for entry in runtime.audit.records():
        if entry.get("event") == "plan_updated" and "rate limit of" in str(entry.get("note")):
            given_back[entry["plan_id"]] += 1
    assert sum(given_back.values()) > 0, "no plan was given back: the test did not test it"
    assert [r.attempts for r in records] == [1] * len(records)
    assert len(sandbox.resources(account_id=ACCOUNT, type="reserved-instances")) == len(records)
    figures = assert_within_bucket(arrivals, per_second, burst)
    print({"given_back": given_back, **figures})


def test_a_plan_alone_gets_through_a_bucket_of_one_with_the_shortest_wait_allowed(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """One plan, nobody else on the bucket: a call every 2 s, burst 1. A run needs two tokens (a read, then the
    send): a longest wait under one refill would spend every run's token on its read and give the plan back before
    its send, for ever, so the settings refuse it; at one refill the plan is bought."""
    from pydantic import ValidationError

    from config.settings import Settings

    with pytest.raises(ValidationError, match="at least one token's refill"):
        Settings(rate_limit_per_second=0.5, rate_limit_burst=1, rate_limit_max_wait_seconds=0.01)
    start_worker("rl-alone", COMMITD_RATE_LIMIT_PER_SECOND="0.5", COMMITD_RATE_LIMIT_BURST="1",
                 COMMITD_RATE_LIMIT_MAX_WAIT_SECONDS="2")
    [plan_id] = submit_all(intake, 1)
    assert wait_for_state(runtime, plan_id, SETTLED, timeout=40).state == PlanState.SUCCEEDED


def test_the_bucket_alone_is_exact_across_threads(runtime: Runtime) -> None:
    """The Lua bucket without processes or HTTP in between: eight threads take forty tokens; the moments they get
    them fit burst + rate × elapsed with only thread scheduling as slack (so the slack of the tests above is the
    way from a token to AWS, not the bucket). A caller that cannot wait long enough is refused, never let through."""
    per_second, burst = 10.0, 3
    limiter = RateLimiter(runtime.redis, runtime.settings.key_prefix, per_second, burst, max_wait_seconds=30)
    taken: list[float] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        for _ in range(5):
            limiter.acquire(ACCOUNT, "us-east-1", "ec2")
            taken.append(time.monotonic())

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    excess, length, calls = worst_window(taken, per_second, burst, jitter=0.1)
    assert len(taken) == 40 and excess <= 0, (excess, length, calls)
    assert max(taken) - min(taken) >= (40 - burst - 1) / per_second  # it did hold them back

    impatient = RateLimiter(runtime.redis, runtime.settings.key_prefix, 0.5, 1, max_wait_seconds=0.05)
    impatient.acquire(ACCOUNT, "us-west-2", "ec2")  # the burst
    with pytest.raises(RateLimited):
        impatient.acquire(ACCOUNT, "us-west-2", "ec2")
    impatient.acquire(ACCOUNT, "eu-west-1", "ec2")  # another region: another bucket
