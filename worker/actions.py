"""What an action is: the contract every write action in ``tasks/`` implements.

An action declares its family (the Celery task and queue that run it), its params model, the IAM actions it
needs, and how its one mutating AWS call is made idempotent. The executor (``worker.execution``) drives it:
``prepare`` (reads before; may fail the plan with nothing spent), ``submit`` (the mutating call, made at most
once per plan by the executor's protocol), and ``reconcile`` (reads that find the effect of a call whose outcome
is unknown).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from worker.execution import ExecutionContext


class Idempotency(StrEnum):
    CLIENT_TOKEN = "client_token"  # AWS deduplicates by a token we derive from the plan id
    CUSTOMER_ID = "customer_id"  # a customer-chosen resource id; a duplicate is refused by AWS
    NONE = "none"  # no mechanism: reconcile by describe before any re-send


@dataclass(frozen=True)
class Family:
    """A permission family: one Celery task, one queue, the IAM actions its sessions may use."""

    name: str
    title: str
    write_actions: tuple[str, ...]
    read_actions: tuple[str, ...]
    # Beyond the production role: used only where the customer granted them (AccountConfig.extra_permissions).
    optional_actions: tuple[str, ...] = ()

    @property
    def queue(self) -> str:
        return f"commitd.{self.name}"

    @property
    def task_name(self) -> str:
        return f"commitd.{self.name}.run_plan"

    def session_policy(self, granted_extras: Iterable[str] = ()) -> dict[str, Any]:
        """The inline session policy for AssumeRole: this family's writes and reads, plus the optional actions
        the customer granted, nothing else."""
        granted = {a.lower() for a in granted_extras}
        extras = tuple(a for a in self.optional_actions if a.lower() in granted)
        return {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": list(self.write_actions + self.read_actions + extras), "Resource": "*"}
            ],
        }


class PlanFailed(Exception):
    """The plan cannot be carried out; nothing was spent. ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


@dataclass
class Reconciliation:
    """What the reconciling reads found. ``found`` holds the result when the effect exists."""

    found: dict[str, Any] | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


class Action(ABC):
    """Base class of every write action. Subclasses set the class attributes and implement the methods."""

    action: ClassVar[str]
    family: ClassVar[Family]
    service: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]
    idempotency: ClassVar[Idempotency]
    # AWS error codes that mean "this was already done" (checked by reconciling, never trusted alone).
    done_signals: ClassVar[frozenset[str]] = frozenset()

    def max_spend_usd(self, params: BaseModel) -> Decimal | None:
        """The most this plan may spend upfront (its ceiling), for account limits at intake."""
        return None

    @abstractmethod
    def prepare(self, ctx: ExecutionContext, params: Any) -> dict[str, Any]:
        """Reads before the call. Returns the intent (what will be sent; stored before sending)."""


    @abstractmethod
    def submit(self, ctx: ExecutionContext, params: Any, intent: dict[str, Any]) -> dict[str, Any]:
        """The mutating call. Returns the result to record."""


    @abstractmethod
    def reconcile(self, ctx: ExecutionContext, params: Any, intent: dict[str, Any]) -> Reconciliation:
        """Reads that find the call's effect. Raise on a failed read: an unknown outcome is never guessed."""


    def dry_run(self, ctx: ExecutionContext, params: Any, intent: dict[str, Any]) -> dict[str, Any]:
        """What a dry run reports (EC2's DryRun where the API has it; the prepared intent otherwise)."""
        return {"dry_run": True, "would_send": intent}
