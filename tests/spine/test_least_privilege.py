"""Least privilege, proven end to end: the sandbox enforces IAM with the shipped documents (deploy/iam/, built by
worker/policy.py) as the customer roles' policies, the trust policy on every AssumeRole and the hub policy as the
daemon's own identity; real Celery workers run one example plan of every family (the demo's tour).

- production policy (and the organizations block, and the extras, where the account grants them): every plan
  succeeds (the Scheduled Instances purchase fails as AWS no longer sells them), tags land where granted;
- trial policy, account not marked read_only: every mutating call is denied, every plan ends ``failed`` with
  AWS's denial, nothing is made;
- trial policy, account marked read_only: every plan runs as a dry run and says so, nothing is made.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox.control import SandboxControl
from sandbox.server import SandboxServer
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID, ORG_ACCOUNT, ORG_BUYER_ACCOUNT, TAGGING_ACCOUNT
from worker import policy
from worker.demo import Sample, Watcher, submit
from worker.demo_tour import TOUR, ClockDriver, Stop, sandbox_now, seed_sandbox

HUB_ROLE = "arn:aws:iam::123456789012:role/commitd-hub"  # the sandbox's account of the daemon's base credentials
EXTRAS = ["ec2:CreateTags", "iam:PassRole", "es:PurchaseReservedInstanceOffering"]
DENIED = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthorizationError"}
# The extras at work on the live path: the same examples, in the account that grants ec2:CreateTags.
TAGGED = (
    Stop("ec2_reserved_instances", "ec2-purchase-reserved-instances-offering.json", "lp-tagged-ri"),
    Stop("ec2_capacity_reservations", "ec2-create-capacity-reservation.json", "lp-tagged-capacity"),
    Stop("ec2_spot", "ec2-request-spot-instances.json", "lp-tagged-spot"),
)


def _merge(*documents: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [s for d in documents for s in d["Statement"]]}


def write_accounts(path: Path, read_only: bool) -> None:
    def account(account_id: str, **extra: Any) -> dict[str, Any]:
        return {"account_id": account_id, "role_arn": f"arn:aws:iam::{account_id}:role/commitd",
                "external_id_env": "COMMITD_TEST_EXTERNAL_ID", "read_only": read_only, **extra}

    path.write_text(json.dumps({"accounts": [
        account(ACCOUNT),
        account(TAGGING_ACCOUNT, extra_permissions=EXTRAS),
        account(ORG_ACCOUNT, optional_blocks=["organizations"]),
        account(ORG_BUYER_ACCOUNT, optional_blocks=["organizations"]),
    ]}))


@pytest.fixture
def accounts_file(tmp_path: Path) -> Path:
    path = tmp_path / "accounts.json"
    write_accounts(path, read_only=False)
    return path


def enforce(server: SandboxServer, production: bool) -> None:
    """The shipped documents as the roles' policies, their trust policy and the daemon's hub policy."""
    if production:
        base = policy.production_policy()
        roles = {ACCOUNT: base, TAGGING_ACCOUNT: _merge(base, policy.extras_policy()),
                 ORG_ACCOUNT: _merge(base, policy.organizations_policy()),
                 ORG_BUYER_ACCOUNT: _merge(base, policy.organizations_policy())}
    else:
        roles = dict.fromkeys((ACCOUNT, TAGGING_ACCOUNT, ORG_ACCOUNT, ORG_BUYER_ACCOUNT), policy.trial_policy())
    server.app.iam.configure(True, {"Statement": []}, EXTERNAL_ID, account_policies=roles,
                             trust_policy=policy.trust_policy(HUB_ROLE, EXTERNAL_ID), hub_policy=policy.hub_policy())


def run(runtime: Any, sandbox: SandboxControl, worker: Any, prefix: str, stops: tuple[Stop, ...],
        retarget: dict[str, str] | None = None) -> dict[str, Any]:
    """Seed the sandbox, submit the stops' plans (ids prefixed), wait until they settle, moving AWS's clock."""
    seed_sandbox(sandbox.url)
    sandbox.seeded = {r["id"] for r in sandbox.resources()}  # type: ignore[attr-defined]
    now = sandbox_now(sandbox.url)
    samples = []
    for stop in stops:
        plan = stop.plan(now)
        plan["plan_id"] = f"{prefix}-{stop.plan_id}"
        plan["account_id"] = (retarget or {}).get(stop.plan_id, plan["account_id"])
        samples.append(Sample(plan, stop.expected, stop.error_code, family=stop.family))
    submit(runtime, samples)
    records = Watcher(runtime, worker.process).wait([s.plan_id for s in samples], tick=ClockDriver(sandbox.url,
                                                                                                   print))
    return {sample.plan_id: (sample, records[sample.plan_id]) for sample in samples}


def _tags(server: SandboxServer, resource_id: str) -> dict[str, str]:
    [resource] = [r for r in server.app.state.all() if r.id == resource_id]
    return {t["Key"]: t["Value"] for t in resource.data.get("Tags") or []}


def test_production_policy_runs_every_family(runtime: Any, sandbox: SandboxControl, sandbox_server: SandboxServer,
                                             intake_loop: Any, start_worker: Callable[..., Any]) -> None:
    enforce(sandbox_server, production=True)
    worker = start_worker("lp-prod", concurrency=4)
    outcomes = run(runtime, sandbox, worker, "prod", TOUR + TAGGED,
                   retarget={stop.plan_id: TAGGING_ACCOUNT for stop in TAGGED})
    unmet = {plan_id: (r.state.value, r.error) for plan_id, (s, r) in outcomes.items() if not s.met(r)}
    assert unmet == {}
    assert {s.family for s, _ in outcomes.values()} >= {stop.family for stop in TOUR}
    # The extras at work: the RI tagged after the purchase, the others tagged on creation, with the plan id.
    for stop in TAGGED:
        record = outcomes[f"prod-{stop.plan_id}"][1]
        resource_ids = [record.result["reserved_instances_id"]] if stop.example.startswith("ec2-purchase") \
            else record.result["resource_ids"]
        for resource_id in resource_ids:
            assert _tags(sandbox_server, resource_id) == {"commitd:plan-id": f"prod-{stop.plan_id}",
                                                          "commitd:managed-by": "commitd"}


def test_trial_policy_denies_every_mutating_call(runtime: Any, sandbox: SandboxControl,
                                                 sandbox_server: SandboxServer, intake_loop: Any,
                                                 start_worker: Callable[..., Any]) -> None:
    enforce(sandbox_server, production=False)
    worker = start_worker("lp-trial", concurrency=4)
    outcomes = run(runtime, sandbox, worker, "trial", TOUR)
    for plan_id, (sample, record) in outcomes.items():
        assert record.state.value == "failed", (plan_id, record.state.value, record.error)
        expected = {sample.error_code} if sample.error_code else DENIED  # scheduled: no availability, no call
        assert record.error["code"] in expected, (plan_id, record.error)
    assert {r["id"] for r in sandbox.resources()} == sandbox.seeded  # type: ignore[attr-defined]


def test_trial_policy_read_only_runs_dry(runtime: Any, sandbox: SandboxControl, sandbox_server: SandboxServer,
                                        accounts_file: Path, intake_loop: Any,
                                        start_worker: Callable[..., Any]) -> None:
    write_accounts(accounts_file, read_only=True)
    enforce(sandbox_server, production=False)
    worker = start_worker("lp-dry", concurrency=4)
    outcomes = run(runtime, sandbox, worker, "dry", TOUR)
    for plan_id, (sample, record) in outcomes.items():
        if sample.error_code:  # scheduled instances: AWS's empty availability fails the plan before any call
            assert (record.state.value, record.error["code"]) == ("failed", sample.error_code)
            continue
        assert record.state.value == "succeeded", (plan_id, record.state.value, record.error)
        assert record.result["dry_run"] is True
        assert "read-only trial role" in record.history[-1].note
        # Where the API has a DryRun, AWS's answer says the trial role may not make the call.
        if "permitted" in record.result:
            assert record.result["permitted"] is False, (plan_id, record.result)
    assert {r["id"] for r in sandbox.resources()} == sandbox.seeded  # type: ignore[attr-defined]
