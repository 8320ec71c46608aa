"""Tour section: a Savings Plan, and Elasticsearch / OpenSearch reserved instances.

Written from the AWS documentation (Savings Plans API reference, Amazon OpenSearch Service "Reserved
Instances" guide): boto3 calls only.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from examples.sandbox_tour.tour import Tour

ACCOUNT = "250000000001"
YEAR_SECONDS = 31_536_000


def _savings_plan(t: Tour) -> None:
    # Savings Plans has one global endpoint, signed for us-east-1.
    sp = t.client("savingsplans", "us-east-1", account_id=ACCOUNT)
    [offering] = sp.describe_savings_plans_offerings(
        planTypes=["EC2Instance"],
        paymentOptions=["No Upfront"],
        durations=[YEAR_SECONDS],
        currencies=["USD"],
        filters=[{"name": "region", "values": ["us-east-1"]}, {"name": "instanceFamily", "values": ["m5"]}],
    )["searchResults"]
    # Persist your own clientToken: re-sending it after a crash returns the same plan instead of a second one.
    token = str(uuid.uuid4())
    plan_id = sp.create_savings_plan(
        savingsPlanOfferingId=offering["offeringId"],
        commitment="0.25",
        clientToken=token,
        tags={"purpose": "sandbox-tour"},
    )["savingsPlanId"]
    replay = sp.create_savings_plan(
        savingsPlanOfferingId=offering["offeringId"],
        commitment="0.25",
        clientToken=token,
        tags={"purpose": "sandbox-tour"},
    )["savingsPlanId"]
    assert replay == plan_id, "the same clientToken must return the same Savings Plan"
    t.let_time_pass(120)
    [plan] = sp.describe_savings_plans(savingsPlanIds=[plan_id])["savingsPlans"]
    t.record(
        "savingsplans:CreateSavingsPlan",
        f"{plan['savingsPlanType']} {plan['ec2InstanceFamily']} plan, {plan['commitment']} $/h, "
        f"is {plan['state']}",
    )


def _elasticsearch(t: Tour) -> None:
    es = t.client("es", "us-east-1", account_id=ACCOUNT)
    offerings = es.describe_reserved_elasticsearch_instance_offerings(MaxResults=100)[
        "ReservedElasticsearchInstanceOfferings"
    ]
    [offering] = [
        o
        for o in offerings
        if o["ElasticsearchInstanceType"] == "m5.large.elasticsearch"
        and o["PaymentOption"] == "NO_UPFRONT"
        and o["Duration"] == YEAR_SECONDS
    ]
    # ReservationName is the only customer-chosen label: use it as the purchase's intent id and look for it
    # in DescribeReservedElasticsearchInstances before buying again.
    first = es.purchase_reserved_elasticsearch_instance_offering(
        ReservedElasticsearchInstanceOfferingId=offering["ReservedElasticsearchInstanceOfferingId"],
        ReservationName="tour-es-reservation-1",
        InstanceCount=2,
    )
    t.record(
        "es:PurchaseReservedElasticsearchInstanceOffering",
        f"reserved 2 x m5.large.elasticsearch as {first['ReservationName']}",
    )
    # The role's es:PurchaseReservedElasticsearchInstance is an IAM action name only; the API it stands for is
    # PurchaseReservedElasticsearchInstanceOffering, so a second reservation shows it.
    second = es.purchase_reserved_elasticsearch_instance_offering(
        ReservedElasticsearchInstanceOfferingId=offering["ReservedElasticsearchInstanceOfferingId"],
        ReservationName="tour-es-reservation-2",
        InstanceCount=1,
    )
    t.let_time_pass(120)
    states = {
        r["ReservationName"]: r["State"]
        for r in es.describe_reserved_elasticsearch_instances()["ReservedElasticsearchInstances"]
    }
    t.record(
        "es:PurchaseReservedElasticsearchInstance",
        f"no API of that name; the action authorizes PurchaseReservedElasticsearchInstanceOffering: "
        f"{second['ReservationName']} is {states[second['ReservationName']]}",
    )


def _opensearch(t: Tour) -> None:
    # The OpenSearch API's purchase (IAM action es:PurchaseReservedInstanceOffering, not in the role's list).
    opensearch = t.client("opensearch", "us-east-1", account_id=ACCOUNT)
    offerings = opensearch.describe_reserved_instance_offerings(MaxResults=100)["ReservedInstanceOfferings"]
    [offering] = [
        o
        for o in offerings
        if o["InstanceType"] == "r5.large.search"
        and o["PaymentOption"] == "ALL_UPFRONT"
        and o["Duration"] == YEAR_SECONDS
    ]
    bought = opensearch.purchase_reserved_instance_offering(
        ReservedInstanceOfferingId=offering["ReservedInstanceOfferingId"],
        ReservationName="tour-opensearch-reservation",
        InstanceCount=1,
    )
    [reservation] = opensearch.describe_reserved_instances(ReservedInstanceId=bought["ReservedInstanceId"])[
        "ReservedInstances"
    ]
    print(
        f"  (opensearch PurchaseReservedInstanceOffering: {reservation['ReservationName']} is "
        f"{reservation['State']}, billing subscription {reservation['BillingSubscriptionId']})",
        flush=True,
    )


def tour(t: Tour) -> None:
    _savings_plan(t)
    _elasticsearch(t)
    _opensearch(t)
