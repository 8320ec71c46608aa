"""Retention keeps Redis flat: a steady stream of plans through `commitd intake` and a Celery worker (processes of
their own), retention every second with ages of seconds, and Redis's `used_memory` once warm stays within 10% of
itself while the plans processed grow several times over. Measured on a loaded 2-core machine: +5% to +6.5% over
3x the plans; the same run grows +45% with retention off, +30% without the audit's, +16% without the plans'.

The measure: `used_memory` is what the allocator has handed out (MEMORY PURGE only returns freed pages to the
system, so it moves RSS, not this). Between two retention runs the plans settled since the last one sit in Redis, so
memory is a sawtooth; each figure is the lowest sample over a window longer than two retention intervals, the
bottom of a tooth, so two figures compare the same phase. Plans in flight are held to a fixed number, so the
load is the same at both figures whatever the machine's speed."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.spine.conftest import (
    ACCOUNT,
    ORG_ACCOUNT,
    ORG_BUYER_ACCOUNT,
    TAGGING_ACCOUNT,
    WorkerProcess,
    ri_plan,
    wait_for,
    wait_for_state,
)
from tests.spine.conftest import IntakeProcess as Intake
from worker.plans import TERMINAL_STATES
from worker.retention import run_retention
from worker.runtime import Runtime

DAY = 86_400.0
AGE_SECONDS = 2.0  # plans, stream entries, dead letters and audit entries older than this go
IN_FLIGHT = 16  # plans submitted and not yet settled, at most
WARM_SECONDS = 15.0  # the first figure: after tombstones (kept COMMITD_VISIBILITY_TIMEOUT = 10 s) level off
WARM_PLANS = 40  # ... and not before this many plans settled
GROWTH = 3  # the last figure: once this many times the warm count have settled
WINDOW_SECONDS = 2.5  # > 2 retention intervals
RUN_DEADLINE = 80.0
# Plans rotate over 576 offering signatures (48 offerings x 3 regions x 4 accounts), so that plans of one signature
# rarely wait for each other (one plan at a time per signature) and the run measures memory, not waiting.
OFFERINGS = [
    {"instance_type": t, "product_description": p, "offering_class": c, "duration_years": y, **scope}
    for t in ("m5.large", "m5.xlarge", "c5.large", "r5.large", "t3.medium")
    for p in (("Linux/UNIX", "Windows") if t == "m5.large" else ("Linux/UNIX",))
    for c, y in (("standard", 1), ("standard", 3), ("convertible", 1), ("convertible", 3))
    for scope in ([{"scope": "Region"}] + ([{"scope": "Availability Zone", "availability_zone": z}
                                           for z in ("a", "b")] if c == "standard" else []))
]
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
BUYERS = (ACCOUNT, TAGGING_ACCOUNT, ORG_ACCOUNT, ORG_BUYER_ACCOUNT)


def plan(n: int) -> dict[str, Any]:
    """The n-th plan: every tenth invalid (a rejected record and a dead letter)."""
    offering = dict(OFFERINGS[n % len(OFFERINGS)])
    region = REGIONS[(n // len(OFFERINGS)) % len(REGIONS)]
    if "availability_zone" in offering:
        offering["availability_zone"] = region + str(offering["availability_zone"])
    body = ri_plan(f"mem-{n:06d}", **offering, max_hourly_usd="1.00", instance_count=0 if n % 10 == 9 else 1)
    body["account_id"] = BUYERS[(n // (len(OFFERINGS) * len(REGIONS))) % len(BUYERS)]
    body["region"] = region
    return body


RETENTION_ON = {
    "COMMITD_RETENTION_PLANS_DAYS": repr(AGE_SECONDS / DAY),
    "COMMITD_RETENTION_STREAM_DAYS": repr(AGE_SECONDS / DAY),
    "COMMITD_AUDIT_RETENTION_DAYS": repr(AGE_SECONDS / DAY),
    "COMMITD_RETENTION_INTERVAL": "1",
}


class Producer:
    """Submits plans to the intake stream, keeping IN_FLIGHT unsettled. A plan counts as settled once terminal in
    the ledger, or purged (tombstone)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.submitted = 0
        self.settled = 0
        self.stuck: list[str] = []
        self._open: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.stuck = list(self._open)

    def _settled(self, plan_id: str) -> bool:
        record = self.runtime.ledger.get(plan_id)
        if record is None:
            return self.runtime.ledger.tombstone(plan_id) is not None
        return record.state in TERMINAL_STATES

    def _run(self) -> None:
        stream = self.runtime.key("plans")
        try:
            while not self._stop.is_set():
                still = [p for p in self._open if not self._settled(p)]
                self.settled += len(self._open) - len(still)
                self._open = still
                while len(self._open) < IN_FLIGHT:
                    body = plan(self.submitted)
                    self.runtime.redis.xadd(stream, {"plan": json.dumps(body)})
                    self._open.append(body["plan_id"])
                    self.submitted += 1
                self._stop.wait(0.05)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def window_floor(client: redis.Redis, producer: Producer) -> int:
    """The lowest used_memory over WINDOW_SECONDS (see the module's docstring)."""
    end = time.monotonic() + WINDOW_SECONDS
    low = used_memory(client)
    while time.monotonic() < end:
        if producer.error is not None:
            raise producer.error
        time.sleep(0.1)
        low = min(low, used_memory(client))
    return low


def breakdown(client: redis.Redis) -> str:
    """Bytes by key (ids folded into their pattern), largest first: what grew, when the test fails."""
    sizes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for key in client.scan_iter(count=1000):
        name = key.decode(errors="replace")
        pattern = "".join("#" if ch.isdigit() else ch for ch in name)
        sizes[pattern] += int(client.memory_usage(key) or 0)
        counts[pattern] += 1
    return ", ".join(f"{k}: {counts[k]} keys {v} B" for k, v in sizes.most_common(12))


@pytest.fixture
def daemons(env: dict[str, str], runtime: Runtime, tmp_path: Path) -> Iterator[Callable[..., tuple[Intake, Any]]]:
    started: list[Any] = []

    def start(retention: dict[str, str]) -> tuple[Intake, Any]:
        # The results stream at its smallest (100 entries): it is bounded by length, not by retention.
        common = {**env, "COMMITD_RESULTS_MAXLEN": "100"}
        worker = WorkerProcess(common, "mem", concurrency=2)
        started.append(worker)
        intake = Intake({**common, **retention, "COMMITD_AUDIT_ARCHIVE_DIR": str(tmp_path / "archive"),
                         # Tombstones are kept this long after their purge (a task message's redelivery window).
                         "COMMITD_VISIBILITY_TIMEOUT": "10"})
        started.append(intake)
        return intake, worker

    yield start
    for process in reversed(started):
        process.stop()


def test_redis_memory_stays_flat_while_plans_keep_coming(runtime: Runtime, daemons: Any, tmp_path: Path) -> None:
    client = runtime.redis
    # Redis trims a capped stream (the results stream) by whole nodes of this many entries: small nodes keep it at
    # its cap instead of growing towards cap + one node during the run, which this test would count as growth.
    node_entries = client.config_get("stream-node-max-entries")["stream-node-max-entries"]
    client.config_set("stream-node-max-entries", 10)
    daemons(RETENTION_ON)
    producer = Producer(runtime)
    started = time.monotonic()
    producer.start()
    try:
        wait_for(lambda: (producer.settled >= WARM_PLANS and time.monotonic() - started >= WARM_SECONDS)
                 or producer.error is not None, RUN_DEADLINE, f"{WARM_PLANS} plans to settle")
        # Warm: memory no longer depends on how long the run has been going, only on the rate.
        warm_plans, warm = producer.settled, window_floor(client, producer)
        warm_keys = breakdown(client)
        wait_for(lambda: producer.settled >= GROWTH * warm_plans or producer.error is not None,
                 RUN_DEADLINE - (time.monotonic() - started), f"{GROWTH * warm_plans} plans to settle")
        late_plans, late = producer.settled, window_floor(client, producer)
    finally:
        producer.stop()
        client.config_set("stream-node-max-entries", node_entries)
    if producer.error is not None:
        raise producer.error
    elapsed = time.monotonic() - started

    print(f"\nwarm: {warm_plans} plans, used_memory {warm}; late: {late_plans} plans, used_memory {late} "
          f"({(late - warm) / warm:+.1%}); {elapsed:.0f} s\nwarm: {warm_keys}\nlate: {breakdown(client)}")
    assert late_plans >= GROWTH * warm_plans
    assert abs(late - warm) <= 0.10 * warm, (
        f"used_memory {warm} at {warm_plans} plans, {late} at {late_plans}\nwarm: {warm_keys}\n"
        f"late: {breakdown(client)}")
    # Retention did the trimming: the plans went to tombstones, the audit entries and dead letters to the archive.
    assert client.xlen(runtime.key("plans")) < late_plans / 2
    assert client.xlen(runtime.key("rejected")) < late_plans / 20
    assert list((tmp_path / "archive").glob("audit-*.jsonl")) and list((tmp_path / "archive").glob("dead-letters-*"))
    assert runtime.audit.verify().ok


def test_a_purged_plan_leaves_no_key_of_its_own(runtime: Runtime, intake: Any, start_worker: Any,
                                                tmp_path: Path) -> None:
    """What the flat-memory test cannot see in 90 s: a few hundred bytes a plan that retention leaves behind."""
    start_worker("w1", COMMITD_CONSISTENCY_DELAY_SECONDS="0")
    ids = [plan(n)["plan_id"] for n in range(10)]  # the last one invalid: rejected
    for n in range(10):
        intake.submit_raw(json.dumps(plan(n)), "test")
    for plan_id in ids:
        wait_for_state(runtime, plan_id, {s.value for s in TERMINAL_STATES})
    wait_for(lambda: all(runtime.ledger.get(p).verification != "due" for p in ids), 30,  # type: ignore[union-attr]
             "the look-alike checks")
    settings = {"retention_plans_days": 0.0, "retention_stream_days": 0.0, "audit_retention_days": 0.0,
                "audit_archive_dir": tmp_path, "visibility_timeout": 10}
    report = run_retention(Runtime(runtime.settings.model_copy(update=settings)))
    assert report.plans_purged == len(ids)
    left = sorted(k.decode() for k in runtime.redis.scan_iter(count=1000) if any(p in k.decode() for p in ids))
    assert left == [], f"keys left by purged plans: {left}"
