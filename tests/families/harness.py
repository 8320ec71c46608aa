"""What the tests of every family share: plans through the real path, the sandbox's ground truth, and the checks
each family's issue asks for (effect exactly once, nothing spent on a refusal, sessions confined to the family).

The real path is the intake (``Intake.submit_raw``, what the stream and ``commitd submit`` call) → a Celery
worker process (``start_worker``) → the sandbox over HTTP with real boto3. Tests wait for events (a plan's
state, a record's field), never for wall-clock budgets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from botocore.exceptions import ClientError

from sandbox.control import SandboxControl
from tasks import ACTIONS, find_action
from tests.spine.conftest import ACCOUNT, WorkerProcess
from tests.spine.conftest import eventually as spine_eventually
from worker.actions import family_permissions
from worker.handle import PlanHandle
from worker.ledger import PlanRecord
from worker.runtime import Runtime

T = TypeVar("T")
TERMINAL = {"succeeded", "failed", "needs_attention", "expired", "cancelled"}

# One write call per family that the family's session policy must refuse when another family's task tries it:
# (service, operation, params). Its params name nothing real: under IAM enforcement the sandbox refuses the call
# before it looks at them, and without the session policy it would fail on the missing resource instead.
FOREIGN_WRITES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ec2": ("rds", "purchase_reserved_db_instances_offering", {"ReservedDBInstancesOfferingId": "none"}),
    "other": ("ec2", "cancel_spot_instance_requests", {"SpotInstanceRequestIds": ["sir-none"]}),
}


def family_plan(action: str, plan_id: str, params: dict[str, Any], account: str = ACCOUNT,
                region: str = "us-east-1", **envelope: Any) -> dict[str, Any]:
    """A plan envelope as a producer sends it."""
    return {"plan_id": plan_id, "action": action, "account_id": account, "region": region, "params": params,
            "requested_by": "planner@test", "trigger": "queued", **envelope}


def submit(intake: Any, plan: dict[str, Any]) -> None:
    result = intake.submit_raw(json.dumps(plan), "test")
    assert result.outcome == "accepted", result


def eventually(check: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    """The spine's ``eventually`` with the families' longer default (their plans wait on AWS operations)."""
    return spine_eventually(check, what, timeout)


def settled(runtime: Runtime, plan_id: str, timeout: float = 90) -> PlanRecord:
    """Wait until the plan reaches a terminal state (or needs a person), and return its record."""
    def done() -> PlanRecord | None:
        record = runtime.ledger.get(plan_id)
        return record if record is not None and record.state.value in TERMINAL else None

    try:
        return eventually(done, f"plan {plan_id} to settle", timeout)
    except AssertionError:
        record = runtime.ledger.get(plan_id)
        raise AssertionError(f"plan {plan_id} did not settle: {record.model_dump() if record else None}") from None


def run_plan_through(runtime: Runtime, intake: Any, start_worker: Callable[..., WorkerProcess],
                     plan: dict[str, Any], timeout: float = 90) -> PlanRecord:
    """Submit through the intake, have a worker process carry it out, and return the settled record."""
    start_worker()
    submit(intake, plan)
    return settled(runtime, plan["plan_id"], timeout)


def ground_truth(sandbox: SandboxControl, kind: str, account: str = ACCOUNT) -> list[dict[str, Any]]:
    """The sandbox's own record of resources of ``kind`` in ``account`` (what AWS would really hold)."""
    return sandbox.resources(account_id=account, type=kind)


def assert_nothing_spent(record: PlanRecord, sandbox: SandboxControl, kind: str, before: int = 0,
                         account: str = ACCOUNT) -> None:
    """A refusal: the plan failed with a reason, and the sandbox holds no more resources of ``kind`` than before."""
    assert record.state.value == "failed", record.model_dump()
    assert record.error and record.error.get("code"), record.model_dump()
    assert len(ground_truth(sandbox, kind, account)) == before


def assert_session_confined(runtime: Runtime, action_name: str, account: str = ACCOUNT) -> None:
    """Under IAM enforcement (the caller set it), the family's session may not make another family's write call."""
    action = find_action(action_name)
    assert action is not None, action_name
    service, operation, params = FOREIGN_WRITES["ec2" if action.service == "ec2" else "other"]
    config = runtime.accounts.get(account)
    assert config is not None
    handle = PlanHandle(runtime.sessions, action, config, "us-east-1", "probe-confinement",
                        family_permissions(action.family, config.extra_permissions))
    with pytest.raises(ClientError) as denied:
        # A read-purpose call (read timeouts and retries) of another family's write action: the session policy
        # is the same for both purposes, and a busy machine does not turn the refusal into a timeout.
        handle.read(operation, service=service, **params)
    assert denied.value.response["Error"]["Code"] in {"AccessDenied", "UnauthorizedOperation"}, denied.value.response


def registered(action_name: str) -> bool:
    return any(name.lower() == action_name.lower() for name in ACTIONS)
