"""Sandbox state: resources per account and region, idempotency records, and the ground-truth view.

Every resource a handler creates is a :class:`Resource`. Its ``data`` holds the AWS-shaped fields the describe
calls return; ``state`` is kept beside it so that ``GET /_sandbox/resources`` can report it without knowing each
service. Time-driven transitions (payment-pending to active, queued to active, asynchronous operations) are
functions registered per resource type and run lazily whenever state is read, so the control API's clock moves
them too.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sandbox.clock import SandboxClock
from sandbox.errors import AwsError


@dataclass
class CreatedBy:
    operation: str
    token: str | None
    at: datetime


@dataclass
class Resource:
    account_id: str
    region: str
    service: str
    type: str
    id: str
    state: str
    created_by: CreatedBy
    data: dict[str, Any] = field(default_factory=dict)

    def ground_truth(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "region": self.region,
            "service": self.service,
            "type": self.type,
            "id": self.id,
            "state": self.state,
            "created_by": {
                "operation": self.created_by.operation,
                "token": self.created_by.token,
                "at": self.created_by.at.isoformat(),
            },
        }


# A transition function moves one resource along in time; it returns True while the resource may still change.
Advancer = Callable[[Resource, datetime], bool]


@dataclass
class IdempotencyRecord:
    fingerprint: str
    response: dict[str, Any]


def fingerprint(params: dict[str, Any], ignore: tuple[str, ...] = ()) -> str:
    """A stable digest of a request's parameters, minus the token itself."""
    cleaned = {k: v for k, v in params.items() if k not in ignore}
    blob = json.dumps(cleaned, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class SandboxState:
    """All mutable sandbox state. One lock: the sandbox favours obvious correctness over parallelism."""

    def __init__(self, clock: SandboxClock) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self._resources: dict[tuple[str, str, str], Resource] = {}
        self._moving: set[tuple[str, str, str]] = set()
        self._advancers: dict[tuple[str, str], Advancer] = {}
        self._tokens: dict[tuple[str, str, str, str], IdempotencyRecord] = {}
        self._counter = 0
        self._advancing = False
        # Free-form per-service state (for example the Organizations tree), keyed by service name.
        self.extra: dict[str, dict[str, Any]] = {}

    # --- registry -------------------------------------------------------------------------------------------
    def register_advancer(self, service: str, type_: str, advancer: Advancer) -> None:
        self._advancers[(service, type_)] = advancer

    def add(self, resource: Resource) -> Resource:
        with self.lock:
            key = (resource.service, resource.type, resource.id)
            if key in self._resources:
                raise ValueError(f"duplicate sandbox resource {key}")
            self._resources[key] = resource
            if (resource.service, resource.type) in self._advancers:
                self._moving.add(key)
            return resource

    def get(self, service: str, type_: str, id_: str) -> Resource | None:
        with self.lock:
            self.advance_all()
            return self._resources.get((service, type_, id_))

    def find(
        self,
        service: str,
        type_: str,
        account_id: str | None = None,
        region: str | None = None,
        predicate: Callable[[Resource], bool] | None = None,
    ) -> list[Resource]:
        with self.lock:
            self.advance_all()
            found = [
                r
                for r in self._resources.values()
                if r.service == service
                and r.type == type_
                and (account_id is None or r.account_id == account_id)
                and (region is None or r.region == region)
                and (predicate is None or predicate(r))
            ]
        found.sort(key=lambda r: (r.created_by.at, r.id))
        return found

    def all(self) -> Iterator[Resource]:
        with self.lock:
            self.advance_all()
            yield from list(self._resources.values())

    def advance_all(self) -> None:
        """Run time-driven transitions for the resources that can still change."""
        with self.lock:
            # Advancers may read state (get/find), which advances again: one pass at a time is enough.
            if not self._moving or self._advancing:
                return
            self._advancing = True
            try:
                now = self.clock.now()
                for key in list(self._moving):
                    resource = self._resources[key]
                    advancer = self._advancers[(resource.service, resource.type)]
                    if not advancer(resource, now):
                        self._moving.discard(key)
            finally:
                self._advancing = False

    def watch(self, resource: Resource) -> None:
        """Mark a resource as able to change with time again (for example after a new operation on it)."""
        with self.lock:
            if (resource.service, resource.type) in self._advancers:
                self._moving.add((resource.service, resource.type, resource.id))

    # --- ids and idempotency ----------------------------------------------------------------------------------
    def next_number(self) -> int:
        with self.lock:
            self._counter += 1
            return self._counter

    def idempotent(
        self,
        scope: tuple[str, str, str],
        token: str | None,
        params: dict[str, Any],
        create: Callable[[], dict[str, Any]],
        token_fields: tuple[str, ...] = ("ClientToken",),
        mismatch: AwsError | None = None,
    ) -> dict[str, Any]:
        """AWS's client-token contract: same token and parameters -> the original result, nothing created;
        same token, other parameters -> ``IdempotentParameterMismatch`` (or the service's own error).

        ``scope`` is (account_id, region, operation).
        """
        if not token:
            return create()
        key = (*scope, token)
        digest = fingerprint(params, token_fields)
        with self.lock:
            record = self._tokens.get(key)
            if record is not None:
                if record.fingerprint != digest:
                    raise mismatch or AwsError(
                        "IdempotentParameterMismatch",
                        f"The client token {token!r} was already used with different parameters.",
                    )
                return record.response
            response = create()
            self._tokens[key] = IdempotencyRecord(digest, response)
            return response

    def reset(self) -> None:
        with self.lock:
            self._resources.clear()
            self._moving.clear()
            self._tokens.clear()
            self.extra.clear()
            self._counter = 0
