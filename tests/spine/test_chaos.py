"""The chaos run at CI size (``make chaos`` runs it at 1,000 plans; docs/chaos.md): 150 plans of every family and
EC2 RI purchases over 50 accounts, submitted through the intake stream while the run goes on (with duplicates,
conflicting copies and garbage), the sandbox faulting every mutating call, three Celery worker processes SIGKILLed
and frozen past their lease, and the Redis primary killed mid-run (Sentinel fails over to a replica).

At the end the sandbox's ground truth and the ledger agree: every RI bought belongs to exactly one plan, every
succeeded plan to exactly one RI, claims name their plan; for every other family, each kind of resource the
plans' operations made is exactly what the ledger's records name (tests/chaos_plans.py); no confirmed plan is
lost; every plan left to a person is explained, and they are at most 1%; the audit trail verifies.

``CHAOS_SEED=n`` replays a run (the seed is in the report and the test's output)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from chaos.cluster import Timing
from chaos.run import ATTENTION_LIMIT, Params, run
from tests import chaos_plans

SEED = int(os.environ.get("CHAOS_SEED", "20261128"))
PLANS = 150


def test_chaos_run_every_family_over_50_accounts_ledger_equals_ground_truth(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    report = run(Params(plans=PLANS, accounts=50, seed=SEED, workers=3, redis="sentinel", out=out,
                        drain_timeout=120))
    assert json.loads(out.read_text())["seed"] == SEED
    problems = [f"{p['category']}: {p['message']}" for p in report["problems"]]
    assert report["must_be_zero"] == dict.fromkeys(report["must_be_zero"], 0), problems
    attention = report["needs_attention"]
    assert attention["share"] <= ATTENTION_LIMIT, attention["plans"]
    assert report["passed"]

    plans = report["plans"]
    assert plans["submitted"] == plans["in_ledger"] == PLANS
    assert plans["accounts"] >= 40  # the registry holds 50; the management accounts take the organizations' plans
    by_family = plans["by_family"]
    # Every family, every creating action; the scheduled-instance purchase, which AWS no longer sells, fails.
    assert set(by_family) == {spec.slug for spec in chaos_plans.SPECS} | {"ri"}
    assert by_family["sched-buy"] == {"failed": sum(by_family["sched-buy"].values())}
    ri = by_family["ri"]
    assert ri.get("succeeded", 0) >= sum(ri.values()) // 2
    assert plans["ris_bought"] >= ri.get("succeeded", 0)
    # Every fifth RI purchase goes to an account with a daily commitment cap that admits only some of them, run
    # concurrently on every worker: what it committed stays under the cap (over_cap is among the must-be-zeros).
    [capped] = [m for m in report["money"] if m["account_id"] == chaos_plans.CAPPED_ACCOUNT]
    assert 0 < float(capped["committed_usd"]) <= float(chaos_plans.CAPPED_PER_DAY_USD), capped
    assert report["spend_caps_reached"] >= 1, "the cap never refused a plan: the test did not test it"
    family_plans = PLANS - sum(ri.values())
    assert plans["family_outcomes_explained_by_faults"] <= max(2, family_plans // 10)
    for kind in report["ground_truth"]:  # every kind of thing the plans make was made, and named by the ledger
        if kind["spec"] == "sched-buy":
            assert kind["truth"] == 0, kind
        else:
            assert kind["named"] >= 1, kind

    faults = report["faults"]
    # Every family operation that plans call met its certain fault; every kind of fault fired.
    assert faults["certain_unfired"] == []
    assert {"throttle", "error", "commit_then_drop", "reset", "latency"} <= set(faults["fired"]), faults

    mayhem = report["mayhem"]
    assert mayhem["kills"] >= 2 and mayhem["kills_holding_a_lease"] >= 1, mayhem
    assert mayhem["freezes"] >= 1 and min(mayhem["frozen_seconds"]) > Timing().lease_seconds, mayhem
    assert mayhem["workers_died_on_their_own"] == 0 and mayhem["intake_restarts"] == 0, mayhem
    assert mayhem["redis"]["kind"] == "failover" and mayhem["redis"]["new_port"] != mayhem["redis"]["old_port"]

    traffic = report["traffic"]
    assert traffic["duplicates"] >= 1 and traffic["conflicts"] >= 1 and traffic["garbage"] >= 1, traffic
    # Every garbage entry ends as a rejected record of its own; each garbage entry and conflicting copy is also a
    # dead letter (a dead letter may be written twice when a failover loses its acknowledgement).
    assert traffic["garbage_rejected_in_ledger"] == traffic["garbage"], traffic
    assert traffic["dead_letters"] >= traffic["garbage"] + traffic["conflicts"], traffic
    assert traffic["unconfirmed"] == []
    assert report["audit"]["exit_code"] == 0 and "intact" in report["audit"]["output"]
