"""``commitd demo``, part two: a tour of every family, one plan each, built from ``examples/plans/``.

The demo's sandbox is seeded first from ``sandbox/data/demo-seed.json`` (the RIs, dedicated hosts, DC1 node and
organization the example plans name, with the same fixed ids the family tests seed). Each plan goes in through the
stream like the first part's; its id is the demo's own (``demo-…``) and some params move with the sandbox's clock
(a future-dated capacity reservation, a scheduled-instance search window). Operations AWS finishes later (an RI
modification, a capacity reservation being assessed, a host reservation's payment, spot fleet evaluation, an
account creation) finish here when the sandbox's clock moves: the demo moves it while a plan waits on one, as the
family tests do. Every plan is expected to succeed except the Scheduled Instances purchase: AWS no longer sells
them, and the plan fails with AWS's empty availability, nothing bought.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from worker.demo import DemoFailed, DemoUnavailable, Sample, Watcher, say, submit, summary

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "plans"
SEED_FILE = ROOT / "sandbox" / "data" / "demo-seed.json"
CLOCK_STEP_SECONDS = 120  # one move of the sandbox clock: longer than all but the RI modification's 300 s
CLOCK_STEP_EVERY = 0.5  # wall-clock seconds between moves, so that the worker sees each step


def _iso(when: datetime) -> str:
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _future_capacity(now: datetime) -> dict[str, Any]:
    """The example reservation, future-dated: AWS assesses it (60 s of sandbox clock), then it is scheduled."""
    return {"start_date": _iso(now + timedelta(days=6)), "commitment_duration_seconds": 14 * 86400}


def _scheduled_window(now: datetime) -> dict[str, Any]:
    """The example's first-slot window, a week from the sandbox's clock (AWS searches at most three months on)."""
    start = now + timedelta(days=7)
    return {"first_slot_start_time_range": {"earliest_time": _iso(start),
                                            "latest_time": _iso(start + timedelta(days=7))}}


@dataclass(frozen=True)
class Stop:
    """One family's plan: an example file, the demo's plan id, param changes, and the outcome it must reach."""

    family: str
    example: str
    plan_id: str
    expected: str = "succeeded"
    error_code: str | None = None
    params: Callable[[datetime], dict[str, Any]] | None = field(default=None, compare=False)

    def plan(self, now: datetime) -> dict[str, Any]:
        plan: dict[str, Any] = json.loads((EXAMPLES / self.example).read_text())
        plan["plan_id"] = self.plan_id
        plan["requested_by"] = "commitd-demo"
        if self.params is not None:
            plan["params"] = {**plan["params"], **self.params(now)}
        return plan


TOUR: tuple[Stop, ...] = (
    Stop("ec2_reserved_instances", "ec2-modify-reserved-instances.json", "demo-ri-modify"),
    Stop("ec2_ri_exchange", "ec2-accept-exchange-quote.json", "demo-ri-exchange"),
    Stop("ec2_ri_marketplace", "ec2-create-ri-listing.json", "demo-ri-listing"),
    Stop("ec2_capacity_reservations", "ec2-create-capacity-reservation.json", "demo-capacity-reservation",
         params=_future_capacity),
    Stop("ec2_host_reservations", "ec2-purchase-host-reservation.json", "demo-host-reservation"),
    Stop("ec2_scheduled_instances", "ec2-purchase-scheduled-instances.json", "demo-scheduled-purchase",
         expected="failed", error_code="NoScheduledInstanceAvailability", params=_scheduled_window),
    Stop("ec2_spot", "ec2-request-spot-fleet.json", "demo-spot-fleet"),
    Stop("savings_plans", "savingsplans-create-savings-plan.json", "demo-savings-plan"),
    Stop("rds_reservations", "rds-purchase-reserved-db-instances-offering.json", "demo-rds-reservation"),
    Stop("redshift_reservations", "redshift-accept-reserved-node-exchange.json", "demo-redshift-exchange"),
    Stop("elasticache_reservations", "elasticache-purchase-reserved-cache-nodes-offering.json",
         "demo-elasticache-reservation"),
    Stop("opensearch_reservations", "es-purchase-reserved-elasticsearch-instance-offering.json",
         "demo-opensearch-reservation"),
    Stop("org_transfer", "organizations-create-account.json", "demo-org-create-account"),
)

# The accounts the example plans use (tests/spine/conftest.py has the same), for the demo's account file.
ACCOUNTS: tuple[dict[str, Any], ...] = (
    {"account_id": "555566667777", "name": "demo-spot",
     "extra_permissions": ["iam:PassRole"]},  # a spot fleet passes its IamFleetRole to EC2
    {"account_id": "222233334444", "name": "demo-management",
     "optional_blocks": ["organizations"]},  # the organization the sub-account transfer starts from
    {"account_id": "888899990000", "name": "demo-buyer-management",
     "optional_blocks": ["organizations"]},  # the buying organization (the invitation example)
)


def check_tour() -> None:
    """The tour covers every family, each with an action of that family (a family added without a stop fails)."""
    from tasks.families import FAMILIES, family_of

    covered = {stop.family for stop in TOUR}
    missing = [f.name for f in FAMILIES if f.name not in covered]
    if missing:
        raise DemoFailed(f"the demo's tour has no plan of the families {missing}")
    for stop in TOUR:
        if not (EXAMPLES / stop.example).is_file():
            raise DemoUnavailable(f"{EXAMPLES / stop.example} is missing: run the demo from a checkout of commitd")
        family = family_of(json.loads((EXAMPLES / stop.example).read_text())["action"])
        if family is None or family.name != stop.family:
            raise DemoFailed(f"{stop.example}: its action is not of the family {stop.family}")


def seed_sandbox(sandbox_url: str) -> list[dict[str, Any]]:
    from sandbox.control import SandboxControl

    entries: list[dict[str, Any]] = json.loads(SEED_FILE.read_text())["existing_commitments"]
    SandboxControl(sandbox_url).seed(entries)
    return entries


def sandbox_now(sandbox_url: str) -> datetime:
    from sandbox.control import SandboxControl

    now = str(SandboxControl(sandbox_url).health()["now"])
    return datetime.fromisoformat(now.replace("Z", "+00:00")).astimezone(UTC)


class ClockDriver:
    """Moves the sandbox's clock while a plan waits on an AWS operation that completes with time: one that AWS
    accepted and the plan follows (``book.accepted``), or one reconciliation found still in progress."""

    def __init__(self, sandbox_url: str, say: Callable[[str], None]) -> None:
        from sandbox.control import SandboxControl

        self.control = SandboxControl(sandbox_url)
        self.say = say
        self.next_at = 0.0
        self.moved = 0

    def __call__(self, records: dict[str, Any], elapsed: float) -> None:
        waiting = sorted(plan_id for plan_id, r in records.items() if r is not None and not r.terminal
                         and ((r.book or {}).get("accepted") or (r.book or {}).get("pending_since_ms")))
        if not waiting or time.monotonic() < self.next_at:
            return
        self.control.advance_clock(CLOCK_STEP_SECONDS)
        self.moved += CLOCK_STEP_SECONDS
        self.next_at = time.monotonic() + CLOCK_STEP_EVERY
        more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
        self.say(f"  {elapsed:5.1f}s  sandbox clock +{CLOCK_STEP_SECONDS} s (AWS still working for "
                 f"{', '.join(waiting[:3])}{more})")


def seeded_summary(entries: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[str(entry["kind"])] = counts.get(str(entry["kind"]), 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


# --- the run -------------------------------------------------------------------------------------------------
def run_tour(runtime: Any, sandbox_url: str, watcher: Watcher) -> tuple[list[Sample], dict[str, Any]]:
    """Seed the sandbox, submit one plan per family, and wait (moving the sandbox's clock) until they settle."""
    check_tour()
    entries = seed_sandbox(sandbox_url)
    say()
    say("every family: one plan each, built from examples/plans/")
    say(f"sandbox  seeded {len(entries)} existing commitments from {SEED_FILE.relative_to(ROOT)}: "
        f"{seeded_summary(entries)}")
    now = sandbox_now(sandbox_url)
    samples = [Sample(stop.plan(now), stop.expected, stop.error_code, family=stop.family) for stop in TOUR]
    say(f"submitting {len(samples)} plans through the stream {runtime.key('plans')}:")
    submit(runtime, samples)
    return samples, watcher.wait([s.plan_id for s in samples], tick=ClockDriver(sandbox_url, say))


def print_tour_table(samples: list[Sample], records: dict[str, Any]) -> bool:
    """One line per family: its plan, the outcome expected and the one the ledger holds, and what it did."""
    say()
    say(f"{'family':25s} {'plan id':28s} {'expected':10s} {'actual':16s} ok  result")
    say(f"{'-' * 25} {'-' * 28} {'-' * 10} {'-' * 16} --  {'-' * 40}")
    all_met = True
    for sample in samples:
        record = records.get(sample.plan_id)
        met = sample.met(record)
        all_met = all_met and met
        actual = record.state.value if record is not None else "-"
        say(f"{sample.family or '-':25s} {sample.plan_id:28s} {sample.expected:10s} {actual:16s} "
            f"{'✓' if met else '✗':2s}  {summary(record)}")
    return all_met
