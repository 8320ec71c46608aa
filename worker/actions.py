"""What an action is: the contract every write action in ``tasks/`` implements, and the registry of them.

An action is one class in one file of ``tasks/``, registered with ``@register``. It declares its family (the
Celery task and queue that run it), its params and intent models, the IAM actions it calls (``permissions``:
the family's session policy is the union of these), how AWS makes its call idempotent, and its nouns. The
executor (``worker.execution``) drives it through a narrow ``PlanHandle`` bound to the plan:

- ``prepare``   reads before; returns the typed intent, or raises ``PlanFailed`` (nothing spent);
- ``submit``    the one mutating call, through ``aws.send`` (the executor decides when that may happen);
- ``reconcile`` reads that settle an unknown outcome: ``Found``, ``Absent``, ``Pending`` or ``Ambiguous``;
- ``look_alikes`` (calls without a token) reads after success that find unclaimed resources that look like
  this plan's, which would betray a duplicate send.

Claims, locks, send counts, leases and the ledger belong to the executor; an action never sees them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from worker.family import Family

if TYPE_CHECKING:
    from worker.handle import PlanHandle


YEAR_SECONDS = 31_536_000  # AWS's terms: a 1-year term is 31,536,000 seconds


class Idempotency(StrEnum):
    CLIENT_TOKEN = "client_token"  # AWS deduplicates by a token derived from the plan id
    CUSTOMER_ID = "customer_id"  # a customer-chosen resource id; a duplicate is refused by AWS
    NONE = "none"  # no mechanism: reconcile by describe before any re-send


class PlanFailed(Exception):
    """The plan cannot be carried out; nothing was spent. ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


class Intent(BaseModel):
    """What the action will send, recorded before anything is sent. Each action subclasses it.

    ``signature`` (calls without a token): one plan at a time per signature, so reconciliation can tell whose
    effect it sees. ``idempotency_value``: the token or customer-chosen id sent with the call.
    ``commitment_usd``: the total the call commits (upfront + recurring over the term), for limits and the
    result. The executor's own bookkeeping (sends, times, lock) is kept beside the intent, never inside it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signature: str | None = None
    idempotency_value: str | None = None
    commitment_usd: Decimal | None = None


# --- what a reconciling read found: a closed set ---------------------------------------------------------------
@dataclass(frozen=True)
class Found:
    """The call's effect exists. ``resource_ids`` are claimed for the plan by the executor."""

    result: dict[str, Any]
    resource_ids: tuple[str, ...]
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Absent:
    """No trace of the call. Conclusive only once reads were made late enough (the executor decides)."""

    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pending:
    """An asynchronous AWS operation is still in progress (a modification, an account creation, an exchange):
    look again later, without using an attempt."""

    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    """AWS finished the operation and it failed (a modification ``failed``, an account creation ``FAILED``, an
    exchange that AWS reverted): the plan fails with AWS's own reason. Nothing is claimed."""

    code: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ambiguous:
    """Several candidates could be this plan's effect and cannot be told apart: a person decides at once."""

    candidates: tuple[str, ...]
    evidence: dict[str, Any] = field(default_factory=dict)


Reconciled = Found | Absent | Pending | Ambiguous | Failed


@dataclass(frozen=True)
class Submitted:
    """What ``submit`` returns: the result to record and the resources AWS says it created.

    ``follow``: AWS accepted an asynchronous operation (a modification, an account creation) that is not done
    yet. The executor records ``result`` as the plan's ``accepted`` answer (``PlanHandle.accepted``), and
    follows the operation with ``reconcile`` (``Pending`` until it ends) instead of recording success now."""

    result: dict[str, Any]
    resource_ids: tuple[str, ...]
    follow: str | None = None


@dataclass(frozen=True)
class Nouns:
    """The words the executor uses for this action in notes and errors ("nothing was bought")."""

    resource: str  # "reserved instances"
    done: str  # "bought"
    claim_kind: str  # the namespace of the executor's claims: "ec2-ri"


ParamsT = TypeVar("ParamsT", bound=BaseModel)
IntentT = TypeVar("IntentT", bound=Intent)


class Action(ABC, Generic[ParamsT, IntentT]):
    """Base class of every write action. Subclasses set the class attributes and implement the methods."""

    action: ClassVar[str]  # the IAM action name, e.g. "ec2:PurchaseReservedInstancesOffering"
    family: ClassVar[Family]
    service: ClassVar[str]  # the boto3 service name
    params_model: ClassVar[type[BaseModel]]
    intent_model: ClassVar[type[Intent]]
    idempotency: ClassVar[Idempotency]
    nouns: ClassVar[Nouns]
    # Every IAM action this action calls, writes and reads (cloud-custodian's `permissions`). A test records the
    # calls and fails on any not declared here; the session policy is built from these.
    permissions: ClassVar[frozenset[str]]
    # Beyond the production role, used only where the customer granted them (AccountConfig.extra_permissions).
    optional_permissions: ClassVar[frozenset[str]] = frozenset()
    # AWS error codes that mean "this was already done" (confirmed by reconciling, never trusted alone).
    done_signals: ClassVar[frozenset[str]] = frozenset()

    def max_commitment_usd(self, params: ParamsT) -> Decimal | None:
        """The most this plan may commit in total (upfront + recurring over the term), from its params alone:
        what intake checks against the account's limits before any read. None: the action commits no money."""
        return None

    @abstractmethod
    def prepare(self, aws: PlanHandle, params: ParamsT) -> IntentT:
        """Reads before the call. Returns the intent (stored before sending) or raises ``PlanFailed``."""

    @abstractmethod
    def submit(self, aws: PlanHandle, params: ParamsT, intent: IntentT) -> Submitted:
        """The mutating call, made through ``aws.send`` exactly once per invocation."""

    @abstractmethod
    def reconcile(self, aws: PlanHandle, params: ParamsT, intent: IntentT) -> Reconciled:
        """Reads that find the call's effect. Raise on a failed read: an unknown outcome is never guessed."""

    def look_alikes(
        self, aws: PlanHandle, params: ParamsT, intent: IntentT, own: tuple[str, ...]
    ) -> dict[str, datetime]:
        """After success of a call without a token: resources made since the intent that look like this plan's
        (``own`` are the plan's), with when AWS made them. The executor drops those another plan claims or may
        have made; any other one may be a duplicate send."""
        return {}

    def dry_run(self, aws: PlanHandle, params: ParamsT, intent: IntentT) -> dict[str, Any]:
        """What a dry run reports (the API's DryRun where it has one; the prepared intent otherwise)."""
        return {"would_send": intent.model_dump(mode="json")}

    def after_success(self, aws: PlanHandle, resource_ids: tuple[str, ...]) -> None:
        """Follow-up writes that are harmless to repeat (tags); failures here never change the outcome."""


# --- the registry ------------------------------------------------------------------------------------------------
class RegistryError(RuntimeError):
    pass


REGISTRY: dict[str, Action[Any, Any]] = {}


def register(cls: type[Action[Any, Any]]) -> type[Action[Any, Any]]:
    """Class decorator: one instance of the action, under its IAM name (IAM names are case-insensitive)."""
    name = cls.action
    if any(existing.lower() == name.lower() for existing in REGISTRY):
        raise RegistryError(f"action {name} is registered twice")
    if name.lower() not in {a.lower() for a in cls.family.write_actions}:
        raise RegistryError(f"action {name} is not a write action of family {cls.family.name}")
    if name.lower() not in {p.lower() for p in cls.permissions}:
        raise RegistryError(f"action {name} must declare its own write action in permissions")
    REGISTRY[name] = cls()
    return cls


def family_permissions(family: Family, granted_extras: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The family's session policy actions: the union of its registered actions' declarations, plus the optional
    permissions the customer granted that one of them declares."""
    granted = {a.lower() for a in granted_extras}
    allowed: set[str] = set()
    for action in REGISTRY.values():
        if action.family.name != family.name:
            continue
        allowed |= set(action.permissions)
        allowed |= {p for p in action.optional_permissions if p.lower() in granted}
    return sorted(allowed)
