"""The sandbox's WSGI application: control API, IAM, faults, then the sandbox's own handlers or moto."""

from __future__ import annotations

import io
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import structlog
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from pydantic import ValidationError
from werkzeug.wrappers import Request

from sandbox import registry
from sandbox.catalogue import Catalogue
from sandbox.clock import SandboxClock
from sandbox.errors import ACCESS_DENIED_CODES, SERVER_ERRORS, THROTTLE_ERRORS, AwsError, missing_parameter
from sandbox.faults import FaultInjector, FaultRule
from sandbox.iam import CallRequest, IamEnforcer
from sandbox.protocol import (
    Caller,
    WireResponse,
    caller_from_headers,
    identify,
    json_response,
    not_implemented,
    parse_params,
    serialize_error,
    serialize_result,
    service_model,
)
from sandbox.state import SandboxState

StartResponse = Callable[..., Any]
CONTROL_PREFIX = "/_sandbox/"


log = structlog.get_logger("commitd.sandbox")
_INTERNAL_ERROR: dict[str, tuple[str, str, int]] = {
    service: (err.code, err.message, err.status or 500) for service, err in SERVER_ERRORS.items()
}


class NotSimulated(NotImplementedError):
    """Neither the sandbox nor moto answers this request: the caller gets a 501 NotImplemented."""


class DropConnection(ConnectionResetError):
    """Raised after the client socket was shut down on purpose (faults `reset` and `commit_then_drop`)."""


class SandboxApp:
    def __init__(
        self,
        catalogue: Catalogue | None = None,
        seed: int | None = None,
        iam_policy: dict[str, Any] | None = None,
        external_id: str | None = None,
    ) -> None:
        import sandbox.services  # noqa: F401  (registers every handler)

        self.catalogue = catalogue or Catalogue.load()
        self.clock = SandboxClock()
        self.state = SandboxState(self.clock)
        for setup in registry.STATE_SETUP:
            setup(self.state)
        self.faults = FaultInjector(seed)
        self.iam = IamEnforcer()
        self.iam.configure(enforce=iam_policy is not None, policy=iam_policy, external_id=external_id)
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._accounts: dict[str, str] = {}
        self.seed_existing(self.catalogue.existing_commitments)

    # --- WSGI ------------------------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        body = request.get_data(cache=True)
        if request.path.startswith(CONTROL_PREFIX):
            response = self._control(request, body)
        else:
            response = self._aws(environ, request, body)
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        # An explicit length keeps HTTP/1.1 connections alive (no chunking, no close).
        headers.append(("Content-Length", str(len(response.body))))
        start_response(f"{response.status} {_reason(response.status)}", headers)
        return [response.body]

    def _aws(self, environ: dict[str, Any], request: Request, body: bytes) -> WireResponse:
        request_id = str(uuid.uuid4())
        identified = identify(request.method, request.path, request.headers, body)
        caller = caller_from_headers(request.headers)
        if identified is None or caller is None:
            # Not one of the sandbox's services (or not signed): say so, rather than let moto answer for a service
            # the sandbox does not simulate, or crash on one it has no backend for (a dropped connection).
            return not_implemented(request.method, request.path, request.headers, body, request_id)
        service, operation, url_params = identified
        iam_action = f"{'es' if service == 'opensearch' else service}:{operation}"

        def error(err: AwsError) -> WireResponse:
            return serialize_error(service, operation, err, request_id)

        call = CallRequest(self.account_for(caller.access_key), caller.region, lambda: parse_params(
            service, operation, request.method, request.path, request.query_string.decode(), request.headers, body,
            url_params))
        if not self.iam.check(caller.access_key, iam_action, call):
            code, status = ACCESS_DENIED_CODES[service]
            return error(
                AwsError(code, f"You are not authorized to perform this operation: {iam_action}", status)
            )

        drop_after = error_after = False
        for fault in self.faults.draw(iam_action):
            if fault.kind == "latency":
                # No lock is held here: other requests are served during the delay, and the call is applied after
                # it even if the client has stopped waiting (a read timeout), as AWS would.
                time.sleep(fault.latency_ms / 1000)
            elif fault.kind == "reset":
                _drop(environ)
            elif fault.kind == "throttle":
                return error(THROTTLE_ERRORS[service])
            elif fault.kind == "error":
                return error(SERVER_ERRORS[service])
            elif fault.kind == "commit_then_drop":
                drop_after = True
            elif fault.kind == "commit_then_error":
                error_after = True

        try:
            response = self._handle(environ, request, body, caller, service, operation, url_params, request_id)
        except AwsError as exc:
            response = error(exc)
        except NotImplementedError:
            # moto raises this for calls it does not implement: say so plainly (501 is not retried by botocore).
            response = error(AwsError("NotImplemented", f"the sandbox does not simulate {iam_action}", 501))
        except Exception:
            # A sandbox or moto bug must look like AWS's own 500, not a dropped connection that botocore
            # would re-send; the traceback goes to the sandbox's log.
            log.exception("sandbox_handler_error", service=service, operation=operation)
            response = error(AwsError(*_INTERNAL_ERROR[service]))
        if drop_after:
            _drop(environ)
        if error_after:
            # The effect stands; the client sees the same 5xx as the `error` fault, which it may well re-send.
            return error(SERVER_ERRORS[service])
        return response

    def _handle(
        self,
        environ: dict[str, Any],
        request: Request,
        body: bytes,
        caller: Caller,
        service: str,
        operation: str,
        url_params: dict[str, Any],
        request_id: str,
    ) -> WireResponse:
        """The call itself: the sandbox's handler for the operation, else moto's answer."""
        params = parse_params(
            service,
            operation,
            request.method,
            request.path,
            request.query_string.decode(),
            request.headers,
            body,
            url_params,
        )
        handler = registry.HANDLERS.get((service, operation))
        if handler is None:
            return self._moto_for(service, environ, body)
        required = service_model(service).operation_model(operation).input_shape
        for name in required.required_members if required is not None else ():
            if name not in params and name not in url_params:
                raise missing_parameter(service, name)
        ctx = registry.CallContext(
            state=self.state,
            catalogue=self.catalogue,
            iam=self.iam,
            account_id=self.account_for(caller.access_key),
            region=caller.region,
            service=service,
            operation=operation,
            access_key=caller.access_key,
            request_id=request_id,
            call_moto=lambda: self._call_moto(environ, body),
        )
        result = handler(ctx, params)
        if isinstance(result, WireResponse):
            return result
        return serialize_result(service, operation, result, request_id)

    def _moto_for(self, service: str, environ: dict[str, Any], body: bytes) -> WireResponse:
        """moto's answer to an operation of the sandbox's services that has no sandbox handler.

        Raises NotSimulated (answered as 501 NotImplemented, like moto's own NotImplementedError) where moto has
        nothing to answer with: no backend for the service at all
        (Savings Plans, where moto would crash), or no route for a REST operation (moto's router answers an
        HTML 404, which botocore would read as an unknown error)."""
        if service not in _moto_backends():
            raise NotSimulated(service)
        response = self._call_moto(environ, body)
        content_type = next((v for k, v in response.headers.items() if k.lower() == "content-type"), "")
        if response.status == 404 and content_type.startswith("text/html"):
            raise NotSimulated(service)
        return response

    def account_for(self, access_key: str) -> str:
        account = self._accounts.get(access_key)
        if account is None:
            from moto.iam.models import get_account_id_from

            account = get_account_id_from(access_key)
            self._accounts[access_key] = account
        return account

    def _call_moto(self, environ: dict[str, Any], body: bytes) -> WireResponse:
        inner = dict(environ)
        inner["wsgi.input"] = io.BytesIO(body)
        inner["CONTENT_LENGTH"] = str(len(body))
        captured: dict[str, Any] = {}

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured["status"] = int(status.split(" ", 1)[0])
            captured["headers"] = dict(headers)

        chunks = self._moto(inner, start)
        try:
            payload = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()
        headers = {k: v for k, v in captured["headers"].items() if k.lower() not in ("content-length", "server")}
        return WireResponse(captured["status"], headers, payload)

    # --- control API ----------------------------------------------------------------------------------------
    def _control(self, request: Request, body: bytes) -> WireResponse:
        route = (request.method, request.path[len(CONTROL_PREFIX) :].strip("/"))
        try:
            payload = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            return json_response(400, {"error": f"the body is not JSON: {exc}"})
        try:
            return self._control_route(route, payload, request)
        except (ValidationError, ValueError, TypeError, KeyError) as exc:
            return json_response(400, {"error": str(exc)})

    def _control_route(self, route: tuple[str, str], payload: Any, request: Request) -> WireResponse:
        if route == ("GET", "health"):
            return json_response(200, {"ok": True, "now": self.clock.now().isoformat()})
        if route == ("POST", "reset"):
            self.reset()
            return json_response(200, {"reset": True})
        if route == ("GET", "clock"):
            return json_response(200, {"now": self.clock.now().isoformat()})
        if route == ("POST", "clock"):
            seconds = float(payload["advance_seconds"])
            now = self.clock.advance(seconds)
            self.state.advance_all()
            return json_response(200, {"now": now.isoformat()})
        if route == ("GET", "faults"):
            return json_response(200, {"faults": self.faults.rules(), "fired": self.faults.fired})
        if route == ("POST", "faults"):
            rules = payload if isinstance(payload, list) else [payload]
            for rule in rules:
                self.faults.add(FaultRule.model_validate(rule))
            return json_response(200, {"faults": self.faults.rules()})
        if route == ("DELETE", "faults"):
            self.faults.clear()
            return json_response(200, {"faults": []})
        if route == ("GET", "iam"):
            return json_response(
                200,
                {
                    "enforce": self.iam.enforce,
                    "policy": self.iam.identity_policy,
                    "external_id_set": bool(self.iam.external_id),
                },
            )
        if route == ("POST", "iam"):
            self.iam.configure(
                enforce=bool(payload.get("enforce", True)),
                policy=payload.get("policy"),
                external_id=payload.get("external_id"),
            )
            return json_response(200, {"enforce": self.iam.enforce})
        if route == ("GET", "resources"):
            fields = ("account_id", "region", "service", "type", "state")
            wanted = {k: v for k, v in request.args.items() if k in fields}
            resources = [
                r.ground_truth()
                for r in self.state.all()
                if all(getattr(r, k) == v for k, v in wanted.items())
            ]
            return json_response(200, {"resources": resources})
        if route == ("POST", "seed"):
            entries = payload.get("existing_commitments", [])
            self.seed_existing(entries)
            return json_response(200, {"seeded": len(entries)})
        return json_response(404, {"error": f"no control route {route[0]} {CONTROL_PREFIX}{route[1]}"})

    def reset(self) -> None:
        """Forget every resource (ours and moto's), token and session; the catalogue and faults stay."""
        self.state.reset()
        self.clock.reset()
        self.iam.sessions.clear()
        self._accounts.clear()
        from moto.moto_api import _internal

        _internal.moto_api_backend.reset()
        self.seed_existing(self.catalogue.existing_commitments)

    def seed_existing(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            kind = entry.get("kind")
            seeder = registry.SEEDERS.get(str(kind))
            if seeder is None:
                raise ValueError(f"unknown existing commitment kind {kind!r}; known: {sorted(registry.SEEDERS)}")
            seeder(self.state, self.catalogue, entry)


@cache
def _moto_backends() -> frozenset[str]:
    from moto.backends import list_of_moto_modules

    return frozenset(list_of_moto_modules())


def _drop(environ: dict[str, Any]) -> None:
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    raise DropConnection("sandbox fault: connection dropped")


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
