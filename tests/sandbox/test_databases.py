"""RDS, ElastiCache and Redshift reservations over real HTTP with real boto3 clients (shapes checked)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError

from sandbox.control import SandboxControl
from sandbox.server import SandboxServer, build_app

ACCOUNT = "240000000011"
OTHER_ACCOUNT = "240000000012"
YEAR = 31_536_000
DESCRIBE_ONLY = {
    "Statement": [
        {"Effect": "Allow", "Action": ["rds:Describe*", "redshift:Describe*", "elasticache:Describe*"]}
    ]
}


def _error(caught: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response: Any = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


# --- RDS ------------------------------------------------------------------------------------------
def _rds_offering(rds: Any, **overrides: Any) -> dict[str, Any]:
    wanted = {
        "DBInstanceClass": "db.m5.large",
        "ProductDescription": "postgresql",
        "Duration": "1",
        "OfferingType": "Partial Upfront",
        "MultiAZ": False,
        **overrides,
    }
    [offering] = rds.describe_reserved_db_instances_offerings(**wanted)["ReservedDBInstancesOfferings"]
    return dict(offering)


def test_rds_offerings_filter_page_and_price_consistently(sandbox: SandboxControl, aws: Any) -> None:
    rds = aws("rds", account_id=ACCOUNT)
    everything: list[dict[str, Any]] = []
    marker: str | None = None
    while True:
        kwargs: dict[str, Any] = {"MaxRecords": 20}
        if marker:
            kwargs["Marker"] = marker
        page = rds.describe_reserved_db_instances_offerings(**kwargs)
        assert len(page["ReservedDBInstancesOfferings"]) <= 20
        everything += page["ReservedDBInstancesOfferings"]
        marker = page.get("Marker")
        if not marker:
            break
    ids = [o["ReservedDBInstancesOfferingId"] for o in everything]
    assert len(ids) == len(set(ids)) == 72  # 3 classes x 2 engines x Multi-AZ or not x 2 terms x 3 payments
    assert {o["OfferingType"] for o in everything} == {"No Upfront", "Partial Upfront", "All Upfront"}
    for offering in everything:
        hourly = sum(c["RecurringChargeAmount"] for c in offering.get("RecurringCharges", []))
        if offering["OfferingType"] == "No Upfront":
            assert offering["FixedPrice"] == 0 and hourly > 0
        elif offering["OfferingType"] == "All Upfront":
            assert offering["FixedPrice"] > 0 and hourly == 0
        else:
            assert offering["FixedPrice"] > 0 and hourly > 0

    # Duration in years or seconds; ProductDescription matches partially, as documented.
    by_years = _rds_offering(rds, ProductDescription="postgres")
    assert by_years == _rds_offering(rds, Duration=str(YEAR))
    multi_az = _rds_offering(rds, MultiAZ=True)
    assert multi_az["MultiAZ"] and multi_az["FixedPrice"] > by_years["FixedPrice"]
    assert by_years["Duration"] == YEAR and by_years["DBInstanceClass"] == "db.m5.large"
    # Offering ids are stable across describes and sandboxes (derived from the offering's attributes).
    sandbox.reset()
    assert _rds_offering(aws("rds", account_id=ACCOUNT)) == by_years
    # Each region has its own offerings.
    west = _rds_offering(aws("rds", region="eu-west-1", account_id=ACCOUNT))
    assert west["ReservedDBInstancesOfferingId"] != by_years["ReservedDBInstancesOfferingId"]

    with pytest.raises(ClientError) as caught:
        rds.describe_reserved_db_instances_offerings(ReservedDBInstancesOfferingId="not-an-offering")
    assert _error(caught) == ("ReservedDBInstancesOfferingNotFound", 404)
    with pytest.raises(ClientError) as caught:
        rds.describe_reserved_db_instances_offerings(MaxRecords=5)
    assert _error(caught)[0] == "InvalidParameterValue"
    with pytest.raises(ClientError) as caught:
        rds.describe_reserved_db_instances_offerings(Duration="2")
    assert _error(caught)[0] == "InvalidParameterValue"


def test_rds_purchase_is_visible_in_describe_ground_truth_and_tags(sandbox: SandboxControl, aws: Any) -> None:
    rds = aws("rds", account_id=ACCOUNT)
    offering = _rds_offering(rds)
    bought = rds.purchase_reserved_db_instances_offering(
        ReservedDBInstancesOfferingId=offering["ReservedDBInstancesOfferingId"],
        ReservedDBInstanceId="plan-42-rds",
        DBInstanceCount=2,
        Tags=[{"Key": "ManagedBy", "Value": "commitd"}],
    )["ReservedDBInstance"]
    arn = f"arn:aws:rds:us-east-1:{ACCOUNT}:ri:plan-42-rds"
    assert bought["ReservedDBInstanceId"] == "plan-42-rds"
    assert bought["ReservedDBInstanceArn"] == arn
    assert bought["State"] == "payment-pending" and bought["DBInstanceCount"] == 2
    assert (
        bought["FixedPrice"] == offering["FixedPrice"]
        and bought["RecurringCharges"] == offering["RecurringCharges"]
    )
    assert len(bought["LeaseId"]) == 36

    [described] = rds.describe_reserved_db_instances(ReservedDBInstanceId="plan-42-rds")[
        "ReservedDBInstances"
    ]
    assert described == bought
    [truth] = sandbox.resources(service="rds")
    assert truth["id"] == arn and truth["type"] == "reserved-db-instance" and truth["account_id"] == ACCOUNT
    assert truth["created_by"]["operation"] == "rds:PurchaseReservedDBInstancesOffering"
    assert truth["created_by"]["token"] == "plan-42-rds" and truth["state"] == "payment-pending"

    sandbox.advance_clock(60)
    [active] = rds.describe_reserved_db_instances(LeaseId=bought["LeaseId"])["ReservedDBInstances"]
    assert active["State"] == "active"
    assert rds.list_tags_for_resource(ResourceName=arn)["TagList"] == [
        {"Key": "ManagedBy", "Value": "commitd"}
    ]
    # Other filter parameters; other accounts see nothing.
    assert rds.describe_reserved_db_instances(OfferingType="All Upfront")["ReservedDBInstances"] == []
    assert len(rds.describe_reserved_db_instances(Duration="1", MultiAZ=False)["ReservedDBInstances"]) == 1
    assert aws("rds", account_id=OTHER_ACCOUNT).describe_reserved_db_instances()["ReservedDBInstances"] == []
    sandbox.advance_clock(YEAR)
    assert rds.describe_reserved_db_instances()["ReservedDBInstances"][0]["State"] == "retired"


def test_rds_duplicate_reservation_id_is_already_exists(sandbox: SandboxControl, aws: Any) -> None:
    rds = aws("rds", account_id=ACCOUNT)
    offering_id = _rds_offering(rds)["ReservedDBInstancesOfferingId"]
    rds.purchase_reserved_db_instances_offering(
        ReservedDBInstancesOfferingId=offering_id, ReservedDBInstanceId="plan-7"
    )
    for count in (1, 3):  # same parameters or not: the customer id is taken
        with pytest.raises(rds.exceptions.ReservedDBInstanceAlreadyExistsFault) as caught:
            rds.purchase_reserved_db_instances_offering(
                ReservedDBInstancesOfferingId=offering_id,
                ReservedDBInstanceId="plan-7",
                DBInstanceCount=count,
            )
        assert _error(caught) == ("ReservedDBInstanceAlreadyExists", 404)
    assert len(sandbox.resources(service="rds")) == 1
    # The id is the customer's within one account and region: another account may use it too.
    aws("rds", account_id=OTHER_ACCOUNT).purchase_reserved_db_instances_offering(
        ReservedDBInstancesOfferingId=offering_id, ReservedDBInstanceId="plan-7"
    )
    assert len(sandbox.resources(service="rds")) == 2


def test_rds_lost_answer_is_reconciled_by_the_customer_id(sandbox: SandboxControl, aws: Any) -> None:
    """The worker's recovery path: the purchase went through but its answer was lost; the customer id finds
    it, and a blind re-send is refused instead of buying twice."""
    rds = aws("rds", account_id=ACCOUNT, retries=1)
    offering_id = _rds_offering(rds)["ReservedDBInstancesOfferingId"]
    sandbox.add_fault("rds:PurchaseReservedDBInstancesOffering", "commit_then_drop", count=1)
    with pytest.raises(ConnectionClosedError):
        rds.purchase_reserved_db_instances_offering(
            ReservedDBInstancesOfferingId=offering_id, ReservedDBInstanceId="plan-lost"
        )
    [found] = rds.describe_reserved_db_instances(ReservedDBInstanceId="plan-lost")["ReservedDBInstances"]
    assert found["ReservedDBInstancesOfferingId"] == offering_id
    with pytest.raises(rds.exceptions.ReservedDBInstanceAlreadyExistsFault):
        rds.purchase_reserved_db_instances_offering(
            ReservedDBInstancesOfferingId=offering_id, ReservedDBInstanceId="plan-lost"
        )
    assert len(sandbox.resources(service="rds")) == 1


def test_rds_generates_an_id_and_defaults_the_count(sandbox: SandboxControl, aws: Any) -> None:
    rds = aws("rds", account_id=ACCOUNT)
    offering_id = _rds_offering(rds)["ReservedDBInstancesOfferingId"]
    first = rds.purchase_reserved_db_instances_offering(ReservedDBInstancesOfferingId=offering_id)
    second = rds.purchase_reserved_db_instances_offering(ReservedDBInstancesOfferingId=offering_id)
    ids = {
        first["ReservedDBInstance"]["ReservedDBInstanceId"],
        second["ReservedDBInstance"]["ReservedDBInstanceId"],
    }
    assert len(ids) == 2 and all(i.startswith("ri-") for i in ids)
    assert first["ReservedDBInstance"]["DBInstanceCount"] == 1
    assert {r["created_by"]["token"] for r in sandbox.resources(service="rds")} == {None}


def test_rds_terminal_errors(sandbox: SandboxControl, aws: Any) -> None:
    rds = aws("rds", account_id=ACCOUNT)
    with pytest.raises(ClientError) as caught:
        rds.purchase_reserved_db_instances_offering(ReservedDBInstancesOfferingId="438012d3-0000-0000-0000-0")
    assert _error(caught) == ("ReservedDBInstancesOfferingNotFound", 404)
    with pytest.raises(ClientError) as caught:
        rds.describe_reserved_db_instances(ReservedDBInstanceId="never-bought")
    assert _error(caught) == ("ReservedDBInstanceNotFound", 404)
    with pytest.raises(ClientError) as caught:  # documented as "not currently supported"
        rds.describe_reserved_db_instances(Filters=[{"Name": "state", "Values": ["active"]}])
    assert _error(caught)[0] == "InvalidParameterValue"
    offering_id = _rds_offering(rds)["ReservedDBInstancesOfferingId"]
    rds.purchase_reserved_db_instances_offering(ReservedDBInstancesOfferingId=offering_id, DBInstanceCount=40)
    with pytest.raises(ClientError) as caught:
        rds.purchase_reserved_db_instances_offering(ReservedDBInstancesOfferingId=offering_id)
    assert _error(caught) == ("ReservedDBInstanceQuotaExceeded", 400)
    assert len(sandbox.resources(service="rds")) == 1


def test_rds_purchase_denied_without_permission(sandbox: SandboxControl, aws: Any) -> None:
    sandbox.set_iam(True, DESCRIBE_ONLY)
    rds = aws("rds", account_id="111122223333")
    offering_id = _rds_offering(rds)["ReservedDBInstancesOfferingId"]
    with pytest.raises(ClientError) as caught:
        rds.purchase_reserved_db_instances_offering(ReservedDBInstancesOfferingId=offering_id)
    assert _error(caught) == ("AccessDenied", 403)
    assert sandbox.resources() == []


def test_rds_seeded_reservations_expire_with_the_clock(sandbox: SandboxControl, aws: Any) -> None:
    sandbox.seed(
        [
            {
                "kind": "rds:reserved-db-instance",
                "account_id": ACCOUNT,
                "region": "us-east-1",
                "db_instance_class": "db.r5.large",
                "product_description": "mysql",
                "multi_az": True,
                "offering_type": "All Upfront",
                "duration_years": 1,
                "db_instance_count": 3,
                "start_days_ago": 360,
                "id": "legacy-ri",
            },
            {
                "kind": "rds:reserved-db-instance",
                "account_id": ACCOUNT,
                "region": "us-east-1",
                "db_instance_class": "db.t3.medium",
                "start_days_ago": 400,
            },
        ]
    )
    rds = aws("rds", account_id=ACCOUNT)
    states = {
        r["ReservedDBInstanceId"]: r["State"]
        for r in rds.describe_reserved_db_instances()["ReservedDBInstances"]
    }
    assert states["legacy-ri"] == "active" and sorted(states.values()) == ["active", "retired"]
    sandbox.advance_clock(6 * 86400)
    [seeded] = rds.describe_reserved_db_instances(ReservedDBInstanceId="legacy-ri")["ReservedDBInstances"]
    assert seeded["State"] == "retired" and seeded["MultiAZ"] and seeded["DBInstanceCount"] == 3


# --- ElastiCache ----------------------------------------------------------------------------------
def _cache_offering(elasticache: Any, **overrides: Any) -> dict[str, Any]:
    wanted = {
        "CacheNodeType": "cache.r5.large",
        "ProductDescription": "redis",
        "Duration": "3",
        "OfferingType": "No Upfront",
        **overrides,
    }
    [offering] = elasticache.describe_reserved_cache_nodes_offerings(**wanted)["ReservedCacheNodesOfferings"]
    return dict(offering)


def test_elasticache_offerings_filter_and_page(sandbox: SandboxControl, aws: Any) -> None:
    elasticache = aws("elasticache", account_id=ACCOUNT)
    first = elasticache.describe_reserved_cache_nodes_offerings(MaxRecords=20)
    rest = elasticache.describe_reserved_cache_nodes_offerings(MaxRecords=20, Marker=first["Marker"])
    assert "Marker" not in rest
    ids = {o["ReservedCacheNodesOfferingId"] for o in first["ReservedCacheNodesOfferings"]}
    ids |= {o["ReservedCacheNodesOfferingId"] for o in rest["ReservedCacheNodesOfferings"]}
    assert len(ids) == 36
    offering = _cache_offering(elasticache)
    assert offering == _cache_offering(elasticache, Duration=str(3 * YEAR))
    assert (
        offering["FixedPrice"] == 0
        and offering["RecurringCharges"][0]["RecurringChargeFrequency"] == "Hourly"
    )
    memcached = elasticache.describe_reserved_cache_nodes_offerings(ProductDescription="memcached")
    assert {o["ProductDescription"] for o in memcached["ReservedCacheNodesOfferings"]} == {"memcached"}
    with pytest.raises(ClientError) as caught:
        elasticache.describe_reserved_cache_nodes_offerings(ReservedCacheNodesOfferingId="nope")
    assert _error(caught) == ("ReservedCacheNodesOfferingNotFound", 404)


def test_elasticache_purchase_happy_path_and_duplicates(sandbox: SandboxControl, aws: Any) -> None:
    elasticache = aws("elasticache", account_id=ACCOUNT)
    offering_id = _cache_offering(elasticache)["ReservedCacheNodesOfferingId"]
    bought = elasticache.purchase_reserved_cache_nodes_offering(
        ReservedCacheNodesOfferingId=offering_id,
        ReservedCacheNodeId="plan-9-cache",
        CacheNodeCount=4,
        Tags=[{"Key": "plan", "Value": "9"}],
    )["ReservedCacheNode"]
    arn = f"arn:aws:elasticache:us-east-1:{ACCOUNT}:reserved-instance:plan-9-cache"
    assert bought["ReservationARN"] == arn and bought["State"] == "payment-pending"
    assert bought["CacheNodeCount"] == 4 and bought["CacheNodeType"] == "cache.r5.large"
    [described] = elasticache.describe_reserved_cache_nodes(ReservedCacheNodeId="plan-9-cache")[
        "ReservedCacheNodes"
    ]
    assert described == bought
    [truth] = sandbox.resources(service="elasticache")
    assert (truth["id"], truth["type"], truth["created_by"]["token"]) == (
        arn,
        "reserved-cache-node",
        "plan-9-cache",
    )
    assert truth["created_by"]["operation"] == "elasticache:PurchaseReservedCacheNodesOffering"

    with pytest.raises(elasticache.exceptions.ReservedCacheNodeAlreadyExistsFault) as caught:
        elasticache.purchase_reserved_cache_nodes_offering(
            ReservedCacheNodesOfferingId=offering_id, ReservedCacheNodeId="plan-9-cache", CacheNodeCount=4
        )
    assert _error(caught) == ("ReservedCacheNodeAlreadyExists", 404)
    assert len(sandbox.resources(service="elasticache")) == 1

    sandbox.advance_clock(60)
    nodes = elasticache.describe_reserved_cache_nodes(CacheNodeType="cache.r5.large", Duration="3")
    assert [n["State"] for n in nodes["ReservedCacheNodes"]] == ["active"]
    assert elasticache.list_tags_for_resource(ResourceName=arn)["TagList"] == [{"Key": "plan", "Value": "9"}]
    generated = elasticache.purchase_reserved_cache_nodes_offering(ReservedCacheNodesOfferingId=offering_id)
    assert generated["ReservedCacheNode"]["ReservedCacheNodeId"].startswith("ri-")
    assert generated["ReservedCacheNode"]["CacheNodeCount"] == 1


def test_elasticache_terminal_errors(sandbox: SandboxControl, aws: Any) -> None:
    elasticache = aws("elasticache", account_id=ACCOUNT)
    with pytest.raises(ClientError) as caught:
        elasticache.purchase_reserved_cache_nodes_offering(ReservedCacheNodesOfferingId="no-such-offering")
    assert _error(caught) == ("ReservedCacheNodesOfferingNotFound", 404)
    with pytest.raises(ClientError) as caught:
        elasticache.describe_reserved_cache_nodes(ReservedCacheNodeId="never-bought")
    assert _error(caught) == ("ReservedCacheNodeNotFound", 404)
    offering_id = _cache_offering(elasticache)["ReservedCacheNodesOfferingId"]
    with pytest.raises(ClientError) as caught:
        elasticache.purchase_reserved_cache_nodes_offering(
            ReservedCacheNodesOfferingId=offering_id, CacheNodeCount=301
        )
    assert _error(caught) == ("ReservedCacheNodeQuotaExceeded", 400)
    with pytest.raises(ClientError) as caught:
        elasticache.purchase_reserved_cache_nodes_offering(
            ReservedCacheNodesOfferingId=offering_id, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(51)]
        )
    assert _error(caught) == ("TagQuotaPerResourceExceeded", 400)
    assert sandbox.resources() == []


def test_elasticache_purchase_denied_without_permission(sandbox: SandboxControl, aws: Any) -> None:
    sandbox.set_iam(True, DESCRIBE_ONLY)
    elasticache = aws("elasticache", account_id="111122223333")
    offering_id = _cache_offering(elasticache)["ReservedCacheNodesOfferingId"]
    with pytest.raises(ClientError) as caught:
        elasticache.purchase_reserved_cache_nodes_offering(ReservedCacheNodesOfferingId=offering_id)
    assert _error(caught) == ("AccessDenied", 403)
    assert sandbox.resources() == []


def test_elasticache_seeded_node(sandbox: SandboxControl, aws: Any) -> None:
    sandbox.seed(
        [
            {
                "kind": "elasticache:reserved-cache-node",
                "account_id": ACCOUNT,
                "region": "eu-west-1",
                "cache_node_type": "cache.m5.large",
                "product_description": "memcached",
                "offering_type": "Partial Upfront",
                "duration_years": 3,
                "cache_node_count": 2,
                "start_days_ago": 1090,
                "id": "old-cache",
            }
        ]
    )
    elasticache = aws("elasticache", region="eu-west-1", account_id=ACCOUNT)
    [node] = elasticache.describe_reserved_cache_nodes()["ReservedCacheNodes"]
    assert (node["ReservedCacheNodeId"], node["State"], node["CacheNodeCount"]) == ("old-cache", "active", 2)
    sandbox.advance_clock(6 * 86400)
    assert elasticache.describe_reserved_cache_nodes()["ReservedCacheNodes"][0]["State"] == "retired"


# --- Redshift -------------------------------------------------------------------------------------
def _node_offering(
    redshift: Any, node_type: str, years: int = 1, payment: str = "Partial Upfront"
) -> dict[str, Any]:
    offerings: list[dict[str, Any]] = []
    for page in redshift.get_paginator("describe_reserved_node_offerings").paginate():
        offerings += page["ReservedNodeOfferings"]
    [offering] = [
        o
        for o in offerings
        if o["NodeType"] == node_type and o["Duration"] == years * YEAR and o["OfferingType"] == payment
    ]
    return offering


def _active_node(sandbox: SandboxControl, redshift: Any, node_type: str, count: int = 1, **kw: Any) -> str:
    offering = _node_offering(redshift, node_type, **kw)
    node = redshift.purchase_reserved_node_offering(
        ReservedNodeOfferingId=offering["ReservedNodeOfferingId"], NodeCount=count
    )["ReservedNode"]
    sandbox.advance_clock(60)
    return str(node["ReservedNodeId"])


def test_redshift_offerings_page_and_include_dc1(sandbox: SandboxControl, aws: Any) -> None:
    redshift = aws("redshift", account_id=ACCOUNT)
    first = redshift.describe_reserved_node_offerings(MaxRecords=20)
    assert len(first["ReservedNodeOfferings"]) == 20 and first["Marker"]
    rest = redshift.describe_reserved_node_offerings(Marker=first["Marker"])
    offerings = first["ReservedNodeOfferings"] + rest["ReservedNodeOfferings"]
    assert len(offerings) == 36  # 6 node types x 2 terms x 3 payment options
    assert {o["NodeType"] for o in offerings} >= {"dc1.large", "dc1.8xlarge", "dc2.large", "ra3.4xlarge"}
    assert {o["ReservedNodeOfferingType"] for o in offerings} == {"Regular"}
    one = offerings[0]["ReservedNodeOfferingId"]
    assert redshift.describe_reserved_node_offerings(ReservedNodeOfferingId=one)["ReservedNodeOfferings"] == [
        offerings[0]
    ]
    with pytest.raises(ClientError) as caught:
        redshift.describe_reserved_node_offerings(ReservedNodeOfferingId="nope")
    assert _error(caught) == ("ReservedNodeOfferingNotFound", 404)


def test_redshift_purchase_has_no_token_so_each_call_buys(sandbox: SandboxControl, aws: Any) -> None:
    redshift = aws("redshift", account_id=ACCOUNT)
    offering = _node_offering(redshift, "ra3.xlplus", years=3, payment="All Upfront")
    first = redshift.purchase_reserved_node_offering(
        ReservedNodeOfferingId=offering["ReservedNodeOfferingId"]
    )
    second = redshift.purchase_reserved_node_offering(
        ReservedNodeOfferingId=offering["ReservedNodeOfferingId"], NodeCount=2
    )
    node = first["ReservedNode"]
    assert node["State"] == "pending-payment" and node["NodeCount"] == 1 and node["FixedPrice"] > 0
    assert node["ReservedNodeId"] != second["ReservedNode"]["ReservedNodeId"]
    truths = sandbox.resources(service="redshift")
    assert {t["id"] for t in truths} == {node["ReservedNodeId"], second["ReservedNode"]["ReservedNodeId"]}
    assert {t["created_by"]["operation"] for t in truths} == {"redshift:PurchaseReservedNodeOffering"}
    [described] = redshift.describe_reserved_nodes(ReservedNodeId=node["ReservedNodeId"])["ReservedNodes"]
    assert described == node
    sandbox.advance_clock(60)
    assert {n["State"] for n in redshift.describe_reserved_nodes()["ReservedNodes"]} == {"active"}
    assert aws("redshift", account_id=OTHER_ACCOUNT).describe_reserved_nodes()["ReservedNodes"] == []


def test_redshift_purchase_terminal_errors(sandbox: SandboxControl, aws: Any) -> None:
    redshift = aws("redshift", account_id=ACCOUNT)
    with pytest.raises(ClientError) as caught:
        redshift.purchase_reserved_node_offering(ReservedNodeOfferingId="no-such-offering")
    assert _error(caught) == ("ReservedNodeOfferingNotFound", 404)
    with pytest.raises(ClientError) as caught:
        redshift.describe_reserved_nodes(ReservedNodeId="no-such-node")
    assert _error(caught) == ("ReservedNodeNotFound", 404)
    offering_id = _node_offering(redshift, "dc2.large")["ReservedNodeOfferingId"]
    with pytest.raises(ClientError) as caught:
        redshift.purchase_reserved_node_offering(ReservedNodeOfferingId=offering_id, NodeCount=201)
    assert _error(caught) == ("ReservedNodeQuotaExceeded", 400)
    assert sandbox.resources() == []


def test_redshift_dc1_exchange_end_to_end(sandbox: SandboxControl, aws: Any) -> None:
    redshift = aws("redshift", account_id=ACCOUNT)
    source_id = _active_node(sandbox, redshift, "dc1.large", count=3, years=3, payment="Partial Upfront")
    offerings = redshift.get_reserved_node_exchange_offerings(ReservedNodeId=source_id)[
        "ReservedNodeOfferings"
    ]
    assert [(o["NodeType"], o["Duration"], o["OfferingType"]) for o in offerings] == [
        ("dc2.large", 3 * YEAR, "Partial Upfront")
    ]
    [source_before] = redshift.describe_reserved_nodes(ReservedNodeId=source_id)["ReservedNodes"]

    exchanged = redshift.accept_reserved_node_exchange(
        ReservedNodeId=source_id, TargetReservedNodeOfferingId=offerings[0]["ReservedNodeOfferingId"]
    )["ExchangedReservedNode"]
    assert (
        exchanged["NodeType"] == "dc2.large"
        and exchanged["NodeCount"] == 3
        and exchanged["State"] == "active"
    )
    assert exchanged["ReservedNodeOfferingId"] == offerings[0]["ReservedNodeOfferingId"]
    # Same term, no extra cost: the remaining term and the agreed price carry over.
    assert exchanged["StartTime"] == source_before["StartTime"]
    assert exchanged["FixedPrice"] == source_before["FixedPrice"]
    [source] = redshift.describe_reserved_nodes(ReservedNodeId=source_id)["ReservedNodes"]
    assert source["State"] == "retired"

    by_node = redshift.describe_reserved_node_exchange_status(ReservedNodeId=source_id)
    [status] = by_node["ReservedNodeExchangeStatusDetails"]
    assert status["Status"] == "SUCCEEDED" and status["SourceReservedNodeId"] == source_id
    assert (status["SourceReservedNodeType"], status["TargetReservedNodeType"]) == ("dc1.large", "dc2.large")
    assert status["SourceReservedNodeCount"] == status["TargetReservedNodeCount"] == 3
    by_request = redshift.describe_reserved_node_exchange_status(
        ReservedNodeExchangeRequestId=status["ReservedNodeExchangeRequestId"]
    )
    assert by_request["ReservedNodeExchangeStatusDetails"] == [status]

    # A replay is answered with the "already done" error; so is asking for offerings again.
    with pytest.raises(redshift.exceptions.ReservedNodeAlreadyMigratedFault) as caught:
        redshift.accept_reserved_node_exchange(
            ReservedNodeId=source_id, TargetReservedNodeOfferingId=offerings[0]["ReservedNodeOfferingId"]
        )
    assert _error(caught) == ("ReservedNodeAlreadyMigrated", 400)
    with pytest.raises(ClientError) as caught:
        redshift.get_reserved_node_exchange_offerings(ReservedNodeId=source_id)
    assert _error(caught) == ("ReservedNodeAlreadyMigrated", 400)

    truths = {t["id"]: t for t in sandbox.resources(service="redshift")}
    assert truths[source_id]["state"] == "retired"
    assert (
        truths[exchanged["ReservedNodeId"]]["created_by"]["operation"]
        == "redshift:AcceptReservedNodeExchange"
    )
    assert len(truths) == 2


def test_redshift_exchange_refusals(sandbox: SandboxControl, aws: Any) -> None:
    redshift = aws("redshift", account_id=ACCOUNT)
    dc2_id = _active_node(sandbox, redshift, "dc2.large")
    with pytest.raises(ClientError) as caught:
        redshift.get_reserved_node_exchange_offerings(ReservedNodeId=dc2_id)
    assert _error(caught) == ("UnsupportedOperation", 400)

    dc1_offering = _node_offering(redshift, "dc1.8xlarge", payment="No Upfront")
    pending = redshift.purchase_reserved_node_offering(
        ReservedNodeOfferingId=dc1_offering["ReservedNodeOfferingId"]
    )
    pending_id = pending["ReservedNode"]["ReservedNodeId"]
    with pytest.raises(ClientError) as caught:
        redshift.get_reserved_node_exchange_offerings(ReservedNodeId=pending_id)
    assert _error(caught) == ("InvalidReservedNodeState", 400)

    sandbox.advance_clock(60)
    [target] = redshift.get_reserved_node_exchange_offerings(ReservedNodeId=pending_id)[
        "ReservedNodeOfferings"
    ]
    assert target["NodeType"] == "dc2.8xlarge" and target["OfferingType"] == "No Upfront"
    wrong_size = _node_offering(redshift, "dc2.large", payment="No Upfront")["ReservedNodeOfferingId"]
    for bad_target in (wrong_size, "no-such-offering"):
        with pytest.raises(ClientError) as caught:
            redshift.accept_reserved_node_exchange(
                ReservedNodeId=pending_id, TargetReservedNodeOfferingId=bad_target
            )
        assert _error(caught) == ("ReservedNodeOfferingNotFound", 404)
    with pytest.raises(ClientError) as caught:
        redshift.accept_reserved_node_exchange(
            ReservedNodeId="no-such-node", TargetReservedNodeOfferingId=target["ReservedNodeOfferingId"]
        )
    assert _error(caught) == ("ReservedNodeNotFound", 404)
    with pytest.raises(ClientError) as caught:
        redshift.describe_reserved_node_exchange_status(ReservedNodeId=pending_id)
    assert _error(caught) == ("ReservedNodeExchangeNotFond", 404)
    with pytest.raises(ClientError) as caught:
        redshift.describe_reserved_node_exchange_status(ReservedNodeExchangeRequestId="no-such-request")
    assert _error(caught) == ("ReservedNodeExchangeNotFond", 404)
    assert redshift.describe_reserved_node_exchange_status()["ReservedNodeExchangeStatusDetails"] == []
    assert {t["state"] for t in sandbox.resources(service="redshift")} == {"active"}


def test_redshift_writes_denied_without_permission(sandbox: SandboxControl, aws: Any) -> None:
    redshift = aws("redshift", account_id="111122223333")
    source_id = _active_node(sandbox, redshift, "dc1.large")
    target = redshift.get_reserved_node_exchange_offerings(ReservedNodeId=source_id)["ReservedNodeOfferings"][
        0
    ]
    sandbox.set_iam(True, DESCRIBE_ONLY)
    redshift = aws("redshift", account_id="111122223333")
    calls = [
        lambda: redshift.purchase_reserved_node_offering(
            ReservedNodeOfferingId=target["ReservedNodeOfferingId"]
        ),
        lambda: redshift.get_reserved_node_exchange_offerings(ReservedNodeId=source_id),
        lambda: redshift.accept_reserved_node_exchange(
            ReservedNodeId=source_id, TargetReservedNodeOfferingId=target["ReservedNodeOfferingId"]
        ),
    ]
    for call in calls:
        with pytest.raises(ClientError) as caught:
            call()
        assert _error(caught) == ("AccessDenied", 403)
    assert [t["state"] for t in sandbox.resources(service="redshift")] == ["active"]


def test_redshift_seeded_dc1_node_can_be_exchanged(sandbox: SandboxControl, aws: Any) -> None:
    sandbox.seed(
        [
            {
                "kind": "redshift:reserved-node",
                "account_id": ACCOUNT,
                "region": "us-west-2",
                "node_type": "dc1.8xlarge",
                "offering_type": "All Upfront",
                "duration_years": 3,
                "node_count": 2,
                "start_days_ago": 700,
                "id": "seeded-dc1",
            }
        ]
    )
    redshift = aws("redshift", region="us-west-2", account_id=ACCOUNT)
    [target] = redshift.get_reserved_node_exchange_offerings(ReservedNodeId="seeded-dc1")[
        "ReservedNodeOfferings"
    ]
    exchanged = redshift.accept_reserved_node_exchange(
        ReservedNodeId="seeded-dc1", TargetReservedNodeOfferingId=target["ReservedNodeOfferingId"]
    )["ExchangedReservedNode"]
    assert (exchanged["NodeType"], exchanged["NodeCount"], exchanged["OfferingType"]) == (
        "dc2.8xlarge",
        2,
        "All Upfront",
    )
    # The exchanged node ends when the source's term would have ended.
    sandbox.advance_clock((3 * 365 - 700) * 86400 + 60)
    assert {n["State"] for n in redshift.describe_reserved_nodes()["ReservedNodes"]} == {"retired"}


def test_catalogue_file_can_stop_selling_dc1(tmp_path: Path) -> None:
    """A catalogue modelling today's AWS: DC1 offerings not for sale, DC1 nodes seeded and exchangeable."""
    from sandbox.services.redshift_reservations import default_offerings

    offerings = default_offerings()
    for offering in offerings:
        if offering["NodeType"].startswith("dc1."):
            offering["_Purchasable"] = False
    seed = {
        "kind": "redshift:reserved-node",
        "account_id": ACCOUNT,
        "region": "us-east-1",
        "node_type": "dc1.large",
        "start_days_ago": 10,
        "id": "kept-dc1",
    }
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"redshift_offerings": offerings, "existing_commitments": [seed]}))
    with SandboxServer(build_app(path)) as server:
        redshift = boto3.client(
            "redshift",
            region_name="us-east-1",
            endpoint_url=server.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        listed = redshift.describe_reserved_node_offerings()["ReservedNodeOfferings"]
        assert listed and not any(o["NodeType"].startswith("dc1.") for o in listed)
        dc1_id = next(o for o in offerings if o["NodeType"] == "dc1.large")["ReservedNodeOfferingId"]
        with pytest.raises(ClientError) as caught:
            redshift.purchase_reserved_node_offering(ReservedNodeOfferingId=dc1_id)
        assert _error(caught) == ("UnsupportedOperation", 400)
        # The default account of the "testing" key is not ACCOUNT: the seeded node is someone else's.
        with pytest.raises(ClientError) as caught:
            redshift.get_reserved_node_exchange_offerings(ReservedNodeId="kept-dc1")
        assert _error(caught) == ("ReservedNodeNotFound", 404)
        sts = boto3.client(
            "sts",
            region_name="us-east-1",
            endpoint_url=server.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        creds = sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/x", RoleSessionName="test")[
            "Credentials"
        ]
        owner = boto3.client(
            "redshift",
            region_name="us-east-1",
            endpoint_url=server.url,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
        [target] = owner.get_reserved_node_exchange_offerings(ReservedNodeId="kept-dc1")[
            "ReservedNodeOfferings"
        ]
        assert target["NodeType"] == "dc2.large"


def test_tour_section_runs(sandbox: SandboxControl) -> None:
    from examples.sandbox_tour import databases
    from examples.sandbox_tour.tour import Tour

    tour = Tour(sandbox.url)
    databases.tour(tour)
    assert set(tour.done) == {
        "rds:PurchaseReservedDbInstancesOffering",
        "elasticache:PurchaseReservedCacheNodesOffering",
        "redshift:PurchaseReservedNodeOffering",
        "redshift:GetReservedNodeExchangeOfferings",
        "redshift:AcceptReservedNodeExchange",
    }
    kinds = {(r["service"], r["type"], r["state"]) for r in sandbox.resources(account_id=databases.ACCOUNT)}
    assert ("redshift", "reserved-node", "retired") in kinds and (
        "redshift",
        "reserved-node",
        "active",
    ) in kinds
