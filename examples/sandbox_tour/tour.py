"""The tour: walk through all 27 write actions of the production role against an AWS endpoint.

Written from AWS's documentation alone: it uses nothing but boto3 and, for the sandbox, the documented control
API (``POST /_sandbox/reset``, ``POST /_sandbox/clock`` to let time pass, and ``POST /_sandbox/seed`` for a
commitment bought in the past). Each section module has a ``tour(t: Tour)`` function that records every write
action it performs.

An action counts as performed only when the call of its API answered 2xx with the response shape that
botocore's model documents (the tour watches every call its clients make). A refusal the tour shows on purpose
is counted apart, as a refusal: it never counts as performing the action. The tour exits 0 only when all 27
write actions were performed.

    python -m examples.sandbox_tour.tour http://127.0.0.1:5010
"""

from __future__ import annotations

import importlib
import json
import sys
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
from botocore.exceptions import ClientError
from botocore.validate import ParamValidator

# The 27 write actions of the production role (docs/production-role.md).
ALL_ACTIONS = [
    "ec2:ModifyReservedInstances",
    "ec2:PurchaseReservedInstancesOffering",
    "ec2:AcceptReservedInstancesExchangeQuote",
    "ec2:CreateReservedInstancesListing",
    "ec2:CancelReservedInstancesListing",
    "ec2:PurchaseScheduledInstances",
    "ec2:RunScheduledInstances",
    "ec2:ModifyCapacityReservation",
    "ec2:ModifyInstanceCapacityReservationAttributes",
    "ec2:CreateCapacityReservation",
    "ec2:CancelCapacityReservation",
    "ec2:PurchaseHostReservation",
    "ec2:RequestSpotFleet",
    "ec2:RequestSpotInstances",
    "ec2:CancelSpotFleetRequests",
    "ec2:CancelSpotInstanceRequests",
    "rds:PurchaseReservedDbInstancesOffering",
    "redshift:GetReservedNodeExchangeOfferings",
    "redshift:PurchaseReservedNodeOffering",
    "redshift:AcceptReservedNodeExchange",
    "elasticache:PurchaseReservedCacheNodesOffering",
    "es:PurchaseReservedElasticsearchInstance",
    "es:PurchaseReservedElasticsearchInstanceOffering",
    "savingsplans:CreateSavingsPlan",
    "organizations:InviteAccountToOrganization",
    "organizations:RemoveAccountFromOrganization",
    "organizations:CreateAccount",
]

SECTIONS = [
    "ec2_reserved_instances",
    "ec2_capacity_hosts",
    "ec2_scheduled_spot",
    "databases",
    "savings_and_search",
    "organizations",
]


# An IAM action that is not an API name, and the API it authorizes (docs/production-role.md).
API_OF = {"es:PurchaseReservedElasticsearchInstance": "es:PurchaseReservedElasticsearchInstanceOffering"}


@dataclass(frozen=True)
class Call:
    """One API call a tour client made, as botocore saw the answer."""

    api: str  # "prefix:Operation", the prefix being the service's IAM (signing) name
    status: int
    problem: str | None  # None: a 2xx answer with the documented response shape


def observed_call(http_response: Any, parsed: dict[str, Any], model: Any) -> Call:
    status = int(http_response.status_code)
    api = f"{model.service_model.signing_name}:{model.name}"
    if not 200 <= status < 300:
        error = parsed.get("Error") or {}
        return Call(api, status, f"refused: HTTP {status} {error.get('Code', '')}".rstrip())
    if model.output_shape is not None:
        body = {k: v for k, v in parsed.items() if k != "ResponseMetadata"}
        report = ParamValidator().validate(body, model.output_shape)
        if report.has_errors():
            return Call(api, status, f"HTTP {status}, but not the documented shape: {report.generate_report()}")
    return Call(api, status, None)


# Actions of the production role that AWS itself no longer performs, with the refusal AWS documents for them
# (botocore's model: "You can no longer purchase Scheduled Instances"). The tour must get exactly that refusal:
# anything else (a success included) means the sandbox does not behave as AWS does.
RETIRED_BY_AWS = {"ec2:PurchaseScheduledInstances": "UnsupportedOperation"}


class Tour:
    def __init__(self, endpoint_url: str) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self.calls: list[Call] = []
        self.done: dict[str, str] = {}  # performed: its API answered 2xx with the documented shape
        self.refusals: dict[str, str] = {}  # refusals shown on purpose (error code): not performed
        self.unconfirmed: dict[str, str] = {}  # recorded as performed, but the call did not succeed

    def _control(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"{self.endpoint_url}/_sandbox/{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def reset(self) -> None:
        self._control("reset", {})

    def let_time_pass(self, seconds: float) -> datetime:
        """Move the sandbox's clock; returns its new time."""
        return datetime.fromisoformat(self._control("clock", {"advance_seconds": seconds})["now"])

    def seed(self, entries: list[dict[str, Any]]) -> None:
        """Commitments bought before the tour (the sandbox's seed format, docs/sandbox.md)."""
        self._control("seed", {"existing_commitments": entries})

    def client(self, service: str, region: str = "us-east-1", account_id: str | None = None) -> Any:
        """A client with credentials of the role ``commitd`` in ``account_id`` (AssumeRole), or base ones."""
        credentials = {"aws_access_key_id": "tour", "aws_secret_access_key": "tour"}
        if account_id is not None:
            sts = boto3.client("sts", region_name=region, endpoint_url=self.endpoint_url, **credentials)
            assumed = sts.assume_role(
                RoleArn=f"arn:aws:iam::{account_id}:role/commitd", RoleSessionName="tour"
            )["Credentials"]
            credentials = {
                "aws_access_key_id": assumed["AccessKeyId"],
                "aws_secret_access_key": assumed["SecretAccessKey"],
                "aws_session_token": assumed["SessionToken"],
            }
        client = boto3.client(service, region_name=region, endpoint_url=self.endpoint_url, **credentials)
        client.meta.events.register("after-call", self._observe)
        return client

    def _observe(self, http_response: Any, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append(observed_call(http_response, parsed, model))

    def last_call(self, action: str) -> Call | None:
        """The latest call of the API that ``action`` authorizes (IAM names are case-insensitive)."""
        api = API_OF.get(action, action).lower()
        return next((c for c in reversed(self.calls) if c.api.lower() == api), None)

    def record(self, action: str, outcome: str) -> None:
        """Note that a write action was performed; ``outcome`` says what AWS answered, in a few words. It counts
        only if the latest call of the action's API answered 2xx with the documented response shape."""
        call = self.last_call(action)
        problem = "its API was never called" if call is None else call.problem
        if problem is not None:
            self.unconfirmed[action] = problem
            print(f"  {action:55s} NOT PERFORMED: {problem}", flush=True)
            return
        self.done[action] = outcome
        print(f"  {action:55s} {outcome}", flush=True)

    def refused(self, action: str, error: ClientError, why: str) -> None:
        """A refusal the tour shows on purpose: named as a refusal, never counted as performing the action."""
        code = str(error.response["Error"]["Code"])
        self.refusals[action] = code
        print(f"  {action:55s} REFUSED (shown on purpose, not performed): {code}; {why}", flush=True)

    def retired_as_aws_answers(self) -> list[str]:
        """The retired actions that got exactly AWS's documented refusal."""
        return [a for a, code in RETIRED_BY_AWS.items() if self.refusals.get(a) == code and a not in self.done]

    def not_performed(self) -> dict[str, str]:
        """Each of the 27 actions that was not performed, with the reason."""
        reasons = {a: f"refused: {c} (shown on purpose)" for a, c in self.refusals.items()}
        reasons.update(self.unconfirmed)
        return {a: reasons.get(a, "never recorded") for a in ALL_ACTIONS if a not in self.done}


def run(endpoint: str) -> Tour:
    """Every section of the tour, on a freshly reset sandbox."""
    tour = Tour(endpoint)
    tour.reset()
    for section in SECTIONS:
        print(f"== {section}", flush=True)
        module = importlib.import_module(f"examples.sandbox_tour.{section}")
        module.tour(tour)
    return tour


def report(tour: Tour) -> int:
    """Print how many of the 27 actions were performed and why any other was not; 0 only if every action was
    performed or, for one AWS has retired, refused exactly as AWS refuses it."""
    missing = tour.not_performed()
    retired = tour.retired_as_aws_answers()
    print(
        f"{len(ALL_ACTIONS) - len(missing)} of {len(ALL_ACTIONS)} write actions performed "
        "(a 2xx answer with the documented response shape)"
    )
    for action in retired:
        print(f"refused as AWS refuses it (AWS no longer performs it): {action}: {RETIRED_BY_AWS[action]}")
    for action, reason in missing.items():
        if action not in retired:
            print(f"not performed: {action}: {reason}")
    return 1 if set(missing) - set(retired) else 0


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    return report(run(args[0] if args else "http://127.0.0.1:5010"))

if __name__ == "__main__":
    sys.exit(main())
