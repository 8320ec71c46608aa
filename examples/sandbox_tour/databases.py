"""Tour section: RDS, ElastiCache and Redshift reservations, including a Redshift DC1 → DC2 exchange.

Written from the AWS API references of the three services: find an offering, buy it under an id we choose
(RDS and ElastiCache) or note what we bought (Redshift, which has no customer id), wait for payment, and
check the reservation with the describe calls. The Redshift section buys a DC1 reserved node (the sandbox's
default catalogue still sells DC1; see docs/sandbox.md) so that it can exchange it for DC2.
"""

from __future__ import annotations

from typing import Any

from examples.sandbox_tour.tour import Tour

ACCOUNT = "240000000001"
REGION = "us-east-1"
ONE_YEAR = 31_536_000


def _rds(t: Tour) -> None:
    rds = t.client("rds", REGION, account_id=ACCOUNT)
    [offering] = rds.describe_reserved_db_instances_offerings(
        DBInstanceClass="db.m5.large",
        ProductDescription="postgresql",
        Duration="1",
        OfferingType="No Upfront",
        MultiAZ=False,
    )["ReservedDBInstancesOfferings"]
    bought = rds.purchase_reserved_db_instances_offering(
        ReservedDBInstancesOfferingId=offering["ReservedDBInstancesOfferingId"],
        ReservedDBInstanceId="tour-rds-postgres",
        DBInstanceCount=2,
        Tags=[{"Key": "ManagedBy", "Value": "tour"}],
    )["ReservedDBInstance"]
    t.record("rds:PurchaseReservedDbInstancesOffering", f"{bought['ReservedDBInstanceId']} {bought['State']}")
    # Buying again under the same id is refused: that is how a retry knows the first call went through.
    try:
        rds.purchase_reserved_db_instances_offering(
            ReservedDBInstancesOfferingId=offering["ReservedDBInstancesOfferingId"],
            ReservedDBInstanceId="tour-rds-postgres",
        )
        raise AssertionError("a second purchase under the same ReservedDBInstanceId succeeded")
    except rds.exceptions.ReservedDBInstanceAlreadyExistsFault:
        pass


def _elasticache(t: Tour) -> None:
    elasticache = t.client("elasticache", REGION, account_id=ACCOUNT)
    [offering] = elasticache.describe_reserved_cache_nodes_offerings(
        CacheNodeType="cache.r5.large", ProductDescription="redis", Duration="1", OfferingType="All Upfront"
    )["ReservedCacheNodesOfferings"]
    bought = elasticache.purchase_reserved_cache_nodes_offering(
        ReservedCacheNodesOfferingId=offering["ReservedCacheNodesOfferingId"],
        ReservedCacheNodeId="tour-redis",
        CacheNodeCount=3,
        Tags=[{"Key": "ManagedBy", "Value": "tour"}],
    )["ReservedCacheNode"]
    t.record(
        "elasticache:PurchaseReservedCacheNodesOffering", f"{bought['ReservedCacheNodeId']} {bought['State']}"
    )


def _redshift_offering(redshift: Any, node_type: str) -> dict[str, Any]:
    for page in redshift.get_paginator("describe_reserved_node_offerings").paginate():
        for offering in page["ReservedNodeOfferings"]:
            if (
                offering["NodeType"] == node_type
                and offering["Duration"] == ONE_YEAR
                and offering["OfferingType"] == "Partial Upfront"
            ):
                return dict(offering)
    raise LookupError(f"no 1-year Partial Upfront offering for {node_type}")


def _redshift(t: Tour) -> None:
    redshift = t.client("redshift", REGION, account_id=ACCOUNT)
    offering = _redshift_offering(redshift, "dc1.large")
    node = redshift.purchase_reserved_node_offering(
        ReservedNodeOfferingId=offering["ReservedNodeOfferingId"], NodeCount=2
    )["ReservedNode"]
    t.record(
        "redshift:PurchaseReservedNodeOffering", f"{node['NodeCount']} x {node['NodeType']} {node['State']}"
    )

    t.let_time_pass(120)  # payment goes through: only an active node can be exchanged
    [node] = redshift.describe_reserved_nodes(ReservedNodeId=node["ReservedNodeId"])["ReservedNodes"]
    assert node["State"] == "active", node["State"]
    targets = redshift.get_reserved_node_exchange_offerings(ReservedNodeId=node["ReservedNodeId"])[
        "ReservedNodeOfferings"
    ]
    t.record("redshift:GetReservedNodeExchangeOfferings", ", ".join(o["NodeType"] for o in targets))

    exchanged = redshift.accept_reserved_node_exchange(
        ReservedNodeId=node["ReservedNodeId"],
        TargetReservedNodeOfferingId=targets[0]["ReservedNodeOfferingId"],
    )["ExchangedReservedNode"]
    [status] = redshift.describe_reserved_node_exchange_status(ReservedNodeId=node["ReservedNodeId"])[
        "ReservedNodeExchangeStatusDetails"
    ]
    got = f"{exchanged['NodeCount']} x {exchanged['NodeType']} {exchanged['State']}"
    t.record("redshift:AcceptReservedNodeExchange", f"{got}, exchange {status['Status']}")


def tour(t: Tour) -> None:
    _rds(t)
    _elasticache(t)
    _redshift(t)
