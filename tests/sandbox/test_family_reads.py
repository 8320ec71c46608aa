"""Every read that a family's sessions may use (tasks/families.py) is served by the sandbox or by moto: called
with placeholder arguments, it answers (a result or an AWS error), never NotImplemented."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.model import Shape

from sandbox.control import SandboxControl
from tasks.families import FAMILIES

SERVICES = {"ec2": "ec2", "rds": "rds", "redshift": "redshift", "elasticache": "elasticache", "es": "es",
            "savingsplans": "savingsplans", "organizations": "organizations"}
READS = sorted({a for f in FAMILIES for a in f.read_actions})


def placeholder(shape: Shape) -> Any:
    """The smallest value of a shape that passes botocore's client-side validation."""
    if shape.type_name == "structure":
        return {name: placeholder(shape.members[name]) for name in shape.required_members}
    if shape.type_name == "list":
        return [placeholder(shape.member)]  # type: ignore[attr-defined]
    if shape.type_name in ("integer", "long"):
        return max(int(shape.metadata.get("min", 1)), 1)
    if shape.type_name in ("double", "float"):
        return 1.0
    if shape.type_name == "boolean":
        return False
    if shape.type_name == "timestamp":
        return "2026-01-01T00:00:00Z"
    if shape.type_name == "map":
        return {}
    return "x" * max(int(shape.metadata.get("min", 1)), 12)


@pytest.mark.parametrize("action", READS)
def test_family_read_is_served(sandbox: SandboxControl, aws: Any, action: str) -> None:
    prefix, operation = action.split(":")
    client = aws(SERVICES[prefix], account_id="111122223333", retries=1)
    model = client.meta.service_model.operation_model(operation)
    params = placeholder(model.input_shape) if model.input_shape is not None else {}
    method = client.meta.method_to_api_mapping
    name = next(m for m, api in method.items() if api == operation)
    try:
        getattr(client, name)(**params)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] != "NotImplemented", f"{action} is not simulated"
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] < 500, exc.response["Error"]
