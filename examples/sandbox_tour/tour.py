"""The tour: walk through all 27 write actions of the production role against an AWS endpoint.

Written from AWS's documentation alone: it uses nothing but boto3 and, for the sandbox, the documented control
API (``POST /_sandbox/reset`` and ``POST /_sandbox/clock``) to let time pass. Each section module has a
``tour(t: Tour)`` function that records every write action it performs.

    python -m examples.sandbox_tour.tour http://127.0.0.1:5010
"""

from __future__ import annotations

import importlib
import json
import sys
import urllib.request
from typing import Any

import boto3

# The 27 write actions of ../shared/reference/production-role.md.
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


class Tour:
    def __init__(self, endpoint_url: str) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self.done: dict[str, str] = {}

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

    def let_time_pass(self, seconds: float) -> None:
        self._control("clock", {"advance_seconds": seconds})

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
        return boto3.client(service, region_name=region, endpoint_url=self.endpoint_url, **credentials)

    def record(self, action: str, outcome: str) -> None:
        """Note that a write action was performed; ``outcome`` says what AWS answered, in a few words."""
        self.done[action] = outcome
        print(f"  {action:55s} {outcome}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    endpoint = args[0] if args else "http://127.0.0.1:5010"
    tour = Tour(endpoint)
    tour.reset()
    for section in SECTIONS:
        print(f"== {section}", flush=True)
        module = importlib.import_module(f"examples.sandbox_tour.{section}")
        module.tour(tour)
    missing = [a for a in ALL_ACTIONS if a not in tour.done]
    print(f"{len(ALL_ACTIONS) - len(missing)} of {len(ALL_ACTIONS)} write actions performed")
    if missing:
        print("missing: " + ", ".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
