"""A permission family: one Celery task, one queue, and the IAM actions its sessions may use.

The table of families is ``tasks/families.py``; this module holds only the shape, so that every layer (the AWS
sessions, the Celery app, the actions) can name a family without importing the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    """A permission family: one Celery task, one queue, the IAM actions its sessions may use."""

    name: str
    title: str
    write_actions: tuple[str, ...]
    read_actions: tuple[str, ...]
    # Beyond the production role: used only where the customer granted them (AccountConfig.extra_permissions).
    optional_actions: tuple[str, ...] = ()
    # A block of the production role that a customer grants or not (AccountConfig.optional_blocks): plans of this
    # family are refused for accounts that do not grant it.
    optional_block: str | None = None

    @property
    def queue(self) -> str:
        return f"commitd.{self.name}"

    @property
    def task_name(self) -> str:
        return f"commitd.{self.name}.run_plan"

    @staticmethod
    def session_policy(allowed_actions: Iterable[str]) -> dict[str, Any]:
        """The inline session policy for AssumeRole: exactly ``allowed_actions`` (the union of what the family's
        registered actions declare, plus the optional actions the customer granted; ``worker.actions``)."""
        return {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": sorted(set(allowed_actions)), "Resource": "*"}],
        }
