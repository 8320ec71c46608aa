"""Every request the sandbox does not serve answers 501 NotImplemented in the caller's protocol, which botocore
parses and does not retry: counted here at the server, so a retry could not hide."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from sandbox.app import SandboxApp, StartResponse
from sandbox.server import SandboxServer
from tests.sandbox.clients import client


class CountingApp(SandboxApp):
    """The sandbox, remembering each request that reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        self.arrived.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}")
        return super().__call__(environ, start_response)


@pytest.fixture(scope="module")
def counting_server() -> Iterator[SandboxServer]:
    with SandboxServer(CountingApp()) as server:
        yield server


@pytest.fixture
def arrived(counting_server: SandboxServer) -> list[str]:
    app = counting_server.app
    assert isinstance(app, CountingApp)
    app.arrived.clear()
    return app.arrived


# Both of botocore's retry modes, each allowed 5 attempts: a retried 501 would show as more than one request.
RETRYING = {
    "standard": Config(retries={"mode": "standard", "max_attempts": 5}),
    "legacy": Config(retries={"mode": "legacy", "max_attempts": 5}),
}
# (boto3 service, its protocol, the call, the operation the message names)
CALLS: list[tuple[str, str, Callable[[Any], Any], str]] = [
    ("ce", "json", lambda ce: ce.get_cost_and_usage(
        TimePeriod={"Start": "2026-01-01", "End": "2026-02-01"}, Granularity="MONTHLY", Metrics=["UnblendedCost"],
    ), "ce:GetCostAndUsage"),
    ("pricing", "json", lambda pricing: pricing.describe_services(ServiceCode="AmazonEC2"),
     "pricing:DescribeServices"),
    ("s3", "rest-xml", lambda s3: s3.list_buckets(), "s3:ListBuckets"),
    ("iam", "query", lambda iam: iam.list_roles(), "iam:ListRoles"),
    # CloudWatch signs as "monitoring", a name botocore does not know: answered by the shape of the request (JSON).
    ("cloudwatch", "json", lambda cw: cw.list_metrics(), "monitoring:ListMetrics"),
    # The sandbox's own services: an operation moto has no backend for (Savings Plans) or no route to (OpenSearch).
    ("savingsplans", "rest-json", lambda sp: sp.return_savings_plan(savingsPlanId="sp-1"),
     "savingsplans:ReturnSavingsPlan"),
    ("opensearch", "rest-json", lambda os: os.list_vpc_endpoints(), "es:ListVpcEndpoints"),
]


@pytest.mark.parametrize("mode", sorted(RETRYING))
@pytest.mark.parametrize(("service", "protocol", "call", "named"), CALLS, ids=[c[0] for c in CALLS])
def test_a_call_the_sandbox_does_not_simulate_is_one_501_not_implemented(
    counting_server: SandboxServer, arrived: list[str], mode: str, service: str, protocol: str,
    call: Callable[[Any], Any], named: str,
) -> None:
    aws = client(counting_server.url, service, RETRYING[mode])
    assert aws.meta.service_model.resolved_protocol == protocol
    with pytest.raises(ClientError) as caught:
        call(aws)
    error, metadata = caught.value.response["Error"], caught.value.response["ResponseMetadata"]
    assert (error["Code"], metadata["HTTPStatusCode"]) == ("NotImplemented", 501)
    assert named in error["Message"]
    assert metadata["RetryAttempts"] == 0
    assert len(arrived) == 1, arrived


@pytest.mark.parametrize(("method", "path"), [("GET", "/"), ("GET", "/no/such/thing"), ("POST", "/")])
def test_an_unsigned_request_is_a_501_too(counting_server: SandboxServer, method: str, path: str) -> None:
    body = b"" if method == "POST" else None
    request = urllib.request.Request(f"{counting_server.url}{path}", method=method, data=body)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 501
    answer = json.loads(caught.value.read())
    assert answer["__type"] == "NotImplemented" and f"{method} {path}" in answer["Message"]
