"""``python -m chaos.run``: the chaos run (docs/chaos.md). Plans of every family over many accounts, submitted
through the intake stream while workers are SIGKILLed and frozen, Redis fails over (or restarts from its AOF)
and the sandbox injects faults on every mutating call; then the ledger is held against the sandbox's ground
truth. Prints a summary, writes the JSON report, exits 1 when a "must be 0" is not 0 or more than 1% of the plans
need attention."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from random import Random
from typing import Any

import boto3
import redis

from chaos import checks
from chaos.cluster import EXTERNAL_ID_ENV, Intake, Redis, RedisMode, Sandbox, Timing, Workers, workdir, write_registry
from chaos.mayhem import Mayhem
from chaos.traffic import CONFLICTING_REQUESTER, Producer
from config.accounts import AccountRegistry
from config.settings import Settings
from sandbox.control import SandboxControl
from tests import chaos_plans
from tests.chaos_plans import RI_TYPES, Roster, sandbox_now
from tests.spine.conftest import EXTERNAL_ID, ROOT
from worker.demo import scoped_environ
from worker.ledger import PlanRecord
from worker.runtime import Runtime

TERMINAL = {"succeeded", "failed", "needs_attention", "rejected", "expired", "cancelled"}
FAMILY_SHARE = 0.6  # of the plans, spread evenly over chaos_plans.SPECS; the rest are EC2 RI purchases
ATTENTION_LIMIT = 0.01
CLOCK_STEP_SECONDS = 20  # the sandbox clock moves this far per turn while an asynchronous plan is open
# A confirmed plan the ledger still lacks this long after: lost (the drain stops waiting for it; the report says).
LOST_AFTER_SECONDS = 60
MUST_BE_ZERO = ("duplicate", "disagrees", "lost", "unsubmitted", "unsettled", "unexplained", "over_cap", "audit")


@dataclass(frozen=True)
class Params:
    plans: int = 1000
    accounts: int = 50
    seed: int = 0
    workers: int = 3
    redis: RedisMode = "sentinel"
    out: Path | None = Path("reports/chaos/latest.json")
    rate: float = 8.0  # plans XADDed per second
    concurrency: int = 2  # pool processes per worker
    kill_every: float = 6.0
    freeze_every: float = 15.0
    drain_timeout: float = 600.0


def fault_schedule(read_timeout: float) -> list[dict[str, Any]]:
    """Every mutating operation the plans call (the RI purchase and each spec's): the issue's mix, drawn by the
    sandbox's injector seeded with the run's seed. ``latency`` first (it delays, then the others may still fire):
    jitter, and a delay past the client's read timeout after which the call is applied all the same. Then each
    family operation's first call gets one fault for sure (chaos_plans.fault_rules), and the RI purchase's reads
    fail now and then (reconciling must survive them)."""
    mutating = sorted({checks.RI_PURCHASE, *(op for spec in chaos_plans.SPECS for op in spec.operations())})
    late_ms = int(read_timeout * 1000 * 1.5)
    rules: list[dict[str, Any]] = []
    for op in mutating:
        rules += [{"operation": op, "kind": "latency", "probability": 0.3, "latency_ms": 150},
                  {"operation": op, "kind": "latency", "probability": 0.03, "latency_ms": late_ms},
                  {"operation": op, "kind": "reset", "probability": 0.02},
                  {"operation": op, "kind": "throttle", "probability": 0.2},
                  {"operation": op, "kind": "error", "probability": 0.05},
                  {"operation": op, "kind": "commit_then_drop", "probability": 0.05},
                  {"operation": op, "kind": "commit_then_error", "probability": 0.02}]
    rules += [r for r in chaos_plans.fault_rules(chaos_plans.SPECS, 0) if r.get("count")]
    rules += [{"operation": "ec2:DescribeReservedInstances", "kind": "error", "probability": 0.1},
              {"operation": "ec2:DescribeReservedInstancesOfferings", "kind": "throttle", "probability": 0.1}]
    return rules


def aws_factory(url: str) -> Callable[..., Any]:
    """``aws(service, account_id=..., external_id=...)``: a boto3 client on the sandbox in the account's role."""
    def make(service: str, account_id: str, external_id: str = EXTERNAL_ID, region: str = "us-east-1") -> Any:
        base = {"aws_access_key_id": "chaos", "aws_secret_access_key": "chaos"}
        role = f"arn:aws:iam::{account_id}:role/commitd"
        creds = boto3.client("sts", region_name=region, endpoint_url=url, **base).assume_role(
            RoleArn=role, RoleSessionName="commitd-chaos-check", ExternalId=external_id)["Credentials"]
        return boto3.client(service, region_name=region, endpoint_url=url, aws_access_key_id=creds["AccessKeyId"],
                            aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
    return make


def retrying(read: Callable[[], Any], timeout: float = 60) -> Any:
    """A read of the run's own, through a failover or a restart: Redis errors count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def plan_mix(total: int, rng: Random, roster: Roster, now: datetime) -> tuple[chaos_plans.Batch, list[dict[str, Any]]]:
    per_spec = max(1, round(total * FAMILY_SHARE / len(chaos_plans.SPECS)))
    batch = chaos_plans.build(per_spec, now, roster=roster)
    ris = chaos_plans.ri_plans(max(0, total - len(batch.plans)), rng, roster)
    return batch, ris


@dataclass
class Running:
    """What a run started, to stop it all whatever happens: the mayhem first (it starts workers), then the rest."""

    intake: Intake | None = None
    workers: Workers | None = None
    mayhem: Mayhem | None = None
    producer: Producer | None = None

    def stop(self, keep_logs: bool) -> None:
        if self.producer is not None:
            self.producer.stop.set()
        if self.mayhem is not None:
            self.mayhem.join()
        if self.workers is not None:
            self.workers.stop(keep_logs)
        if self.intake is not None:
            self.intake.stop()


def run(params: Params, say: Callable[[str], None] = print) -> dict[str, Any]:
    """One chaos run; returns the report (also written to ``params.out`` when set)."""
    started_at, started = datetime.now(UTC), time.monotonic()
    rng = Random(params.seed)
    timing = Timing()
    roster = Roster.of_size(params.accounts)
    where = workdir()
    say(f"chaos: seed {params.seed}, {params.plans} plans, {params.accounts} accounts, {params.workers} workers, "
        f"redis {params.redis}; files in {where}")
    store = Redis(params.redis)
    sandbox: Sandbox | None = None
    running = Running()
    report: dict[str, Any] = {}
    try:
        sandbox = Sandbox(where, params.seed)
        env = {**store.env(), **timing.env(), "COMMITD_AWS_ENDPOINT_URL": sandbox.url,
               "COMMITD_ACCOUNTS_FILE": str(write_registry(where, roster)), "COMMITD_LOG_FORMAT": "json",
               EXTERNAL_ID_ENV: EXTERNAL_ID, "AWS_ACCESS_KEY_ID": "commitd-base",
               "AWS_SECRET_ACCESS_KEY": "commitd-base"}
        with scoped_environ(env):
            report = _run(params, rng, roster, store, sandbox, env, where, say, running)
    finally:
        running.stop(keep_logs=not report.get("passed"))
        if running.workers is not None and not report.get("passed"):
            report["worker_logs"] = [str(w.log) for w in running.workers.live + running.workers.gone]
        if sandbox is not None:
            sandbox.stop()
        store.stop()
    report["timing"]["total_seconds"] = round(time.monotonic() - started, 1)
    report["started_at"] = started_at.isoformat(timespec="seconds")
    if params.out is not None:
        params.out.parent.mkdir(parents=True, exist_ok=True)
        params.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    say(summary(report))
    return report


def _run(params: Params, rng: Random, roster: Roster, store: Redis, sandbox: Sandbox, env: dict[str, str],
         where: Path, say: Callable[[str], None], running: Running) -> dict[str, Any]:
    control = sandbox.control
    aws = aws_factory(sandbox.url)
    batch, ri_plans = plan_mix(params.plans, rng, roster, sandbox_now(control))
    control.seed(batch.seeds)
    for account in [*roster.plain, *roster.tagging]:  # moto's EC2 state of each account, built before any send
        aws("ec2", account_id=account).describe_vpcs()
    rules = fault_schedule(Timing().read_timeout)
    for rule in rules:
        control.add_fault(**rule)
    plans = batch.plans + ri_plans
    rng.shuffle(plans)

    settings = Settings()
    runtime = Runtime(settings)
    intake = running.intake = Intake(env, where / "intake.log")
    workers = running.workers = Workers(env, params.workers, params.concurrency)
    producer = running.producer = Producer(settings, plans, rng, params.rate,
                                           replicas=1 if params.redis == "sentinel" else 0)
    mayhem = running.mayhem = Mayhem(runtime, workers, Random(rng.random()), params.kill_every,
                                     params.freeze_every, Timing().lease_seconds + Timing().send_margin / 2)
    say(f"chaos: {len(plans)} plans ({len(batch.plans)} of {len(chaos_plans.SPECS)} family specs, "
        f"{len(ri_plans)} RI purchases), {len(rules)} fault rules; producing at {params.rate}/s")
    producing = time.monotonic()
    producer.start()
    mayhem.start()
    redis_event: dict[str, Any] | None = None
    submitted_seconds: float | None = None
    open_async = True
    last_look = 0.0
    states: dict[str, str] = {}
    drain_started: float | None = None
    while True:
        mayhem.keep_alive()
        intake.keep_alive()
        if redis_event is None and len(producer.sent.plans) >= len(plans) // 2:
            say("chaos: killing the Redis primary")
            redis_event = store.fail()
            say(f"chaos: {redis_event}")
        if producer.sent.done.is_set() and submitted_seconds is None:
            submitted_seconds = time.monotonic() - producing
            say(f"chaos: every plan submitted in {submitted_seconds:.0f} s")
        if submitted_seconds is not None and drain_started is None and mayhem.tally.kills >= 2 \
                and mayhem.tally.freezes >= 1:
            mayhem.join()
            drain_started = time.monotonic()
            say(f"chaos: mayhem over ({mayhem.tally.kills} kills, {mayhem.tally.freezes} freezes); draining")
        if time.monotonic() - last_look > 2:
            last_look = time.monotonic()
            try:
                states = {r.plan_id: r.state.value for r in runtime.ledger.list()}
            except redis.RedisError:
                pass
            now = time.monotonic()
            waiting = [p for p in list(producer.sent.plans) if states.get(p) not in TERMINAL and (
                p in states or now - producer.sent.confirmed_at[p] < LOST_AFTER_SECONDS)]
            open_async = any(p in batch.spec_of and batch.spec_of[p].asynchronous for p in waiting)
            if drain_started is not None:
                if not waiting and all_checked(runtime, producer.sent.plans):
                    break
                if time.monotonic() - drain_started > params.drain_timeout:
                    say(f"chaos: drain timed out with {len(waiting)} plans not settled")
                    break
        if open_async:
            control.advance_clock(CLOCK_STEP_SECONDS)
        time.sleep(0.5)
    drained = time.monotonic() - (drain_started or producing)
    producer.stop.set()
    faults = control.faults()
    control.clear_faults()  # the checks' own reads must not be faulted
    report = judge(params, runtime, control, aws, batch, producer, roster)
    report.update(
        seed=params.seed,
        parameters={**asdict(params), "out": str(params.out) if params.out else None, "timing": asdict(Timing()),
                    "ri_types": RI_TYPES, "family_specs": len(chaos_plans.SPECS)},
        machine={"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
                 "python": platform.python_version(), "host": platform.node()},
        faults={"rules": len(rules), "fired": faults["fired"],
                # Rules with a count (a fault for sure on an operation's first call) that never fired.
                "certain_unfired": [f["operation"] for f in faults["faults"] if f["count"] and f["remaining"]]},
        mayhem={**asdict(mayhem.tally), "workers_started": workers.started,
                "workers_died_on_their_own": workers.died_alone, "intake_restarts": intake.restarts,
                "redis": redis_event},
        timing={"submit_seconds": round(submitted_seconds or 0, 1), "drain_seconds": round(drained, 1)},
        workdir=str(where))
    return report


def all_checked(runtime: Runtime, plan_ids: dict[str, Any]) -> bool:
    """A succeeded plan's look-alike check may still move it to needs_attention: every check has run."""
    try:
        return all(r.verification != "due" for r in runtime.ledger.list() if r.plan_id in plan_ids)
    except redis.RedisError:
        return False


def judge(params: Params, runtime: Runtime, control: SandboxControl, aws: Callable[..., Any],
          batch: chaos_plans.Batch, producer: Producer, roster: Roster) -> dict[str, Any]:
    """The ledger against the ground truth, plan by plan (chaos.checks), and the figures of the report."""
    sent = producer.sent
    everything = {r.plan_id: r for r in retrying(runtime.ledger.list)}
    records: dict[str, PlanRecord] = {p: everything[p] for p in sent.plans if p in everything}
    out = checks.Checked()
    for plan in producer.plans:
        if plan["plan_id"] not in sent.plans:
            out.add("unsubmitted", [plan["plan_id"]], f"{plan['plan_id']} was never confirmed in the stream "
                    f"(producer: {producer.error!r})")
    for plan_id in sent.plans:
        record = records.get(plan_id)
        if record is None:
            out.add("lost", [plan_id], f"{plan_id} was confirmed in the stream and is not in the ledger")
        elif record.state.value not in TERMINAL:
            out.add("unsettled", [plan_id], f"{plan_id} is still {record.state.value} at the end of the drain")
        elif record.state.value == "rejected":
            out.add("unexplained", [plan_id], f"{plan_id}, a valid plan, was rejected: {record.error}")
    for plan_id in set(sent.conflicts):
        record = records.get(plan_id)
        if record is not None and record.plan is not None and record.plan.get("requested_by") == CONFLICTING_REQUESTER:
            out.add("disagrees", [plan_id], f"{plan_id}: the ledger keeps the conflicting copy, not the plan")
    settled = {p: r for p, r in records.items() if r.state.value in TERMINAL}
    checks.check_ri_purchases(out, runtime, control, aws, {p: r for p, r in settled.items()
                                                          if p not in batch.spec_of}, EXTERNAL_ID)
    checks.check_families(out, batch, {p: r for p, r in settled.items() if p in batch.spec_of}, control, aws)
    registry = AccountRegistry.load(runtime.settings.accounts_file)
    money = checks.money_by_account(records, registry, {p for p, r in records.items()
                                                        if r.state.value == "succeeded"})
    for account in money:
        if account.over_cap:
            out.add("over_cap", [], f"{account.account_id} committed {account.committed_usd} USD, over its caps")
    audit = subprocess.run([sys.executable, "-m", "worker.cli", "audit", "verify"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    if audit.returncode != 0:
        out.add("audit", [], f"commitd audit verify exited {audit.returncode}: {audit.stderr.strip()[-500:]}")

    by_state: dict[str, int] = {}
    by_family: dict[str, dict[str, int]] = {}
    for plan_id, record in records.items():
        state = record.state.value
        by_state[state] = by_state.get(state, 0) + 1
        slug = batch.spec_of[plan_id].slug if plan_id in batch.spec_of else "ri"
        by_family.setdefault(slug, {})
        by_family[slug][state] = by_family[slug].get(state, 0) + 1
    attention = [{"plan_id": p, "action": (r.plan or {}).get("action"), "code": (r.error or {}).get("code"),
                  "reason": (r.error or {}).get("message")}
                 for p, r in sorted(records.items()) if r.state.value == "needs_attention"]
    share = len(attention) / max(1, len(sent.plans))
    counts = {category: sum(1 for p in out.problems if p.category == category) for category in MUST_BE_ZERO}
    rejected_garbage = sum(1 for p, r in everything.items() if p not in sent.plans and r.state.value == "rejected")
    dead_letters = retrying(lambda: runtime.redis.xlen(runtime.key("rejected")))
    return {
        "passed": not any(counts.values()) and share <= ATTENTION_LIMIT,
        "must_be_zero": {
            "duplicated_resources": counts["duplicate"], "ledger_disagrees_with_ground_truth": counts["disagrees"],
            "plans_lost": counts["lost"], "plans_never_submitted": counts["unsubmitted"],
            "plans_unsettled": counts["unsettled"], "outcomes_unexplained": counts["unexplained"],
            "accounts_over_cap": counts["over_cap"], "audit_broken": counts["audit"]},
        "problems": [asdict(p) for p in out.problems],
        "plans": {"submitted": len(sent.plans), "in_ledger": len(records), "by_state": by_state,
                  "accounts": len({(p.get("account_id")) for p in sent.plans.values()}),
                  "by_family": by_family, "ris_bought": out.ris_bought,
                  "family_outcomes_explained_by_faults": len(out.explained_family_outcomes)},
        "needs_attention": {"count": len(attention), "share": round(share, 4), "limit": ATTENTION_LIMIT,
                            "plans": attention},
        "traffic": {"duplicates": sent.duplicates, "conflicts": len(sent.conflicts), "garbage": sent.garbage,
                    "garbage_rejected_in_ledger": rejected_garbage, "dead_letters": dead_letters,
                    "resends": sent.resends, "unconfirmed": sent.unconfirmed},
        "ground_truth": [asdict(k) for k in out.kinds],
        "money": [{**asdict(m), "over_cap": m.over_cap} for m in money if m.plans],
        # Plans a spend cap refused (nothing bought): the caps were put to work, not merely never reached.
        "spend_caps_reached": sum(1 for r in records.values()
                                  if r.state.value == "failed" and (r.error or {}).get("code") == "SpendCapReached"),
        "audit": {"exit_code": audit.returncode, "output": (audit.stdout + audit.stderr).strip()},
    }


def summary(report: dict[str, Any]) -> str:
    plans, attention, mayhem = report.get("plans", {}), report.get("needs_attention", {}), report.get("mayhem", {})
    lines = [
        "",
        f"chaos run, seed {report.get('seed')}: {'PASSED' if report.get('passed') else 'FAILED'}",
        f"  plans         {plans.get('submitted')} submitted over {plans.get('accounts')} accounts, "
        f"{plans.get('in_ledger')} in the ledger: "
        + ", ".join(f"{k} {v}" for k, v in sorted(plans.get("by_state", {}).items())),
        f"  traffic       {report.get('traffic')}",
        f"  faults fired  {report.get('faults', {}).get('fired')}",
        f"  mayhem        {mayhem.get('kills')} workers SIGKILLed ({mayhem.get('kills_holding_a_lease')} holding "
        f"a lease), {mayhem.get('freezes')} frozen {mayhem.get('frozen_seconds')} s, redis: {mayhem.get('redis')}",
    ]
    for name, value in report.get("must_be_zero", {}).items():
        lines.append(f"  {name:<36} {value}{'' if value == 0 else '   <-- must be 0'}")
    lines.append(f"  needs_attention                      {attention.get('count')} "
                 f"({100 * attention.get('share', 0):.1f}% of plans; at most {100 * ATTENTION_LIMIT:.0f}%)")
    for plan in attention.get("plans", []):
        lines.append(f"    {plan['plan_id']} {plan['action']}: {plan['code']}: {str(plan['reason'])[:160]}")
    for problem in report.get("problems", [])[:30]:
        lines.append(f"  problem: {problem['category']}: {problem['message'][:300]}")
    lines.append(f"  audit         {report.get('audit', {}).get('output', '')[:300]}")
    lines.append(f"  money         {sum(1 for m in report.get('money', []))} accounts committed; "
                 f"{report.get('must_be_zero', {}).get('accounts_over_cap')} over their caps")
    timing = report.get("timing", {})
    lines.append(f"  time          submitted in {timing.get('submit_seconds')} s, drained in "
                 f"{timing.get('drain_seconds')} s, {timing.get('total_seconds')} s in all")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__)
    p.add_argument("--plans", type=int, default=1000)
    p.add_argument("--accounts", type=int, default=50)
    p.add_argument("--seed", type=int, default=None, help="replay a run (default: a random seed, printed and kept)")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--redis", choices=["sentinel", "aof"], default="sentinel")
    p.add_argument("--out", type=Path, default=Path("reports/chaos/latest.json"))
    p.add_argument("--rate", type=float, default=Params.rate, help="plans XADDed per second")
    p.add_argument("--drain-timeout", type=float, default=Params.drain_timeout)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # SIGTERM (a timeout, a CI cancel) unwinds like Ctrl-C: every process the run started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.workers < 3:
        print("chaos: --workers must be at least 3", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    report = run(Params(plans=args.plans, accounts=args.accounts, seed=seed, workers=args.workers,
                        redis=args.redis, out=args.out, rate=args.rate, drain_timeout=args.drain_timeout))
    print(f"chaos: report in {args.out}; replay with: make chaos SEED={seed}")
    return 0 if report.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
