"""rds:PurchaseReservedDbInstancesOffering and elasticache:PurchaseReservedCacheNodesOffering through the real
path: intake → a Celery worker process → the sandbox over HTTP. Both share one API shape (a customer-chosen
reservation id), so every test runs both, on one worker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from sandbox.control import SandboxControl
from tests.families.harness import (
    assert_nothing_spent,
    assert_session_confined,
    family_plan,
    ground_truth,
    settled,
    submit,
)
from tests.production_role import PRODUCTION_ROLE_POLICY
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID
from worker.execution import derive_token
from worker.runtime import Runtime

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans"


@dataclass(frozen=True)
class Service:
    name: str
    action: str
    kind: str  # the sandbox's resource type
    example: str
    seed_kind: str
    result_id: str
    result_count: str
    count_param: str
    # A cheap selector (1 year, No Upfront) in the parameters' names, and the same for a seed entry.
    cheap: dict[str, Any]
    seed_cheap: dict[str, Any]
    quota: int  # the sandbox's quota of units per account and region


RDS = Service(
    "rds", "rds:PurchaseReservedDbInstancesOffering", "reserved-db-instance",
    "rds-purchase-reserved-db-instances-offering.json", "rds:reserved-db-instance", "reserved_db_instance_id",
    "db_instance_count", "db_instance_count",
    {"db_instance_class": "db.t3.medium", "product_description": "mysql", "duration_years": 1,
     "offering_type": "No Upfront", "multi_az": False},
    {"db_instance_class": "db.t3.medium", "product_description": "mysql", "duration_years": 1,
     "offering_type": "No Upfront", "multi_az": False},
    40,
)
ELASTICACHE = Service(
    "elasticache", "elasticache:PurchaseReservedCacheNodesOffering", "reserved-cache-node",
    "elasticache-purchase-reserved-cache-nodes-offering.json", "elasticache:reserved-cache-node",
    "reserved_cache_node_id", "cache_node_count", "cache_node_count",
    {"cache_node_type": "cache.t3.medium", "product_description": "redis", "duration_years": 1,
     "offering_type": "No Upfront"},
    {"cache_node_type": "cache.t3.medium", "product_description": "redis", "duration_years": 1,
     "offering_type": "No Upfront"},
    300,
)
SERVICES = (RDS, ELASTICACHE)
CEILINGS = {"max_upfront_usd": "0", "max_hourly_usd": "0.05", "max_total_usd": "200000"}


def bought(sandbox: SandboxControl, service: Service) -> list[dict[str, Any]]:
    """Reservations a purchase call made (seeded ones excluded)."""
    return [r for r in ground_truth(sandbox, service.kind) if r["created_by"]["operation"] != "seed"]


def cheap_plan(service: Service, plan_id: str, count: int = 1, **params: Any) -> dict[str, Any]:
    return family_plan(service.action, plan_id, {**service.cheap, **CEILINGS, service.count_param: count, **params})


def run_all(runtime: Runtime, intake: Any, plans: list[dict[str, Any]]) -> dict[str, Any]:
    for plan in plans:
        submit(intake, plan)
    return {plan["plan_id"]: settled(runtime, plan["plan_id"]) for plan in plans}


def test_example_plans_buy_once_under_the_production_role(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    sandbox.set_iam(True, PRODUCTION_ROLE_POLICY, external_id=EXTERNAL_ID)
    start_worker()
    plans = {s.name: json.loads((EXAMPLES / s.example).read_text()) for s in SERVICES}
    records = run_all(runtime, intake, list(plans.values()))
    for service in SERVICES:
        plan = plans[service.name]
        record = records[plan["plan_id"]]
        assert record.state.value == "succeeded", (service.name, record.error)
        [made] = bought(sandbox, service)
        reservation_id = derive_token(plan["plan_id"])
        # The ground-truth id is the reservation's ARN; its customer id is the one derived from the plan id.
        assert record.result["resource_ids"] == [made["id"]] and made["id"].endswith(reservation_id)
        assert made["created_by"]["token"] == reservation_id == record.result[service.result_id]
        assert record.idempotency == {"kind": "customer_id", "value": reservation_id}
        assert record.result[service.result_count] == plan["params"][service.count_param]
        assert_session_confined(runtime, service.action)
    # All Upfront, 2 × db.r5.large: the whole commitment is upfront.
    rds = records[plans["rds"]["plan_id"]].result
    assert Decimal(rds["commitment_usd"]) == Decimal(rds["upfront_usd"]) > 0 and Decimal(rds["hourly_usd"]) == 0
    # Partial Upfront, 3 × cache.r5.large: upfront plus the hourly part over 8760 h.
    cache = records[plans["elasticache"]["plan_id"]].result
    assert Decimal(cache["commitment_usd"]) == Decimal(cache["upfront_usd"]) + Decimal(cache["hourly_usd"]) * 3 * 8760


def test_lost_answers_are_found_by_id_and_throttles_buy_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    for service in SERVICES:
        sandbox.add_fault(f"{service.name}:Purchase*", "commit_then_drop", count=1)
    records = run_all(runtime, intake, [cheap_plan(s, f"{s.name}-dropped", 2) for s in SERVICES])
    for service in SERVICES:
        record = records[f"{service.name}-dropped"]
        assert record.state.value == "succeeded", (service.name, record.error)
        assert record.result["reconciled"] is True and record.result["found_by"] == "reservation_id"
        assert record.book["sends"] == 1  # found, never sent again
        [made] = bought(sandbox, service)
        assert record.result["resource_ids"] == [made["id"]]

    for service in SERVICES:
        sandbox.add_fault(f"{service.name}:Purchase*", "throttle", count=2)
        [record] = run_all(runtime, intake, [cheap_plan(service, f"{service.name}-throttled")]).values()
        assert record.state.value == "succeeded", (service.name, record.error)
        assert record.book["sends"] == 3
        assert len(bought(sandbox, service)) == 2  # one per plan
    assert sandbox.faults()["fired"] == {"commit_then_drop": 2, "throttle": 4}


def test_a_purchase_that_never_reached_aws_is_found_absent_by_id_and_sent_once_more(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """The connection drops before AWS takes the purchase: the read by reservation id answers NotFound (AWS's error
    for an id it has never seen), which reconciliation must take as "not bought" and send again, once. (A surviving
    mutant of `make mutants` made that handler catch nothing: the error went up and the plan was retried blindly.)"""
    start_worker()
    for service in SERVICES:
        sandbox.add_fault(f"{service.name}:Purchase*", "reset", count=1)
    records = run_all(runtime, intake, [cheap_plan(s, f"{s.name}-never-sent") for s in SERVICES])
    for service in SERVICES:
        record = records[f"{service.name}-never-sent"]
        assert record.state.value == "succeeded", (service.name, record.error)
        assert record.book["sends"] == 2 and record.attempts == 1  # the lost one, then the one AWS took
        [made] = bought(sandbox, service)
        assert record.result["resource_ids"] == [made["id"]] and record.result.get("reconciled") is not True
    assert sandbox.faults()["fired"] == {"reset": 2}


def test_an_id_already_taken_is_looked_up_never_adopted_blindly(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """AlreadyExists means "look": the plan's own reservation (its record lost, say) is found by its id and
    claimed without a second purchase; a reservation under the id that is not the plan's fails the plan."""
    start_worker()
    seeds = []
    for service in SERVICES:
        base = {"kind": service.seed_kind, "account_id": ACCOUNT, "region": "us-east-1", **service.seed_cheap}
        # Bought moments ago under this plan's id, with its offering and count.
        seeds.append({**base, service.count_param: 2, "id": derive_token(f"{service.name}-mine")})
        # Under this plan's id, but a different count, a year ago.
        seeds.append({**base, service.count_param: 5, "id": derive_token(f"{service.name}-taken"),
                      "start_days_ago": 300})
    sandbox.seed(seeds)  # with the worker ready: "moments ago" stays within the 10 s tolerance of AWS's clock
    plans = [cheap_plan(s, f"{s.name}-{which}", 2) for s in SERVICES for which in ("mine", "taken")]
    records = run_all(runtime, intake, plans)
    for service in SERVICES:
        mine, taken = records[f"{service.name}-mine"], records[f"{service.name}-taken"]
        assert mine.state.value == "succeeded", (service.name, mine.error)
        assert mine.result["reconciled"] is True and mine.book["sends"] == 1
        assert taken.state.value == "failed", (service.name, taken.model_dump())
        assert taken.error["code"] == "ReservationIdTaken" and "nothing was bought" in taken.error["message"]
        assert taken.error["details"]["count"] == 5
        assert bought(sandbox, service) == [] and len(ground_truth(sandbox, service.kind)) == 2


def test_terminal_aws_error_fails_with_awss_reason(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    records = run_all(runtime, intake, [cheap_plan(s, f"{s.name}-quota", s.quota + 1) for s in SERVICES])
    for service, code in ((RDS, "ReservedDBInstanceQuotaExceeded"), (ELASTICACHE, "ReservedCacheNodeQuotaExceeded")):
        record = records[f"{service.name}-quota"]
        assert record.state.value == "failed" and record.error["code"] == code, record.error
        assert f"quota of {service.quota}" in record.error["message"]
        assert bought(sandbox, service) == []


def test_guards_refuse_with_nothing_bought(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    cases = []
    for s in SERVICES:
        cases += [
            (cheap_plan(s, f"{s.name}-hourly", max_hourly_usd="0.04"), "PriceAboveCeiling"),
            (cheap_plan(s, f"{s.name}-total", 3, max_total_usd="1000"), "PriceAboveCeiling"),
            (cheap_plan(s, f"{s.name}-upfront", offering_type="All Upfront", max_hourly_usd="0"),
             "PriceAboveCeiling"),
            # A product description AWS would match partially ("sql" in "mysql"): never taken for the offering.
            (cheap_plan(s, f"{s.name}-partial", product_description=s.cheap["product_description"][1:]),
             "NoMatchingOffering"),
            (cheap_plan(s, f"{s.name}-unknown", offering_id="00000000-0000-0000-0000-000000000000"),
             "NoMatchingOffering"),
        ]
    records = run_all(runtime, intake, [plan for plan, _ in cases])
    for plan, code in cases:
        record = records[plan["plan_id"]]
        assert record.error and record.error["code"] == code, (plan["plan_id"], record.error)
        for service in SERVICES:
            assert_nothing_spent(record, sandbox, service.kind)
    hourly = records["rds-hourly"].error
    assert "max_hourly_usd 0.04" in hourly["message"] and hourly["details"]["hourly_usd"] == "0.0469"
