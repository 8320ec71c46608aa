"""The production role's write actions, read from the project's own copy of it (docs/production-role.md).

If the file is missing the tests that use it fail: they never skip."""

from __future__ import annotations

import re
from pathlib import Path

ROLE = Path(__file__).resolve().parents[1] / "docs" / "production-role.md"


def production_role_actions() -> list[str]:
    """The IAM actions of the role's table, in its order (``| 1 | ec2:ModifyReservedInstances | ... |``)."""
    return re.findall(r"^\| \d+ \| ([a-z0-9]+:\w+) \|", ROLE.read_text(), re.M)


# The production role's 27 write actions, and its reads, which the document grants as wildcards (``List*``,
# ``Get*``, ``Describe*``) on the services of its table.
ROLE_WRITES = production_role_actions()
ROLE_SERVICES = sorted({action.split(":")[0] for action in ROLE_WRITES})
ROLE_READ_VERBS = re.findall(r"`(\w+)\*`", re.search(r"^1\. \*\*Read\*\*:(.*?)^2\. ", ROLE.read_text(), re.M | re.S)[1])
PRODUCTION_ROLE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": [f"{service}:{verb}*" for service in ROLE_SERVICES for verb in ROLE_READ_VERBS],
         "Resource": "*"},
        {"Effect": "Allow", "Action": ROLE_WRITES, "Resource": "*"},
    ],
}
