"""The narrow handle an action gets: AWS calls bound to one plan, and nothing else.

An action reads (``read``, ``paginate``), makes its one mutating call (``send``), and may make follow-up writes
that are harmless to repeat (``write_idempotent``, e.g. tags). It never sees Redis, the ledger, leases or claims:
``send`` runs the executor's guard before the call (lease time left, durable send record) and after it, and
``claimed_elsewhere`` answers from the executor's claims. Every call is audited by ``AwsSessions.call`` and
recorded in ``calls`` as its IAM action name (a test compares them with the action's declared permissions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError

from worker.aws import AwsSessions, aws_date
from worker.errors import Outcome, classify
from worker.testhooks import clock_offset_seconds

if TYPE_CHECKING:
    from config.accounts import AccountConfig
    from worker.actions import Action

IAM_PREFIX = {"opensearch": "es"}
# AWS stamps what it makes with its own clock; the Date header that clock is read from has one-second resolution.
AWS_CLOCK_TOLERANCE = timedelta(seconds=10)
# Without a Date header (never seen on AWS), the worker's clock stands in, with a wide tolerance.
WORKER_CLOCK_TOLERANCE = timedelta(seconds=120)


def iam_action_name(service: str, operation: str) -> str:
    """The IAM action a boto3 call needs. IAM names are case-insensitive: ``describe_reserved_db_instances`` gives
    ``rds:DescribeReservedDbInstances``, which names rds:DescribeReservedDBInstances."""
    api = "".join(part.capitalize() for part in operation.split("_"))
    return f"{IAM_PREFIX.get(service, service)}:{api}"


class SendGuard(Protocol):
    def before_send(self) -> None: ...

    def after_send(self, outcome: str) -> None: ...


class PlanHandle:
    def __init__(
        self,
        sessions: AwsSessions,
        action: Action[Any, Any],
        account: AccountConfig,
        region: str,
        plan_id: str,
        policy_actions: list[str],
        guard: SendGuard | None = None,
        claimed_elsewhere: Callable[[Iterable[str]], set[str]] | None = None,
        rate_limit: Callable[[str], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._action = action
        self.account = account
        self.region = region
        self.plan_id = plan_id
        self._policy_actions = policy_actions
        self._guard = guard
        self._claimed_elsewhere = claimed_elsewhere
        # Takes a token of the shared rate limit for a service before each call (worker.ratelimit).
        self._rate_limit = rate_limit
        self.calls: list[str] = []
        # What AWS answered when it accepted an asynchronous operation of this plan (``Submitted.follow``), kept
        # in the plan's record so that a later run's ``reconcile`` can follow the operation by its id.
        self.accepted: dict[str, Any] | None = None
        self.last_aws_time: datetime | None = None
        self.last_aws_time_seen_at: datetime | None = None

    def bind_guard(self, guard: SendGuard) -> None:
        self._guard = guard

    # --- time ----------------------------------------------------------------------------------------------------
    def now(self) -> datetime:
        """This worker's clock (which may be off: compare AWS's times with ``aws_now``, not with this)."""
        return datetime.now(UTC) + timedelta(seconds=clock_offset_seconds())

    def aws_now(self) -> datetime | None:
        """AWS's time, from the Date header of the latest response, advanced by the time elapsed since."""
        if self.last_aws_time is None or self.last_aws_time_seen_at is None:
            return None
        return self.last_aws_time + (self.now() - self.last_aws_time_seen_at)

    def earliest_start(self) -> datetime:
        """The earliest time AWS can stamp on anything this plan makes from now on: AWS's time less its tolerance
        (the worker's clock, with a wide tolerance, when AWS sent no Date header). Reconciliation compares
        resources' start times with this, never with the worker's clock."""
        aws_now = self.aws_now()
        return aws_now - AWS_CLOCK_TOLERANCE if aws_now else self.now() - WORKER_CLOCK_TOLERANCE

    # --- calls ---------------------------------------------------------------------------------------------------
    def _call(self, purpose: str, service: str | None, operation: str, params: dict[str, Any],
              limited: bool = True) -> dict[str, Any]:
        svc = service or self._action.service
        if limited and self._rate_limit is not None:
            self._rate_limit(svc)
        self.calls.append(iam_action_name(svc, operation))
        try:
            response: dict[str, Any] = self._sessions.call(
                self.account, self.region, svc, self._action.family, purpose,  # type: ignore[arg-type]
                self.plan_id, self._policy_actions, operation, params,
            )
        except ClientError as exc:
            self._saw(aws_date(exc.response))
            raise
        self._saw(aws_date(response))
        return response

    def _saw(self, when: datetime | None) -> None:
        if when is not None:
            self.last_aws_time, self.last_aws_time_seen_at = when, self.now()

    def read(self, operation: str, service: str | None = None, **params: Any) -> dict[str, Any]:
        return self._call("read", service, operation, params)

    def paginate(self, operation: str, result_key: str, service: str | None = None, **params: Any) -> list[Any]:
        """A read followed through every page with the API's own token (each page one audited call)."""
        svc = service or self._action.service
        model = self._sessions.pagination(svc, operation)
        items: list[Any] = []
        while True:
            page = self.read(operation, service, **params)
            items.extend(page.get(result_key, []))
            if model is None:
                return items
            token = page.get(model["output_token"]) if isinstance(model["output_token"], str) else None
            if not token:
                return items
            params = {**params, model["input_token"]: token}

    def send(self, operation: str, **params: Any) -> dict[str, Any]:
        """The plan's mutating call. The executor's guard runs first (it may refuse) and after."""
        return self.send_via(None, operation, **params)

    def send_via(self, service: str | None, operation: str, **params: Any) -> dict[str, Any]:
        """``send`` through ``service``'s client when it is not the action's own (OpenSearch's newer API for an
        ``es`` action)."""
        # The rate limit's wait comes before the guard: nothing may stand between the guard's lease check and the
        # call but the call itself.
        if self._rate_limit is not None:
            self._rate_limit(service or self._action.service)
        if self._guard is not None:
            self._guard.before_send()
        try:
            response = self._call("write", service, operation, params, limited=False)
        except Exception as exc:
            if self._guard is not None:
                self._guard.after_send(type(exc).__name__)
            raise
        if self._guard is not None:
            self._guard.after_send("ok")
        return response

    def dry_run(self, operation: str, **params: Any) -> str:
        """The call with DryRun=True, retried like a read (a dry run changes nothing). Returns AWS's answer code:
        ``DryRunOperation`` means the call would have been permitted. A throttle or a server error that outlasts
        the retries is raised like a failed read (the plan tries again later), never reported as "not permitted"."""
        try:
            self._call("read", None, operation, {**params, "DryRun": True})
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code") or "error")
            if code != "DryRunOperation" and classify(exc) != Outcome.TERMINAL:
                raise
            return code
        return "accepted"

    def write_idempotent(self, operation: str, service: str | None = None, **params: Any) -> dict[str, Any]:
        """A follow-up write that is harmless to repeat (tags). Made with the plan's write session."""
        return self._call("write", service, operation, params)

    def claimed_elsewhere(self, resource_ids: Iterable[str]) -> set[str]:
        """Of ``resource_ids``, those another plan already claims."""
        if self._claimed_elsewhere is None:
            return set()
        return self._claimed_elsewhere(resource_ids)
