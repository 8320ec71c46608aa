"""Dry runs by configuration (worker.controls.dry_run_reason): COMMITD_DRY_RUN for every account, ``dry_run: true``
for one account, and a read-only (trial) account's ``read_only_plans``: a real worker process, the sandbox over
HTTP. A dry run says why in its result; nothing mutating reaches AWS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.control import SandboxControl
from tests.spine.conftest import ROOT, ri_plan, wait_for_state
from tests.spine.test_exactly_once import SETTLED
from tests.spine.test_spend_caps import OwnAccounts, account_entry, open_own_accounts
from worker.plans import PlanState
from worker.runtime import Runtime, set_runtime

NORMAL = "323232323232"
DRY = "343434343434"  # dry_run: true
TRIAL = "353535353535"  # read_only, read_only_plans left at its default (dry_run)
TRIAL_FAIL = "363636363636"  # read_only, read_only_plans: fail
ACCOUNTS = [
    account_entry(NORMAL, "normal"),
    account_entry(DRY, "dry", dry_run=True),
    account_entry(TRIAL, "trial", role_arn=f"arn:aws:iam::{TRIAL}:role/commitd-trial", read_only=True),
    account_entry(TRIAL_FAIL, "trial-fail", role_arn=f"arn:aws:iam::{TRIAL_FAIL}:role/commitd-trial",
                  read_only=True, read_only_plans="fail"),
]
# Other families' purchases, from the examples: COMMITD_DRY_RUN covers every action, not only the RI purchase.
EXAMPLES = ["savingsplans-create-savings-plan.json", "rds-purchase-reserved-db-instances-offering.json",
            "ec2-create-capacity-reservation.json"]


@pytest.fixture
def own(tmp_path: Path, runtime: Runtime) -> Iterator[OwnAccounts]:
    opened = open_own_accounts(tmp_path, *ACCOUNTS)
    yield opened
    opened.runtime.redis.close()
    set_runtime(runtime)


def plan_in(account: str, plan_id: str, **envelope: Any) -> dict[str, Any]:
    return {**ri_plan(plan_id), "account_id": account, **envelope}


def example_in(account: str, name: str) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads((ROOT / "examples" / "plans" / name).read_text())
    return {**plan, "account_id": account, "plan_id": f"dry-{name.removesuffix('.json')}"}


def aws_calls(runtime: Runtime, plan_id: str) -> list[dict[str, Any]]:
    return [e for e in runtime.audit.records(plan_id=plan_id) if e.get("event") == "aws_call"]


def assert_dry(runtime: Runtime, sandbox: SandboxControl, plan_id: str, *why: str) -> None:
    """Succeeded as a dry run whose recorded reason names each of ``why`` (the wording is the lead's to change):
    AWS was asked with DryRun (or the action's preflight), and nothing mutating was sent."""
    record = wait_for_state(runtime, plan_id, SETTLED)
    assert record.state == PlanState.SUCCEEDED, record.error
    result = record.result or {}
    reason = result.get("dry_run_reason")
    assert result["dry_run"] is True and isinstance(reason, str), result
    assert all(w in reason for w in why), (reason, why)
    assert reason in record.history[-1].note
    assert record.intent is None and not (record.book or {}).get("sends"), "a dry run records no intent, sends nothing"
    calls = aws_calls(runtime, plan_id)
    assert calls, "the dry run asked AWS"
    assert [c["operation"] for c in calls if c["mutating"]] == []
    assert record.plan is not None and sandbox.resources(account_id=record.plan["account_id"]) == []


def test_account_settings_choose_between_dry_run_failure_and_the_real_call(
    own: OwnAccounts, sandbox: SandboxControl, start_worker: Any
) -> None:
    """One worker, four accounts: the plain account buys; ``dry_run: true`` and a read-only role (by default) run
    dry runs that name their reason; a read-only role with ``read_only_plans: fail`` fails the plan before any AWS
    call, unless the plan itself asks for a dry run."""
    start_worker("dry-accounts", COMMITD_ACCOUNTS_FILE=str(own.path))
    for account, plan_id in ((NORMAL, "real"), (DRY, "dry-account"), (TRIAL, "trial"), (TRIAL_FAIL, "trial-fail")):
        own.submit(plan_in(account, plan_id))
    own.submit(plan_in(TRIAL_FAIL, "trial-fail-asks-dry", dry_run=True))

    real = wait_for_state(own.runtime, "real", SETTLED)
    assert real.state == PlanState.SUCCEEDED and not (real.result or {}).get("dry_run"), real.result
    [ri] = sandbox.resources(account_id=NORMAL, type="reserved-instances")
    assert (real.result or {})["resource_ids"] == [ri["id"]]

    assert_dry(own.runtime, sandbox, "dry-account", DRY, "every plan as a dry run")
    assert_dry(own.runtime, sandbox, "trial", TRIAL, "read-only")
    assert_dry(own.runtime, sandbox, "trial-fail-asks-dry", "plan asks")

    failed = wait_for_state(own.runtime, "trial-fail", SETTLED)
    assert failed.state == PlanState.FAILED
    error = failed.error or {}
    assert error["code"] == "ReadOnlyAccount", error
    assert TRIAL_FAIL in error["message"] and "read_only_plans: fail" in error["message"]
    assert "nothing was bought" in error["message"]
    assert aws_calls(own.runtime, "trial-fail") == [], "nothing was sent, not even a read"
    assert failed.intent is None
    assert sandbox.resources(account_id=TRIAL_FAIL) == []


def test_commitd_dry_run_makes_every_plan_of_every_account_a_dry_run(
    own: OwnAccounts, sandbox: SandboxControl, start_worker: Any
) -> None:
    """COMMITD_DRY_RUN=1 on the worker: plans of every family and account, the read-only one set to fail
    included, succeed as dry runs naming the setting; AWS holds nothing afterwards."""
    start_worker("dry-global", COMMITD_ACCOUNTS_FILE=str(own.path), COMMITD_DRY_RUN="1")
    plans = [plan_in(account, f"global-{account}") for account in (NORMAL, DRY, TRIAL, TRIAL_FAIL)]
    plans += [example_in(NORMAL, name) for name in EXAMPLES]
    for plan in plans:
        own.submit(plan)
    for plan in plans:
        assert_dry(own.runtime, sandbox, plan["plan_id"], "COMMITD_DRY_RUN")
    assert sandbox.resources() == []
    mutating = [e for e in own.runtime.audit.records() if e.get("event") == "aws_call" and e.get("mutating")]
    assert mutating == []
