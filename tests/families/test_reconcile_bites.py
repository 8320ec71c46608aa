"""Reconciliation paths that no other test reached, found by `make mutants` (scripts/mutants.py): each test names
the mutants it kills. Plans go through the real intake and executor (in this process), a private redis-server and
the sandbox over HTTP."""

from __future__ import annotations

from typing import Any

from sandbox.control import SandboxControl
from tests.families.harness import family_plan, submit
from tests.families.test_ec2_ri_lifecycle import EXCHANGE, example, made_by, seed_convertible, state_of
from tests.spine.test_guards import run_until_settled
from worker.runtime import Runtime


def test_an_exchange_whose_call_never_reached_aws_is_found_absent_and_made_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    """The connection drops before AWS takes the exchange: the sources are still active, so reconciliation must
    call it absent and send again (the only test where a reconcile sees active sources after a send).
    Kills tasks/ec2_ri_exchange.py AcceptExchangeQuote.reconcile: ``state == "retired"`` -> ``is not`` (every
    source counted as retired: the plan waits for a new RI that never comes)."""
    source = "5d000000-0000-4000-8000-000000000091"
    seed_convertible(sandbox, source)
    sandbox.add_fault(EXCHANGE, "reset", count=1)
    plan = family_plan(EXCHANGE, "exchange-never-sent",
                       {**example("ec2-accept-exchange-quote.json")["params"], "reserved_instance_ids": [source]})
    submit(intake, plan)

    assert run_until_settled(runtime, "exchange-never-sent") == "succeeded"
    record = runtime.ledger.get("exchange-never-sent")
    assert sandbox.faults()["fired"]["reset"] == 1
    assert record.book["sends"] == 2  # the lost one, then the one AWS took
    [new] = made_by(sandbox, EXCHANGE)
    assert record.result["resource_ids"] == [new["id"]]
    assert state_of(sandbox, source) == "retired"
