"""How service modules plug into the sandbox: operation handlers, catalogue sections, seeders, advancers.

A handler is a plain function ``(ctx, params) -> result``: ``params`` is the parsed, model-shaped input and
``result`` a dict in the operation's output shape (or a ready :class:`WireResponse`, for handlers that wrap moto).
Raise :class:`sandbox.errors.AwsError` for AWS errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.catalogue import Catalogue
    from sandbox.iam import IamEnforcer
    from sandbox.protocol import WireResponse
    from sandbox.state import SandboxState


@dataclass
class CallContext:
    state: SandboxState
    catalogue: Catalogue
    iam: IamEnforcer
    account_id: str
    region: str
    service: str
    operation: str
    access_key: str
    request_id: str
    # Sends the original request on to moto and returns its response (for operations moto serves well).
    call_moto: Callable[[], WireResponse]

    def now(self) -> datetime:
        return self.state.clock.now()

    @property
    def scope(self) -> tuple[str, str, str]:
        """Where client tokens are unique: per account, region and operation."""
        return (self.account_id, self.region, self.operation)


Handler = Callable[[CallContext, dict[str, Any]], Any]
# (state, catalogue, entry) -> None: creates one pre-existing commitment from a seed entry.
Seeder = Callable[["SandboxState", "Catalogue", dict[str, Any]], None]

HANDLERS: dict[tuple[str, str], Handler] = {}
CATALOGUE_DEFAULTS: dict[str, Callable[[], list[dict[str, Any]]]] = {}
SEEDERS: dict[str, Seeder] = {}
# Called on every new SandboxState so services can register their time-driven transitions.
STATE_SETUP: list[Callable[[SandboxState], None]] = []


def handles(service: str, operation: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        key = (service, operation)
        if key in HANDLERS:
            raise RuntimeError(f"two sandbox handlers for {service}:{operation}")
        HANDLERS[key] = fn
        return fn

    return register


def catalogue_section(name: str) -> Callable[[Callable[[], list[dict[str, Any]]]], Callable[[], list[dict[str, Any]]]]:
    def register(fn: Callable[[], list[dict[str, Any]]]) -> Callable[[], list[dict[str, Any]]]:
        CATALOGUE_DEFAULTS[name] = fn
        return fn

    return register


def seeder(kind: str) -> Callable[[Seeder], Seeder]:
    def register(fn: Seeder) -> Seeder:
        SEEDERS[kind] = fn
        return fn

    return register


def on_state_setup(fn: Callable[[SandboxState], None]) -> Callable[[SandboxState], None]:
    STATE_SETUP.append(fn)
    return fn
