"""The write actions commitd carries out, one module per permission family (see tasks/families.py)."""

from __future__ import annotations

from tasks import ec2_reserved_instances
from worker.actions import Action

ACTIONS: dict[str, Action] = {action.action: action for action in ec2_reserved_instances.ACTIONS}


def find_action(name: str) -> Action | None:
    """IAM action names are case-insensitive."""
    for key, action in ACTIONS.items():
        if key.lower() == name.lower():
            return action
    return None
