"""Fixtures shared by every test: one sandbox over real HTTP, and boto3 clients that check response shapes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.validate import ParamValidator

from sandbox.control import SandboxControl
from sandbox.server import SandboxServer

TEST_EXTERNAL_ID = "commitd-test-external-id"
DEFAULT_ACCOUNT = "123456789012"


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    server = SandboxServer().start()
    yield server
    server.stop()


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxControl]:
    """The sandbox's control API, on a sandbox reset for this test (no resources, faults or IAM enforcement)."""
    control = SandboxControl(sandbox_server.url)
    control.clear_faults()
    control.set_iam(enforce=False, policy=None, external_id=None)
    control.reset()
    yield control
    control.clear_faults()


def check_response_shape(http_response: Any, parsed: dict[str, Any], model: Any, **_: Any) -> None:
    """botocore 'after-call' hook: every sandbox response must validate against the operation's output shape."""
    if model.output_shape is None or http_response.status_code >= 300:
        return
    body = {k: v for k, v in parsed.items() if k != "ResponseMetadata"}
    report = ParamValidator().validate(body, model.output_shape)
    if report.has_errors():
        raise AssertionError(f"{model.name}: response does not match its output shape:\n{report.generate_report()}")


ClientFactory = Callable[..., Any]


@pytest.fixture
def aws(sandbox: SandboxControl) -> ClientFactory:
    """``aws(service, region="us-east-1", account_id=None, session_policy=None, retries=None)``: a boto3 client
    on the sandbox. With ``account_id``, the client uses credentials from AssumeRole into that account."""

    def make(
        service: str,
        region: str = "us-east-1",
        account_id: str | None = None,
        session_policy: dict[str, Any] | None = None,
        retries: int | None = None,
        external_id: str = TEST_EXTERNAL_ID,
    ) -> Any:
        config = Config(retries={"total_max_attempts": retries}) if retries else None
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        if account_id is not None:
            sts = boto3.client("sts", region_name=region, endpoint_url=sandbox.url, **credentials)
            kwargs: dict[str, Any] = {
                "RoleArn": f"arn:aws:iam::{account_id}:role/commitd",
                "RoleSessionName": "commitd-test",
                "ExternalId": external_id,
            }
            if session_policy is not None:
                kwargs["Policy"] = json.dumps(session_policy)
            assumed = sts.assume_role(**kwargs)["Credentials"]
            credentials = {
                "aws_access_key_id": assumed["AccessKeyId"],
                "aws_secret_access_key": assumed["SecretAccessKey"],
                "aws_session_token": assumed["SessionToken"],
            }
        client = boto3.client(service, region_name=region, endpoint_url=sandbox.url, config=config, **credentials)
        client.meta.events.register("after-call", check_response_shape)
        return client

    return make
