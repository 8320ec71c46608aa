"""Price checks that no other test reached, found by `make mutants` (scripts/mutants.py): each test names the
mutants it kills. Plans go through the real intake and executor (in this process), a private redis-server and a
sandbox over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from sandbox.app import SandboxApp
from sandbox.catalogue import Catalogue
from sandbox.control import SandboxControl
from sandbox.server import SandboxServer
from tasks import ACTIONS
from tests.spine.conftest import ACCOUNT
from tests.spine.test_guards import run_until_settled
from worker.runtime import Runtime

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans"
# The offerings every purchase below chooses from, in the sandbox's catalogue.
PRICED_SECTIONS = ("ec2_ri_offerings", "rds_offerings", "redshift_offerings", "es_offerings", "opensearch_offerings")


# One currency that sorts before "USD" and one after: a check turned into < or > still lets one of them through.
@pytest.fixture(scope="module", params=["EUR", "ZAR"])
def foreign_sandbox(request: pytest.FixtureRequest) -> Iterator[tuple[SandboxServer, str]]:
    """A second sandbox whose offerings are all priced in another currency: what AWS answers in an account billed
    in euros or rand."""
    currency: str = request.param
    catalogue = Catalogue.load()
    for name in PRICED_SECTIONS:
        assert catalogue.section(name), name
        for offering in catalogue.section(name):
            assert offering["CurrencyCode"] == "USD"
            offering["CurrencyCode"] = currency
    server = SandboxServer(SandboxApp(catalogue)).start()
    yield server, currency
    server.stop()


@pytest.mark.parametrize("example", [
    "ec2-purchase-reserved-instances-offering.json",
    "rds-purchase-reserved-db-instances-offering.json",
    "redshift-purchase-reserved-node-offering.json",
    "es-purchase-reserved-elasticsearch-instance-offering.json",
    "es-purchase-reserved-elasticsearch-instance.json",
])
def test_an_offering_priced_in_another_currency_is_never_bought(
    runtime: Runtime, foreign_sandbox: tuple[SandboxServer, str], example: str
) -> None:
    """The ceilings are in USD, so an offering priced in EUR or ZAR fails the plan before any send.
    Kills, in each action's prepare, ``offering.get("CurrencyCode", "USD") != "USD"`` -> ``>``, ``<`` or ``==``:
    tasks/ec2_reserved_instances.py, tasks/_reserved_by_id.py (RDS), tasks/redshift_reservations.py,
    tasks/opensearch_reservations.py (both Elasticsearch actions)."""
    from worker.celery_app import enqueue
    from worker.intake import Intake

    server, currency = foreign_sandbox
    own = Runtime(Settings(**{**runtime.settings.model_dump(), "aws_endpoint_url": server.url}))
    control = SandboxControl(server.url)
    control.reset()
    plan: dict[str, Any] = json.loads((EXAMPLES / example).read_text())
    assert plan["account_id"] == ACCOUNT and plan["action"] in ACTIONS
    result = Intake(own, ACTIONS, enqueue).submit_raw(json.dumps(plan), "test")
    assert result.outcome == "accepted", result

    assert run_until_settled(own, plan["plan_id"]) == "failed"
    record = own.ledger.get(plan["plan_id"])
    assert record.error["code"] == "UnsupportedCurrency" and currency in record.error["message"], record.error
    assert record.intent is None  # refused in prepare: no intent, so no send was ever possible
    assert control.resources(account_id=ACCOUNT) == []


def test_an_exchange_whose_target_has_an_hourly_price_counts_it_over_the_whole_term(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    """A Partial Upfront DC1 node is exchanged for the Partial Upfront DC2 offering: the new reservation's cost is
    (upfront + hourly × term hours) × nodes, and max_total_usd bounds all of it. A cent under refuses, the exact
    figure goes ahead, once. Kills tasks/redshift_reservations.py AcceptReservedNodeExchange.prepare:
    ``duration // 3600`` -> ``duration % 3600`` (the hourly part dropped; every other test's target is All
    Upfront) and ``total > p.max_total_usd`` -> ``>=``."""
    from decimal import Decimal

    [target] = [o for o in Catalogue.load().section("redshift_offerings")
                if (o["Region"], o["NodeType"], o["OfferingType"], o["Duration"])
                == ("us-east-1", "dc2.large", "Partial Upfront", 365 * 24 * 3600)]
    hourly = sum(Decimal(str(c["RecurringChargeAmount"])) for c in target["RecurringCharges"])
    assert hourly > 0
    total = (Decimal(str(target["FixedPrice"])) + hourly * 365 * 24) * 2
    sandbox.seed([{"kind": "redshift:reserved-node", "account_id": ACCOUNT, "region": "us-east-1",
                   "node_type": "dc1.large", "offering_type": "Partial Upfront", "duration_years": 1,
                   "node_count": 2, "start_days_ago": 200, "id": "dc1-partial"}])

    def exchange(plan_id: str, ceiling: Decimal) -> Any:
        plan = {"plan_id": plan_id, "action": "redshift:AcceptReservedNodeExchange", "account_id": ACCOUNT,
                "region": "us-east-1", "requested_by": "planner@test", "trigger": "queued",
                "params": {"reserved_node_id": "dc1-partial", "node_count": 2, "target_node_type": "dc2.large",
                           "max_total_usd": str(ceiling)}}
        assert intake.submit_raw(json.dumps(plan), "test").outcome == "accepted"
        run_until_settled(runtime, plan_id)
        return runtime.ledger.get(plan_id)

    under = exchange("ex-cent-under", total - Decimal("0.01"))
    assert under.state.value == "failed" and under.error["code"] == "PriceAboveCeiling", under.error
    assert Decimal(under.error["details"]["total_usd"]) == total
    assert [n["state"] for n in sandbox.resources(account_id=ACCOUNT, type="reserved-node")] == ["active"]

    exact = exchange("ex-exact", total)
    assert exact.state.value == "succeeded", exact.error
    assert Decimal(exact.intent["commitment_usd"]) == total
    states = sorted(n["state"] for n in sandbox.resources(account_id=ACCOUNT, type="reserved-node"))
    assert states == ["active", "retired"]


@pytest.mark.parametrize("years", [1, 3])
@pytest.mark.parametrize(("example", "count_param"), [
    ("ec2-purchase-reserved-instances-offering.json", "instance_count"),
    ("redshift-purchase-reserved-node-offering.json", "node_count"),
    ("es-purchase-reserved-elasticsearch-instance-offering.json", "instance_count"),
    ("es-purchase-reserved-elasticsearch-instance.json", "instance_count"),
])
def test_the_intake_counts_the_hourly_ceiling_over_the_whole_term(
    runtime: Runtime, accounts_file: Path, tmp_path: Path, example: str, count_param: str, years: int
) -> None:
    """A plan whose ceilings are 100 USD upfront and 0.25 USD an hour for 3 units may commit up to
    100 + 0.25 × 3 × 8760 × years: the account's per-plan limit set exactly there admits it, a cent less refuses it
    and names that figure. (max_total_usd, where the action has one, is set far above, so the term's hours decide.)
    Kills tasks/redshift_reservations.py PurchaseReservedNodeParams.term_hours: ``// 3600`` -> ``| 3600``, and the
    same arithmetic in the EC2 and OpenSearch purchases."""
    from decimal import Decimal

    from tests.spine.test_mutant_guards import _accounts_with_limits
    from worker.celery_app import enqueue
    from worker.intake import Intake

    plan = json.loads((EXAMPLES / example).read_text())
    params = {**plan["params"], "duration_years": years, count_param: 3, "max_upfront_usd": "100",
              "max_hourly_usd": "0.25"}
    if "max_total_usd" in params:
        params["max_total_usd"] = "10000000"
    worst = Decimal("100") + Decimal("0.25") * 3 * 8760 * years

    def submitted(limit: Decimal, plan_id: str) -> Any:
        limits = _accounts_with_limits(accounts_file, tmp_path / plan_id, Decimal("100"), limit)
        own = Runtime(Settings(**{**runtime.settings.model_dump(), "accounts_file": limits}))
        return Intake(own, ACTIONS, enqueue).submit_raw(json.dumps({**plan, "plan_id": plan_id, "params": params}),
                                                        "test")

    at_limit = submitted(worst, f"term-{years}-at")
    assert at_limit.outcome == "accepted", at_limit
    below = submitted(worst - Decimal("0.01"), f"term-{years}-below")
    assert below.outcome == "rejected", below
    assert f"may commit up to {worst} USD in total" in below.message, below.message
