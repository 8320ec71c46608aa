"""Each AWS wire protocol the sandbox speaks: recognise the operation, parse its input, write its output.

Parsing and writing use moto's protocol parsers and serializers (moto.core.parse / moto.core.serialize), driven
by botocore's service models, so the bytes on the wire are what an unmodified boto3 client expects.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import parse_qs, unquote

from botocore.model import OperationModel, ServiceModel
from moto.core.parse import EC2QueryParser, JSONParser, QueryParser, RestJSONParser
from moto.core.serialize import get_serializer_class
from moto.core.utils import get_service_model
from werkzeug.datastructures import Headers, MultiDict

from sandbox.errors import AwsError

# The botocore service names the sandbox answers for itself. OpenSearch and Elasticsearch share the
# signing name "es", so they are told apart by their API version prefix in the path.
OWN_SERVICES = ("ec2", "rds", "redshift", "elasticache", "sts", "organizations", "savingsplans", "es", "opensearch")
REST_PATH_PREFIX = {"es": "/2015-01-01/", "opensearch": "/2021-01-01/"}
_CREDENTIAL_SCOPE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")


@dataclass(frozen=True)
class Caller:
    access_key: str
    region: str
    signing_name: str


@dataclass
class ParsedRequest:
    service: str  # botocore service name, e.g. "ec2", "opensearch"
    operation: str  # API operation name, e.g. "PurchaseReservedInstancesOffering"
    params: dict[str, Any]
    caller: Caller

    @property
    def iam_action(self) -> str:
        prefix = "es" if self.service == "opensearch" else self.service
        return f"{prefix}:{self.operation}"


@cache
def service_model(service: str) -> ServiceModel:
    return get_service_model(service)


def caller_from_headers(headers: Headers) -> Caller | None:
    auth = headers.get("Authorization", "")
    match = _CREDENTIAL_SCOPE.search(auth)
    if not match:
        return None
    return Caller(access_key=match.group(1), region=match.group(2), signing_name=match.group(3))


def _service_for(caller: Caller, path: str) -> str | None:
    if caller.signing_name == "es":
        for service, prefix in REST_PATH_PREFIX.items():
            if path.startswith(prefix):
                return service
        return None
    if caller.signing_name in OWN_SERVICES:
        return caller.signing_name
    return None


@cache
def _rest_routes(service: str) -> list[tuple[str, re.Pattern[str], str]]:
    """(method, path regex, operation) for a REST-JSON service, most specific (longest literal) first."""
    model = service_model(service)
    routes = []
    for name in model.operation_names:
        http = model.operation_model(name).http
        uri = http["requestUri"].split("?")[0]
        literal = re.sub(r"\{[^}]+\}", "", uri)
        pattern = re.sub(r"\{([^}+]+)\+\}", r"(?P<\1>.+)", uri)
        pattern = re.sub(r"\{([^}]+)\}", r"(?P<\1>[^/]+)", pattern)
        routes.append((len(literal), http["method"], re.compile(f"^{pattern}/?$"), name))
    routes.sort(key=lambda r: -r[0])
    return [(method, regex, name) for _, method, regex, name in routes]


def identify(method: str, path: str, headers: Headers, body: bytes) -> tuple[str, str, dict[str, Any]] | None:
    """Return (service, operation, url_params) for requests of the sandbox's own services, else None."""
    caller = caller_from_headers(headers)
    if caller is None:
        return None
    service = _service_for(caller, path)
    if service is None:
        return None
    protocol = service_model(service).protocol
    if protocol in ("query", "ec2"):
        form = parse_qs(body.decode("utf-8", "replace"))
        action = form.get("Action", [None])[0]
        return (service, action, {}) if action else None
    if protocol == "json":
        target = headers.get("X-Amz-Target", "")
        return (service, target.split(".")[-1], {}) if target else None
    for route_method, regex, name in _rest_routes(service):
        if route_method != method:
            continue
        match = regex.match(unquote(path))
        if match:
            return service, name, match.groupdict()
    return None


def parse_params(
    service: str,
    operation: str,
    method: str,
    path: str,
    query_string: str,
    headers: Headers,
    body: bytes,
    url_params: dict[str, Any],
) -> dict[str, Any]:
    model = service_model(service)
    op_model: OperationModel = model.operation_model(operation)
    protocol = model.protocol
    values: MultiDict[str, Any] = MultiDict()
    if protocol in ("query", "ec2"):
        for key, items in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items():
            for item in items:
                values.add(key, item)
    for key, items in parse_qs(query_string, keep_blank_values=True).items():
        for item in items:
            values.add(key, item)
    parser_class = {"ec2": EC2QueryParser, "query": QueryParser, "json": JSONParser}.get(protocol, RestJSONParser)
    request = {
        "body": body,
        "headers": headers,
        "method": method,
        "url_params": url_params,
        "url_path": path,
        "values": values,
    }
    parsed = parser_class(op_model).parse(request)  # type: ignore[arg-type]
    return dict(parsed)


@dataclass
class WireResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def serialize_result(service: str, operation: str, result: dict[str, Any], request_id: str) -> WireResponse:
    model = service_model(service)
    op_model = model.operation_model(operation)
    serializer = get_serializer_class(service, model.protocol)(op_model)
    serializer.context.request_id = request_id
    out = serializer.serialize(result)
    return _wire(out, request_id)


def serialize_error(service: str, operation: str, error: AwsError, request_id: str) -> WireResponse:
    model = service_model(service)
    op_model = model.operation_model(operation)
    serializer = get_serializer_class(service, model.protocol)(op_model)
    serializer.context.request_id = request_id
    with warnings.catch_warnings():
        # moto warns when a code is not in the service model; EC2 models no errors at all, and the sandbox
        # uses real AWS codes that some models omit (STS AccessDenied).
        warnings.simplefilter("ignore")
        out = serializer.serialize(error)
    if error.status is not None:
        out["status_code"] = error.status
    return _wire(out, request_id)


def _wire(out: Any, request_id: str) -> WireResponse:
    body = out.get("body", b"")
    if isinstance(body, str):
        body = body.encode()
    headers = {k: str(v) for k, v in out.get("headers", {}).items()}
    headers["x-amzn-RequestId"] = request_id
    return WireResponse(status=int(out.get("status_code", 200)), headers=headers, body=body)


def json_response(status: int, payload: Any) -> WireResponse:
    return WireResponse(status, {"Content-Type": "application/json"}, json.dumps(payload, default=str).encode())
