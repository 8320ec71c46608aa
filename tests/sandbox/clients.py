"""boto3 clients for tests that cannot use the `aws` fixture: on a sandbox of their own (another catalogue, a
count of the requests that reached the server), or with client settings the fixture does not offer (timeouts)."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from tests.conftest import check_response_shape

NO_RETRIES = Config(retries={"total_max_attempts": 1})


def client(url: str, service: str, config: Config | None = None) -> Any:
    """A boto3 client on the sandbox at ``url``, in its default account (123456789012), retries off by default."""
    made = boto3.client(
        service,
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=config or NO_RETRIES,
    )
    made.meta.events.register("after-call", check_response_shape)
    return made
