"""Every read that a family's sessions may use (tasks/families.py) is served by the sandbox or by moto.

Served means a real answer: each read is called with the parameters a worker would send, on an account that
holds commitments (the sandbox's example seed: RIs, a capacity reservation, a scheduled instance, RDS,
ElastiCache, Redshift and Savings Plans reservations, an organization with a member), and must answer 2xx with
its documented response shape (the ``aws`` fixture checks it against botocore's model), naming what it was
asked about. Any error fails the read: a generic one (missing parameter, access denied, ``NotImplemented``, a
route miss) is never an answer. The only errors that count as served are in ``NOT_FOUND``: a read given an id
that does not exist must answer the NotFound error that botocore's model of that operation documents."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

import sandbox as sandbox_package
from sandbox.control import SandboxControl
from tasks.families import FAMILIES

ACCOUNT = "111122223333"  # the example seed's account: it holds the commitments and manages the organization
MEMBER = "111122224444"  # a member account of that organization, in the seed
INVITED = "111122225555"  # a standalone account the organization invites
EXAMPLES = Path(sandbox_package.__file__).parent / "data" / "example-commitments.json"
SERVICES = {"ec2": "ec2", "rds": "rds", "redshift": "redshift", "elasticache": "elasticache", "es": "es",
            "savingsplans": "savingsplans", "organizations": "organizations"}
READS = sorted({a for f in FAMILIES for a in f.read_actions})
# Reads of OpenSearch's newer API: IAM prefix es, boto3 client opensearch.
CLIENT_OF = {"es:DescribeReservedInstanceOfferings": "opensearch", "es:DescribeReservedInstances": "opensearch"}


class World:
    """The seeded account, and the ids a worker would have when it makes each read."""

    def __init__(self, aws: Any) -> None:
        self.aws = aws
        self.clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self.clients:
            self.clients[service] = self.aws(service, account_id=ACCOUNT, retries=1)
        return self.clients[service]

    @cached_property
    def convertible_ri(self) -> str:
        [ri] = self.client("ec2").describe_reserved_instances(OfferingClass="convertible")["ReservedInstances"]
        return str(ri["ReservedInstancesId"])

    @cached_property
    def hosts_and_offering(self) -> dict[str, Any]:
        ec2 = self.client("ec2")
        hosts = ec2.allocate_hosts(AvailabilityZone="us-east-1a", InstanceFamily="m5", Quantity=1)["HostIds"]
        offering = ec2.describe_host_reservation_offerings(
            Filter=[{"Name": "instance-family", "Values": ["m5"]}]
        )["OfferingSet"][0]["OfferingId"]
        return {"HostIdSet": hosts, "OfferingId": offering}

    @cached_property
    def create_account_request(self) -> str:
        status = self.client("organizations").create_account(
            Email="reads@customer.example", AccountName="reads"
        )["CreateAccountStatus"]
        return str(status["Id"])

    @cached_property
    def handshake(self) -> str:
        handshake = self.client("organizations").invite_account_to_organization(
            Target={"Id": INVITED, "Type": "ACCOUNT"}
        )["Handshake"]
        return str(handshake["Id"])


def _next_month() -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"EarliestTime": now, "LatestTime": now + timedelta(days=30)}


# action → (parameters from the seeded world, a list in the answer that must name something — or None).
CALLS: dict[str, tuple[Callable[[World], dict[str, Any]], str | None]] = {
    "es:DescribeReservedInstanceOfferings": (lambda w: {"MaxResults": 100}, "ReservedInstanceOfferings"),
    "es:DescribeReservedInstances": (lambda w: {}, None),
    "ec2:DescribeReservedInstances": (lambda w: {}, "ReservedInstances"),
    "ec2:DescribeReservedInstancesOfferings": (
        lambda w: {"InstanceType": "m5.large", "ProductDescription": "Linux/UNIX", "OfferingClass": "standard"},
        "ReservedInstancesOfferings",
    ),
    "ec2:DescribeReservedInstancesModifications": (lambda w: {}, None),  # none made yet: an empty list
    "ec2:GetReservedInstancesExchangeQuote": (
        lambda w: {"ReservedInstanceIds": [w.convertible_ri]}, "ReservedInstanceValueSet"
    ),
    "ec2:DescribeReservedInstancesListings": (lambda w: {}, None),  # none listed yet: an empty list
    "ec2:DescribeCapacityReservations": (lambda w: {}, "CapacityReservations"),
    "ec2:DescribeInstances": (lambda w: {}, None),  # no instances running: an empty list
    "ec2:DescribeInstanceTypeOfferings": (
        lambda w: {"LocationType": "availability-zone",
                   "Filters": [{"Name": "instance-type", "Values": ["m5.large"]}]},
        "InstanceTypeOfferings",
    ),
    "ec2:DescribeHosts": (lambda w: {"HostIds": w.hosts_and_offering["HostIdSet"]}, "Hosts"),
    "ec2:DescribeHostReservationOfferings": (
        lambda w: {"Filter": [{"Name": "instance-family", "Values": ["m5"]}]}, "OfferingSet"
    ),
    "ec2:DescribeHostReservations": (lambda w: {}, None),  # none bought yet: an empty list
    "ec2:GetHostReservationPurchasePreview": (lambda w: w.hosts_and_offering, "Purchase"),
    "ec2:DescribeScheduledInstanceAvailability": (  # AWS no longer sells them: an empty list, not an error
        lambda w: {"FirstSlotStartTimeRange": _next_month(),
                   "Recurrence": {"Frequency": "Weekly", "Interval": 1, "OccurrenceDays": [2]}},
        None,
    ),
    "ec2:DescribeScheduledInstances": (lambda w: {}, "ScheduledInstanceSet"),
    "ec2:DescribeSpotPriceHistory": (
        lambda w: {"InstanceTypes": ["m5.large"], "ProductDescriptions": ["Linux/UNIX"]}, None
    ),
    "ec2:DescribeSpotFleetRequests": (lambda w: {}, None),  # none requested yet: an empty list
    "ec2:DescribeSpotInstanceRequests": (lambda w: {}, None),
    "savingsplans:DescribeSavingsPlansOfferings": (
        lambda w: {"planTypes": ["EC2Instance"], "durations": [31_536_000]}, "searchResults"
    ),
    "savingsplans:DescribeSavingsPlansOfferingRates": (
        lambda w: {"savingsPlanTypes": ["EC2Instance"]}, "searchResults"
    ),
    "savingsplans:DescribeSavingsPlans": (lambda w: {}, "savingsPlans"),
    "rds:DescribeReservedDBInstancesOfferings": (
        lambda w: {"DBInstanceClass": "db.m5.large", "ProductDescription": "postgresql"},
        "ReservedDBInstancesOfferings",
    ),
    "rds:DescribeReservedDBInstances": (lambda w: {"ReservedDBInstanceId": "legacy-ri"}, "ReservedDBInstances"),
    "redshift:DescribeReservedNodeOfferings": (lambda w: {}, "ReservedNodeOfferings"),
    "redshift:DescribeReservedNodes": (lambda w: {}, "ReservedNodes"),
    "redshift:DescribeReservedNodeExchangeStatus": (lambda w: {}, None),  # no exchange yet: an empty list
    "elasticache:DescribeReservedCacheNodesOfferings": (
        lambda w: {"CacheNodeType": "cache.r5.large", "ProductDescription": "redis"},
        "ReservedCacheNodesOfferings",
    ),
    "elasticache:DescribeReservedCacheNodes": (lambda w: {}, "ReservedCacheNodes"),
    "es:DescribeReservedElasticsearchInstanceOfferings": (
        lambda w: {"MaxResults": 100}, "ReservedElasticsearchInstanceOfferings"
    ),
    "es:DescribeReservedElasticsearchInstances": (lambda w: {}, None),  # the seeded one is in us-west-2
    "organizations:DescribeOrganization": (lambda w: {}, "Organization"),
    "organizations:ListAccounts": (lambda w: {}, "Accounts"),
    "organizations:DescribeAccount": (lambda w: {"AccountId": MEMBER}, "Account"),
    "organizations:ListCreateAccountStatus": (lambda w: {}, None),  # no account created yet: an empty list
    "organizations:DescribeCreateAccountStatus": (
        lambda w: {"CreateAccountRequestId": w.create_account_request}, "CreateAccountStatus"
    ),
    "organizations:ListHandshakesForOrganization": (lambda w: {}, None),  # none sent yet: an empty list
    "organizations:DescribeHandshake": (lambda w: {"HandshakeId": w.handshake}, "Handshake"),
    "organizations:ListDelegatedAdministrators": (lambda w: {}, None),  # none registered: an empty list
}
# Reads given an id that does not exist → the NotFound error botocore's model documents for the operation.
# (EC2's model documents no errors, so no EC2 read is here.)
NOT_FOUND: dict[str, tuple[dict[str, Any], str]] = {
    "organizations:DescribeAccount": ({"AccountId": "999988887777"}, "AccountNotFoundException"),
    "organizations:DescribeHandshake": (
        {"HandshakeId": "h-0123456789abcdef0123456789abcdef"}, "HandshakeNotFoundException"
    ),
    "organizations:DescribeCreateAccountStatus": (
        {"CreateAccountRequestId": "car-0123456789abcdef0123456789abcdef"}, "CreateAccountStatusNotFoundException"
    ),
    "rds:DescribeReservedDBInstances": ({"ReservedDBInstanceId": "no-such-reservation"}, "ReservedDBInstanceNotFound"),
    "elasticache:DescribeReservedCacheNodes": (
        {"ReservedCacheNodeId": "no-such-reservation"}, "ReservedCacheNodeNotFound"
    ),
    "redshift:DescribeReservedNodes": ({"ReservedNodeId": "no-such-node"}, "ReservedNodeNotFound"),
    "redshift:DescribeReservedNodeExchangeStatus": ({"ReservedNodeId": "no-such-node"}, "ReservedNodeNotFound"),
    "es:DescribeReservedElasticsearchInstances": (
        {"ReservedElasticsearchInstanceId": "00000000-0000-0000-0000-000000000000"}, "ResourceNotFoundException"
    ),
}


def call(client: Any, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    method = next(m for m, api in client.meta.method_to_api_mapping.items() if api == operation)
    return dict(getattr(client, method)(**params))


def test_every_family_read_has_a_call() -> None:
    assert sorted(CALLS) == READS
    assert set(NOT_FOUND) <= set(READS)


@pytest.mark.parametrize("action", READS)
def test_family_read_is_served(sandbox: SandboxControl, aws: Any, action: str) -> None:
    sandbox.seed(json.loads(EXAMPLES.read_text())["existing_commitments"])
    world = World(aws)
    prefix, operation = action.split(":")
    client = world.client(CLIENT_OF.get(action, SERVICES[prefix]))
    build, listed = CALLS[action]
    try:
        answer = call(client, operation, build(world))
    except ClientError as exc:
        status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
        pytest.fail(f"{action} is not served: HTTP {status} {exc.response['Error']}", pytrace=False)
    assert 200 <= answer["ResponseMetadata"]["HTTPStatusCode"] < 300
    if listed is not None:
        assert answer.get(listed), f"{action}: {listed} is empty: {answer}"


@pytest.mark.parametrize("action", sorted(NOT_FOUND))
def test_an_unknown_id_answers_the_documented_not_found(sandbox: SandboxControl, aws: Any, action: str) -> None:
    sandbox.seed(json.loads(EXAMPLES.read_text())["existing_commitments"])
    prefix, operation = action.split(":")
    client = aws(SERVICES[prefix], account_id=ACCOUNT, retries=1)
    params, code = NOT_FOUND[action]
    documented = {s.metadata.get("error", {}).get("code", s.name)
                  for s in client.meta.service_model.operation_model(operation).error_shapes}
    assert code in documented, f"{code} is not an error botocore documents for {operation}: {sorted(documented)}"
    with pytest.raises(ClientError) as refused:
        call(client, operation, params)
    assert refused.value.response["Error"]["Code"] == code
