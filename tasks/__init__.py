"""The write actions commitd carries out, one module per permission family (see tasks/families.py).

Every module of this package is imported here; each registers its actions with ``@register``
(``worker.actions``). Adding an action is adding a file: nothing here or in ``worker/celery_app.py`` changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from worker.actions import REGISTRY, Action

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

ACTIONS: dict[str, Action[Any, Any]] = REGISTRY


def find_action(name: str) -> Action[Any, Any] | None:
    """IAM action names are case-insensitive."""
    for key, action in ACTIONS.items():
        if key.lower() == name.lower():
            return action
    return None
