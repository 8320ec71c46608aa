"""The production role's write actions, read from the project's own copy of it (docs/production-role.md).

If the file is missing the tests that use it fail: they never skip."""

from __future__ import annotations

import re
from pathlib import Path

ROLE = Path(__file__).resolve().parents[1] / "docs" / "production-role.md"


def production_role_actions() -> list[str]:
    """The IAM actions of the role's table, in its order (``| 1 | ec2:ModifyReservedInstances | ... |``)."""
    return re.findall(r"^\| \d+ \| ([a-z0-9]+:\w+) \|", ROLE.read_text(), re.M)
