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
from moto.core.loaders import create_loader
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


@cache
def _botocore_services() -> frozenset[str]:
    return frozenset(create_loader().list_available_services("service-2"))


def _service_for(caller: Caller, path: str) -> str | None:
    """The botocore service a signed request is for (any service botocore knows, not only the sandbox's)."""
    if caller.signing_name == "es":
        for service, prefix in REST_PATH_PREFIX.items():
            if path.startswith(prefix):
                return service
    # Most services sign with their own name; those that do not (CloudWatch signs as "monitoring") stay unknown.
    return caller.signing_name if caller.signing_name in _botocore_services() else None


@cache
def _rest_routes(service: str) -> list[tuple[str, re.Pattern[str], str]]:
    """(method, path regex, operation) for a REST service, most specific (longest literal) first."""
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


def _operation_for(
    service: str, method: str, path: str, headers: Headers, body: bytes
) -> tuple[str, dict[str, Any]] | None:
    """(operation, url_params) of a request to ``service``, told apart as its protocol does, or None."""
    protocol = service_model(service).resolved_protocol
    if protocol in ("query", "ec2"):
        action = _form_action(body)
        return (action, {}) if action else None
    if protocol == "json":
        target = headers.get("X-Amz-Target", "")
        return (target.split(".")[-1], {}) if target else None
    for route_method, regex, name in _rest_routes(service):
        if route_method != method:
            continue
        match = regex.match(unquote(path))
        if match:
            return name, match.groupdict()
    return None


def _form_action(body: bytes) -> str | None:
    return parse_qs(body.decode("utf-8", "replace")).get("Action", [None])[0]


def identify(method: str, path: str, headers: Headers, body: bytes) -> tuple[str, str, dict[str, Any]] | None:
    """Return (service, operation, url_params) for requests of the sandbox's own services, else None."""
    caller = caller_from_headers(headers)
    if caller is None:
        return None
    service = _service_for(caller, path)
    if service not in OWN_SERVICES:
        return None
    found = _operation_for(service, method, path, headers, body)
    return (service, *found) if found else None


# Errors are written from the protocol alone, so a request whose service cannot be told (unsigned, or signed with a
# name botocore does not know), or whose model moto cannot serialize (CBOR-first services, whose botocore clients
# speak JSON), is answered through a service that speaks the client's protocol.
_STAND_IN = {"json": "organizations", "query": "sts", "ec2": "ec2", "rest-json": "savingsplans", "rest-xml": "s3"}


def not_implemented(method: str, path: str, headers: Headers, body: bytes, request_id: str) -> WireResponse:
    """``NotImplemented`` (HTTP 501) for a request the sandbox does not serve, in the protocol its client parses,
    so botocore reads the code (and does not retry it: 501 is neither a transient status nor a throttling code)."""
    caller = caller_from_headers(headers)
    service = _service_for(caller, path) if caller is not None else None
    found = _operation_for(service, method, path, headers, body) if service is not None else None
    operation = found[0] if found else None
    named = operation or _operation_by_shape(headers, body)
    asked = f"{caller.signing_name}:{named}" if caller is not None and named else f"{method} {path}"
    error = AwsError("NotImplemented", f"the sandbox does not simulate {asked}", 501)
    speaker, speaker_operation = _speaker(service, operation, headers, body)
    return serialize_error(speaker, speaker_operation, error, request_id)


def _speaker(service: str | None, operation: str | None, headers: Headers, body: bytes) -> tuple[str, str | None]:
    """The service (and operation) whose model writes an error: the request's own where moto can write it."""
    protocol = service_model(service).resolved_protocol if service is not None else _protocol_by_shape(headers, body)
    if service is not None and service_model(service).protocol == protocol:
        return service, operation
    return _STAND_IN[protocol], None


def _operation_by_shape(headers: Headers, body: bytes) -> str | None:
    target = headers.get("X-Amz-Target")
    return target.split(".")[-1] if target else _form_action(body)


def _protocol_by_shape(headers: Headers, body: bytes) -> str:
    if headers.get("X-Amz-Target"):
        return "json"
    if _form_action(body):
        return "query"
    return "rest-json"


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


def serialize_error(service: str, operation: str | None, error: AwsError, request_id: str) -> WireResponse:
    """``error`` in the service's protocol. Errors do not depend on the operation: without one, any will do."""
    model = service_model(service)
    op_model = model.operation_model(operation or model.operation_names[0])
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
