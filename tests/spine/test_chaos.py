"""A small chaos run: many plans, injected throttling, 5xx, lost answers and resets, a worker SIGKILLed midway.
At the end the ledger and the sandbox's ground truth must agree exactly: no duplicate, nothing lost."""

from __future__ import annotations

import json
import random
from typing import Any

from sandbox.control import SandboxControl
from tests.spine.conftest import ACCOUNT, ri_plan, wait_for_state
from worker.runtime import Runtime

TERMINAL = {"succeeded", "failed", "needs_attention", "rejected", "expired", "cancelled"}
TYPES = ["m5.large", "m5.xlarge", "c5.large", "r5.large", "t3.medium"]


def test_chaos_run_ends_with_ledger_equal_to_ground_truth(
    runtime: Runtime, sandbox: SandboxControl, intake_loop: Any, start_worker: Any
) -> None:
    rng = random.Random(20261128)
    for operation, kind, probability in [
        ("ec2:PurchaseReservedInstancesOffering", "throttle", 0.15),
        ("ec2:PurchaseReservedInstancesOffering", "commit_then_drop", 0.15),
        ("ec2:PurchaseReservedInstancesOffering", "reset", 0.1),
        ("ec2:PurchaseReservedInstancesOffering", "error", 0.1),
        ("ec2:DescribeReservedInstances", "error", 0.1),
        ("ec2:DescribeReservedInstancesOfferings", "throttle", 0.1),
    ]:
        sandbox.add_fault(operation, kind, probability=probability)
    first = start_worker("chaos-a", concurrency=2)
    start_worker("chaos-b", concurrency=2)
    plan_ids = []
    for n in range(40):
        # Few instance types, so plans often share an offering and wait for each other's signature lock.
        plan = ri_plan(f"chaos-{n}", instance_type=rng.choice(TYPES), instance_count=rng.randint(1, 3),
                       max_hourly_usd="1.00")
        runtime.redis.xadd(runtime.key("plans"), {"plan": json.dumps(plan)})
        plan_ids.append(plan["plan_id"])
        if n == 20:
            first.kill()
            start_worker("chaos-c", concurrency=2)
    records = {p: wait_for_state(runtime, p, TERMINAL, timeout=240) for p in plan_ids}
    sandbox.clear_faults()

    states = [r.state.value for r in records.values()]
    bought = {r["id"] for r in sandbox.resources(account_id=ACCOUNT, type="reserved-instances")}
    claimed = [r.result["reserved_instances_id"] for r in records.values() if r.state.value == "succeeded"]
    unsettled = [p for p, r in records.items() if r.state.value == "needs_attention"]
    print(f"chaos: {states.count('succeeded')} succeeded, {states.count('failed')} failed, "
          f"{len(unsettled)} need attention; {len(bought)} RIs bought")
    for plan_id in unsettled:
        print(plan_id, records[plan_id].error.get("code"), records[plan_id].error.get("last_error"),
              [h.note for h in records[plan_id].history][-4:])
    assert states.count("succeeded") >= 20
    assert len(claimed) == len(set(claimed)), "two plans claim the same RI"
    assert set(claimed) <= bought, "a plan claims an RI that does not exist"
    # Every RI bought belongs to a succeeded plan, except at most one per plan whose outcome a person must settle.
    assert len(bought - set(claimed)) <= len(unsettled)
    if not unsettled:
        assert bought == set(claimed)
    assert runtime.audit.verify().ok
