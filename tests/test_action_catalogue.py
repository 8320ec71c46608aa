"""Every registered action is complete: a working example plan, docs, and permissions the family table shows.

The examples are run against the sandbox by each family's tests; here they are checked without Redis: each is a
valid envelope whose params its action accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from config.permissions import EXTRA_PERMISSIONS
from tasks import ACTIONS
from worker.plans import PlanEnvelope

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "plans").glob("*.json"))
ACTION_DOCS = "\n".join(p.read_text() for p in sorted((ROOT / "docs" / "actions").glob("*.md")))


def example_plans() -> dict[str, list[dict[str, Any]]]:
    by_action: dict[str, list[dict[str, Any]]] = {}
    for path in EXAMPLES:
        plan = json.loads(path.read_text())
        by_action.setdefault(plan["action"].lower(), []).append(plan)
    return by_action


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_every_action_has_a_valid_example_plan_and_docs(name: str) -> None:
    action = ACTIONS[name]
    plans = example_plans().get(name.lower())
    assert plans, f"{name}: no example plan in examples/plans/"
    for plan in plans:
        envelope = PlanEnvelope.model_validate(plan)
        action.params_model.model_validate(envelope.params)
    assert f"`{name}`" in ACTION_DOCS, f"{name}: not described in docs/actions/"


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_every_permission_an_action_declares_is_in_its_family_table(name: str) -> None:
    action = ACTIONS[name]
    family = action.family
    table = {a.lower() for a in (*family.write_actions, *family.read_actions)}
    assert {p.lower() for p in action.permissions} <= table, f"{name}: add to tasks/families.py"
    assert {p.lower() for p in action.optional_permissions} <= {a.lower() for a in family.optional_actions}
    assert {p.lower() for p in action.optional_permissions} <= {p.lower() for p in EXTRA_PERMISSIONS}
