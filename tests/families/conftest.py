"""The family tests run on the spine's fixtures: a private redis-server, the sandbox over HTTP, real workers."""

from collections.abc import Iterator

import pytest

from tasks import find_action
from tests.spine.conftest import (  # noqa: F401  (pytest finds fixtures by name in conftest modules)
    accounts_file,
    env,
    intake,
    intake_loop,
    redis_server,
    runtime,
    start_worker,
)
from worker.handle import iam_action_name
from worker.runtime import Runtime


@pytest.fixture(autouse=True)
def calls_are_declared(runtime: Runtime) -> Iterator[None]:  # noqa: F811  (the fixture above)
    """After each test: every AWS call a plan made (the audit trail, written by the worker processes) is one its
    action declares in ``permissions`` or ``optional_permissions``: the session policy is built from those, so an
    undeclared call would be refused in production."""
    yield
    undeclared: dict[str, set[str]] = {}
    for entry in runtime.audit.records():
        operation, plan_id = entry.get("operation"), entry.get("plan_id")
        record = runtime.ledger.get(plan_id) if isinstance(plan_id, str) and operation else None
        action = find_action(str((record.plan or {}).get("action"))) if record is not None else None
        if action is None or entry.get("service") == "sts":  # the executor's AssumeRole, not the action's
            continue
        called = iam_action_name(str(entry["service"]), str(operation)).lower()
        if called not in {p.lower() for p in action.permissions | action.optional_permissions}:
            undeclared.setdefault(action.action, set()).add(called)
    assert not undeclared, f"AWS calls not declared in the action's permissions: {undeclared}"
