"""Savings Plans and Elasticsearch/OpenSearch reservations, driven over HTTP with real boto3 clients."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox.control import SandboxControl

ACCOUNT = "111122223333"
OTHER_ACCOUNT = "444455556666"
YEAR = 31_536_000


def _error(caught: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


# --- Savings Plans: offerings -----
def _sp_offering(
    sp: Any, plan_type: str = "Compute", payment: str = "No Upfront", years: int = 1, **kw: Any
) -> dict:
    offerings = sp.describe_savings_plans_offerings(
        planTypes=[plan_type], paymentOptions=[payment], durations=[years * YEAR], currencies=["USD"], **kw
    )["searchResults"]
    assert len(offerings) == 1, offerings
    return offerings[0]


def test_savings_plans_offerings_filter_and_paginate(sandbox: SandboxControl, aws) -> None:
    sp = aws("savingsplans")
    compute = _sp_offering(sp)
    assert compute["planType"] == "Compute" and compute["durationSeconds"] == YEAR
    assert set(compute["productTypes"]) >= {"EC2", "Fargate", "Lambda"}
    assert compute["properties"] == []

    ec2 = _sp_offering(
        sp,
        "EC2Instance",
        "All Upfront",
        3,
        filters=[{"name": "region", "values": ["eu-west-1"]}, {"name": "instanceFamily", "values": ["r5"]}],
    )
    props = {p["name"]: p["value"] for p in ec2["properties"]}
    assert props == {"region": "eu-west-1", "instanceFamily": "r5"}
    assert ec2["durationSeconds"] == 3 * YEAR and ec2["paymentOption"] == "All Upfront"
    # The same attributes give the same id on every call (and every run).
    assert sp.describe_savings_plans_offerings(offeringIds=[ec2["offeringId"]])["searchResults"] == [ec2]

    every = sp.describe_savings_plans_offerings()["searchResults"]
    assert {o["planType"] for o in every} == {"Compute", "EC2Instance", "SageMaker", "Database"}
    # terms × payment options × (Compute + SageMaker + regions × families), and Database for 1 year No Upfront
    assert len(every) == 2 * 3 * (1 + 1 + 3 * 3) + 1
    by_usage = sp.describe_savings_plans_offerings(usageTypes=[ec2["usageType"]])["searchResults"]
    assert len(by_usage) == 3 and ec2 in by_usage  # one per region
    by_usage = sp.describe_savings_plans_offerings(
        usageTypes=[ec2["usageType"]], filters=[{"name": "region", "values": ["eu-west-1"]}]
    )["searchResults"]
    assert [o["offeringId"] for o in by_usage] == [ec2["offeringId"]]
    assert (
        sp.describe_savings_plans_offerings(productType="Fargate", planTypes=["EC2Instance"])["searchResults"]
        == []
    )

    seen, token = [], None
    while True:
        kwargs = {"maxResults": 7, **({"nextToken": token} if token else {})}
        page = sp.describe_savings_plans_offerings(**kwargs)
        seen += [o["offeringId"] for o in page["searchResults"]]
        token = page.get("nextToken")
        if not token:
            break
    assert seen == [o["offeringId"] for o in every]


def test_savings_plans_offering_rates(sandbox: SandboxControl, aws) -> None:
    sp = aws("savingsplans")
    ec2 = _sp_offering(
        sp,
        "EC2Instance",
        filters=[{"name": "region", "values": ["us-west-2"]}, {"name": "instanceFamily", "values": ["m5"]}],
    )
    rates = sp.describe_savings_plans_offering_rates(savingsPlanOfferingIds=[ec2["offeringId"]])[
        "searchResults"
    ]
    assert rates and all(r["savingsPlanOffering"]["offeringId"] == ec2["offeringId"] for r in rates)
    types = {p["value"] for r in rates for p in r["properties"] if p["name"] == "instanceType"}
    assert types == {"m5.large", "m5.xlarge"}
    assert all(float(r["rate"]) > 0 and r["unit"] == "Hrs" for r in rates)
    large = sp.describe_savings_plans_offering_rates(
        savingsPlanOfferingIds=[ec2["offeringId"]], filters=[{"name": "instanceType", "values": ["m5.large"]}]
    )["searchResults"]
    assert len(large) == 1
    # A 3-year plan is cheaper per hour than a 1-year plan of the same kind.
    compute_1y, compute_3y = _sp_offering(sp, years=1), _sp_offering(sp, years=3)
    rate = {}
    for offering in (compute_1y, compute_3y):
        [row] = sp.describe_savings_plans_offering_rates(
            savingsPlanOfferingIds=[offering["offeringId"]],
            filters=[
                {"name": "instanceType", "values": ["c5.large"]},
                {"name": "region", "values": ["us-east-1"]},
            ],
        )["searchResults"]
        rate[offering["durationSeconds"]] = float(row["rate"])
    assert rate[3 * YEAR] < rate[YEAR]


# --- Savings Plans: CreateSavingsPlan -----
def test_create_savings_plan_happy_path_and_lifecycle(sandbox: SandboxControl, aws) -> None:
    sp = aws("savingsplans", account_id=ACCOUNT)
    offering = _sp_offering(sp)
    plan_id = sp.create_savings_plan(
        savingsPlanOfferingId=offering["offeringId"],
        commitment="2.5",
        clientToken="plan-0001",
        tags={"commitd:plan": "p-1"},
    )["savingsPlanId"]
    [plan] = sp.describe_savings_plans(savingsPlanIds=[plan_id])["savingsPlans"]
    assert plan["state"] == "payment-pending"
    assert plan["savingsPlanArn"] == f"arn:aws:savingsplans::{ACCOUNT}:savingsplan/{plan_id}"
    assert plan["offeringId"] == offering["offeringId"] and plan["savingsPlanType"] == "Compute"
    assert plan["commitment"] == "2.5" and plan["upfrontPaymentAmount"] == "0"
    assert plan["recurringPaymentAmount"] == "2.5" and plan["termDurationInSeconds"] == YEAR
    assert plan["tags"] == {"commitd:plan": "p-1"} and plan["currency"] == "USD"
    start = datetime.fromisoformat(plan["start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(plan["end"].replace("Z", "+00:00"))
    returnable = datetime.fromisoformat(plan["returnableUntil"].replace("Z", "+00:00"))
    assert end - start == timedelta(seconds=YEAR) and returnable - start == timedelta(days=7)
    assert "region" not in plan and "ec2InstanceFamily" not in plan  # Compute plans apply everywhere

    [truth] = sandbox.resources(account_id=ACCOUNT)
    assert (truth["service"], truth["type"], truth["id"], truth["state"]) == (
        "savingsplans",
        "savings-plan",
        plan_id,
        "payment-pending",
    )
    assert truth["created_by"]["operation"] == "savingsplans:CreateSavingsPlan"
    assert truth["created_by"]["token"] == "plan-0001"

    sandbox.advance_clock(60)
    assert sp.describe_savings_plans(states=["active"])["savingsPlans"][0]["savingsPlanId"] == plan_id
    assert sp.describe_savings_plans(states=["payment-pending"])["savingsPlans"] == []
    sandbox.advance_clock(YEAR)
    assert sp.describe_savings_plans()["savingsPlans"][0]["state"] == "retired"
    assert sandbox.resources(account_id=ACCOUNT)[0]["state"] == "retired"


def test_savings_plans_are_global_and_per_account(sandbox: SandboxControl, aws) -> None:
    sp = aws("savingsplans", account_id=ACCOUNT)
    plan_id = sp.create_savings_plan(savingsPlanOfferingId=_sp_offering(sp)["offeringId"], commitment="1")[
        "savingsPlanId"
    ]
    elsewhere = aws("savingsplans", region="eu-west-1", account_id=ACCOUNT)
    assert [p["savingsPlanId"] for p in elsewhere.describe_savings_plans()["savingsPlans"]] == [plan_id]
    assert aws("savingsplans", account_id=OTHER_ACCOUNT).describe_savings_plans()["savingsPlans"] == []
    assert sandbox.resources(account_id=ACCOUNT)[0]["region"] == "us-east-1"


def test_ec2_instance_plan_partial_upfront_and_describe_filters(sandbox: SandboxControl, aws) -> None:
    sp = aws("savingsplans", account_id=ACCOUNT)
    offering = _sp_offering(
        sp,
        "EC2Instance",
        "Partial Upfront",
        1,
        filters=[{"name": "region", "values": ["us-west-2"]}, {"name": "instanceFamily", "values": ["c5"]}],
    )
    # 1.2 $/h over 8760 h = 10512 $; half of it up front.
    plan_id = sp.create_savings_plan(
        savingsPlanOfferingId=offering["offeringId"], commitment="1.2", upfrontPaymentAmount="5256"
    )["savingsPlanId"]
    compute_id = sp.create_savings_plan(
        savingsPlanOfferingId=_sp_offering(sp)["offeringId"], commitment="0.5"
    )["savingsPlanId"]
    [plan] = sp.describe_savings_plans(savingsPlanIds=[plan_id])["savingsPlans"]
    assert (plan["region"], plan["ec2InstanceFamily"], plan["paymentOption"]) == (
        "us-west-2",
        "c5",
        "Partial Upfront",
    )
    assert plan["upfrontPaymentAmount"] == "5256" and plan["recurringPaymentAmount"] == "0.6"

    def ids(**kwargs: Any) -> list[str]:
        return [p["savingsPlanId"] for p in sp.describe_savings_plans(**kwargs)["savingsPlans"]]

    assert ids(filters=[{"name": "region", "values": ["us-west-2"]}]) == [plan_id]
    assert ids(filters=[{"name": "ec2-instance-family", "values": ["c5"]}]) == [plan_id]
    assert ids(filters=[{"name": "savings-plan-type", "values": ["Compute"]}]) == [compute_id]
    assert ids(filters=[{"name": "payment-option", "values": ["Partial Upfront"]}]) == [plan_id]
    assert ids(filters=[{"name": "commitment", "values": ["0.50"]}]) == [compute_id]
    assert ids(filters=[{"name": "upfront", "values": ["5256"]}]) == [plan_id]
    assert ids(filters=[{"name": "term", "values": [str(YEAR)]}]) == [plan_id, compute_id]
    assert ids(filters=[{"name": "start", "values": [plan["start"]]}]) == [plan_id]
    assert ids(savingsPlanArns=[plan["savingsPlanArn"]]) == [plan_id]
    assert ids(maxResults=1) == [plan_id]


@pytest.mark.parametrize(
    ("payment", "commitment", "upfront", "message"),
    [
        ("No Upfront", "1.123456", None, "decimal places"),
        ("No Upfront", "0.0009", None, "between 0.001"),
        ("No Upfront", "1000000.5", None, "between 0.001"),
        ("No Upfront", "abc", None, "positive decimal"),
        ("No Upfront", "1", "100", "only for Partial Upfront"),
        ("All Upfront", "1", "8760", "only for Partial Upfront"),
        ("Partial Upfront", "1", "4379", "between 50%"),  # total 8760: 50% is 4380
        ("Partial Upfront", "1", "8700", "between 50%"),  # 99% is 8672.4
        ("Partial Upfront", "1", "5000.5", "whole number"),
    ],
)
def test_create_savings_plan_validation(
    sandbox: SandboxControl, aws, payment: str, commitment: str, upfront: str | None, message: str
) -> None:
    sp = aws("savingsplans", account_id=ACCOUNT)
    kwargs: dict[str, Any] = {
        "savingsPlanOfferingId": _sp_offering(sp, payment=payment)["offeringId"],
        "commitment": commitment,
    }
    if upfront is not None:
        kwargs["upfrontPaymentAmount"] = upfront
    with pytest.raises(sp.exceptions.ValidationException) as caught:
        sp.create_savings_plan(**kwargs)
    assert _error(caught) == ("ValidationException", 400)
    assert message in caught.value.response["Error"]["Message"]
    assert sandbox.resources() == []


def test_create_savings_plan_client_token(sandbox: SandboxControl, aws) -> None:
    sp = aws("savingsplans", account_id=ACCOUNT)
    offering_id = _sp_offering(sp)["offeringId"]
    first = sp.create_savings_plan(savingsPlanOfferingId=offering_id, commitment="3", clientToken="intent-42")
    again = sp.create_savings_plan(savingsPlanOfferingId=offering_id, commitment="3", clientToken="intent-42")
    assert first["savingsPlanId"] == again["savingsPlanId"]
    assert len(sandbox.resources(service="savingsplans")) == 1
    with pytest.raises(sp.exceptions.ValidationException) as caught:
        sp.create_savings_plan(savingsPlanOfferingId=offering_id, commitment="4", clientToken="intent-42")
    assert "client token" in caught.value.response["Error"]["Message"]
    # The token belongs to the account: another account may use the same string.
    other = aws("savingsplans", account_id=OTHER_ACCOUNT)
    assert other.create_savings_plan(
        savingsPlanOfferingId=offering_id, commitment="4", clientToken="intent-42"
    )
    assert len(sandbox.resources(service="savingsplans")) == 2


def test_create_savings_plan_survives_a_dropped_response(sandbox: SandboxControl, aws) -> None:
    """The plan is created, then the connection drops: botocore retries with the clientToken it filled in
    once per call, so the retry returns the same plan and nothing is bought twice."""
    sp = aws("savingsplans", account_id=ACCOUNT)
    offering_id = _sp_offering(sp)["offeringId"]
    dropped_before = sandbox.faults()["fired"].get("commit_then_drop", 0)
    sandbox.add_fault("savingsplans:CreateSavingsPlan", "commit_then_drop", count=1)
    plan_id = sp.create_savings_plan(savingsPlanOfferingId=offering_id, commitment="1")["savingsPlanId"]
    assert [r["id"] for r in sandbox.resources(service="savingsplans")] == [plan_id]
    assert sandbox.faults()["fired"]["commit_then_drop"] == dropped_before + 1


def test_create_savings_plan_queued_until_purchase_time(sandbox: SandboxControl, aws) -> None:
    sp = aws("savingsplans", account_id=ACCOUNT)
    when = datetime.now(UTC) + timedelta(days=2)
    plan_id = sp.create_savings_plan(
        savingsPlanOfferingId=_sp_offering(sp)["offeringId"], commitment="1", purchaseTime=when
    )["savingsPlanId"]
    [plan] = sp.describe_savings_plans(states=["queued"])["savingsPlans"]
    assert plan["savingsPlanId"] == plan_id
    assert abs(datetime.fromisoformat(plan["start"].replace("Z", "+00:00")) - when) < timedelta(seconds=1)
    assert sandbox.resources(account_id=ACCOUNT)[0]["state"] == "queued"
    sandbox.advance_clock(2 * 86400 + 1)
    assert sp.describe_savings_plans()["savingsPlans"][0]["state"] == "payment-pending"
    sandbox.advance_clock(60)
    assert sp.describe_savings_plans()["savingsPlans"][0]["state"] == "active"


def test_create_savings_plan_terminal_errors(sandbox: SandboxControl, aws) -> None:
    sp = aws("savingsplans", account_id=ACCOUNT)
    with pytest.raises(sp.exceptions.ResourceNotFoundException) as caught:
        sp.create_savings_plan(savingsPlanOfferingId="00000000-0000-0000-0000-000000000000", commitment="1")
    assert _error(caught) == ("ResourceNotFoundException", 404)

    offering_id = _sp_offering(sp)["offeringId"]
    for _ in range(50):
        sp.create_savings_plan(savingsPlanOfferingId=offering_id, commitment="0.001")
    with pytest.raises(sp.exceptions.ServiceQuotaExceededException) as caught:
        sp.create_savings_plan(savingsPlanOfferingId=offering_id, commitment="0.001")
    assert _error(caught) == ("ServiceQuotaExceededException", 402)
    assert len(sandbox.resources(account_id=ACCOUNT)) == 50


def test_create_savings_plan_denied_under_iam(sandbox: SandboxControl, aws) -> None:
    sandbox.set_iam(
        True, {"Statement": [{"Effect": "Allow", "Action": "savingsplans:Describe*", "Resource": "*"}]}
    )
    sp = aws("savingsplans", account_id=ACCOUNT)
    offering_id = _sp_offering(sp)["offeringId"]
    with pytest.raises(ClientError) as caught:
        sp.create_savings_plan(savingsPlanOfferingId=offering_id, commitment="1")
    assert _error(caught) == ("AccessDeniedException", 403)
    assert sandbox.resources() == []


def test_savings_plan_tags(sandbox: SandboxControl, aws) -> None:
    sp = aws("savingsplans", account_id=ACCOUNT)
    plan_id = sp.create_savings_plan(
        savingsPlanOfferingId=_sp_offering(sp)["offeringId"], commitment="1", tags={"a": "1"}
    )["savingsPlanId"]
    arn = sp.describe_savings_plans()["savingsPlans"][0]["savingsPlanArn"]
    sp.tag_resource(resourceArn=arn, tags={"b": "2"})
    sp.untag_resource(resourceArn=arn, tagKeys=["a"])
    assert sp.list_tags_for_resource(resourceArn=arn)["tags"] == {"b": "2"}
    assert sp.describe_savings_plans(savingsPlanIds=[plan_id])["savingsPlans"][0]["tags"] == {"b": "2"}
    other = aws("savingsplans", account_id=OTHER_ACCOUNT)
    with pytest.raises(other.exceptions.ResourceNotFoundException):
        other.list_tags_for_resource(resourceArn=arn)


def test_seeded_savings_plan(sandbox: SandboxControl, aws) -> None:
    sandbox.seed(
        [
            {
                "kind": "savingsplans:savings-plan",
                "account_id": ACCOUNT,
                "plan_type": "EC2Instance",
                "payment_option": "All Upfront",
                "duration_years": 1,
                "region": "us-east-1",
                "instance_family": "m5",
                "commitment": "0.75",
                "start_days_ago": 300,
                "tags": {"owner": "finance"},
            }
        ]
    )
    [plan] = aws("savingsplans", account_id=ACCOUNT).describe_savings_plans()["savingsPlans"]
    assert plan["state"] == "active" and plan["upfrontPaymentAmount"] == "6570"
    assert plan["ec2InstanceFamily"] == "m5" and plan["tags"] == {"owner": "finance"}
    sandbox.advance_clock(70 * 86400)
    assert sandbox.resources(account_id=ACCOUNT)[0]["state"] == "retired"


# --- Elasticsearch and OpenSearch reserved instances -----
@dataclass(frozen=True)
class SearchApi:
    service: str
    resource_type: str
    suffix: str
    offering_id: str
    instance_type: str
    reservation_id: str
    instance_count: str
    offerings_list: str
    reservations_list: str
    describe_offerings: str
    purchase: str
    describe: str


ES = SearchApi(
    "es",
    "reserved-elasticsearch-instance",
    ".elasticsearch",
    "ReservedElasticsearchInstanceOfferingId",
    "ElasticsearchInstanceType",
    "ReservedElasticsearchInstanceId",
    "ElasticsearchInstanceCount",
    "ReservedElasticsearchInstanceOfferings",
    "ReservedElasticsearchInstances",
    "describe_reserved_elasticsearch_instance_offerings",
    "purchase_reserved_elasticsearch_instance_offering",
    "describe_reserved_elasticsearch_instances",
)
OPENSEARCH = SearchApi(
    "opensearch",
    "reserved-instance",
    ".search",
    "ReservedInstanceOfferingId",
    "InstanceType",
    "ReservedInstanceId",
    "InstanceCount",
    "ReservedInstanceOfferings",
    "ReservedInstances",
    "describe_reserved_instance_offerings",
    "purchase_reserved_instance_offering",
    "describe_reserved_instances",
)
APIS = pytest.mark.parametrize("api", [ES, OPENSEARCH], ids=["es", "opensearch"])


def _offerings(client: Any, api: SearchApi, **kwargs: Any) -> list[dict[str, Any]]:
    return getattr(client, api.describe_offerings)(**kwargs)[api.offerings_list]


def _search_offering(
    client: Any, api: SearchApi, base: str = "m5.large", payment: str = "NO_UPFRONT", years: int = 1
) -> dict[str, Any]:
    matches = [
        o
        for o in _offerings(client, api, MaxResults=100)
        if o[api.instance_type] == base + api.suffix
        and o["PaymentOption"] == payment
        and o["Duration"] == years * YEAR
    ]
    assert len(matches) == 1
    return matches[0]


def _buy(client: Any, api: SearchApi, offering_id: str, name: str, count: int = 1) -> dict[str, Any]:
    return getattr(client, api.purchase)(
        **{api.offering_id: offering_id, "ReservationName": name, "InstanceCount": count}
    )


def _reservations(client: Any, api: SearchApi, **kwargs: Any) -> list[dict[str, Any]]:
    return getattr(client, api.describe)(**kwargs)[api.reservations_list]


@APIS
def test_search_offerings_catalogue(sandbox: SandboxControl, aws, api: SearchApi) -> None:
    client = aws(api.service)
    every = _offerings(client, api, MaxResults=100)
    assert len(every) == 3 * 2 * 3  # instance types × terms × payment options in this region
    assert {o[api.instance_type] for o in every} == {
        f"{t}{api.suffix}" for t in ("m5.large", "r5.large", "c5.large")
    }
    all_upfront = _search_offering(client, api, "r5.large", "ALL_UPFRONT", 3)
    assert all_upfront["FixedPrice"] > 0 and all_upfront["RecurringCharges"] == []
    partial = _search_offering(client, api, "r5.large", "PARTIAL_UPFRONT", 3)
    assert (
        partial["FixedPrice"] > 0 and partial["RecurringCharges"][0]["RecurringChargeFrequency"] == "Hourly"
    )
    only = _offerings(client, api, **{api.offering_id: all_upfront[api.offering_id]})
    assert only == [all_upfront]
    page = getattr(client, api.describe_offerings)(MaxResults=5)
    assert len(page[api.offerings_list]) == 5 and page["NextToken"]
    rest = getattr(client, api.describe_offerings)(MaxResults=100, NextToken=page["NextToken"])
    assert page[api.offerings_list] + rest[api.offerings_list] == every
    with pytest.raises(client.exceptions.ResourceNotFoundException) as caught:
        _offerings(client, api, **{api.offering_id: "00000000-0000-0000-0000-000000000000"})
    assert _error(caught) == ("ResourceNotFoundException", 409)
    # Offerings are regional: another region has its own ids.
    west = _search_offering(aws(api.service, region="eu-west-1"), api, "r5.large", "ALL_UPFRONT", 3)
    assert west[api.offering_id] != all_upfront[api.offering_id]


@APIS
def test_search_purchase_happy_path(sandbox: SandboxControl, aws, api: SearchApi) -> None:
    client = aws(api.service, account_id=ACCOUNT)
    offering = _search_offering(client, api, "c5.large", "PARTIAL_UPFRONT", 1)
    bought = _buy(client, api, offering[api.offering_id], "commitd-plan-7", count=3)
    assert bought["ReservationName"] == "commitd-plan-7"
    reservation_id = bought[api.reservation_id]
    [reservation] = _reservations(client, api, **{api.reservation_id: reservation_id})
    assert reservation["State"] == "payment-pending" and reservation[api.instance_count] == 3
    assert reservation[api.offering_id] == offering[api.offering_id]
    assert reservation[api.instance_type] == "c5.large" + api.suffix
    assert reservation["FixedPrice"] == offering["FixedPrice"] and reservation["Duration"] == YEAR
    assert (
        reservation["PaymentOption"] == "PARTIAL_UPFRONT"
        and reservation["ReservationName"] == "commitd-plan-7"
    )
    assert isinstance(reservation["StartTime"], datetime)
    if api is OPENSEARCH:
        assert isinstance(reservation["BillingSubscriptionId"], int)

    [truth] = sandbox.resources(account_id=ACCOUNT)
    assert (truth["service"], truth["type"], truth["id"], truth["region"]) == (
        api.service,
        api.resource_type,
        reservation_id,
        "us-east-1",
    )
    assert truth["created_by"]["token"] == "commitd-plan-7"
    expected_action = (
        "es:PurchaseReservedElasticsearchInstanceOffering"
        if api is ES
        else "es:PurchaseReservedInstanceOffering"
    )
    assert truth["created_by"]["operation"] == expected_action

    sandbox.advance_clock(60)
    assert _reservations(client, api)[0]["State"] == "active"
    # Regional and per account.
    assert _reservations(aws(api.service, region="us-west-2", account_id=ACCOUNT), api) == []
    assert _reservations(aws(api.service, account_id=OTHER_ACCOUNT), api) == []
    sandbox.advance_clock(YEAR)
    assert _reservations(client, api)[0]["State"] == "retired"


@APIS
def test_search_reservation_name_is_unique_per_account(sandbox: SandboxControl, aws, api: SearchApi) -> None:
    client = aws(api.service, account_id=ACCOUNT)
    offering_id = _search_offering(client, api)[api.offering_id]
    _buy(client, api, offering_id, "intent-0001")
    with pytest.raises(client.exceptions.ResourceAlreadyExistsException) as caught:
        _buy(client, api, offering_id, "intent-0001")
    assert _error(caught) == ("ResourceAlreadyExistsException", 409)
    # Also in another region of the same account (a sandbox choice, see docs/sandbox.md) ...
    west = aws(api.service, region="eu-west-1", account_id=ACCOUNT)
    with pytest.raises(west.exceptions.ResourceAlreadyExistsException):
        _buy(west, api, _search_offering(west, api)[api.offering_id], "intent-0001")
    # ... but not in another account.
    other = aws(api.service, account_id=OTHER_ACCOUNT)
    _buy(other, api, offering_id, "intent-0001")
    assert len(sandbox.resources(account_id=ACCOUNT)) == 1
    assert len(sandbox.resources(account_id=OTHER_ACCOUNT)) == 1


@APIS
def test_search_purchase_terminal_errors(sandbox: SandboxControl, aws, api: SearchApi) -> None:
    client = aws(api.service, account_id=ACCOUNT, retries=1)
    with pytest.raises(client.exceptions.ResourceNotFoundException) as caught:
        _buy(client, api, "00000000-0000-0000-0000-000000000000", "unknown-offering")
    assert _error(caught) == ("ResourceNotFoundException", 409)
    offering_id = _search_offering(client, api)[api.offering_id]
    with pytest.raises(client.exceptions.ValidationException) as caught:
        _buy(client, api, offering_id, "x" * 65)
    assert _error(caught) == ("ValidationException", 400)
    _buy(client, api, offering_id, "first-ninety", count=90)
    with pytest.raises(client.exceptions.LimitExceededException) as caught:
        _buy(client, api, offering_id, "eleven-more", count=11)
    assert _error(caught) == ("LimitExceededException", 409)
    with pytest.raises(client.exceptions.ResourceNotFoundException) as caught:
        _reservations(client, api, **{api.reservation_id: "00000000-0000-0000-0000-000000000000"})
    assert _error(caught) == ("ResourceNotFoundException", 409)
    assert len(sandbox.resources(account_id=ACCOUNT)) == 1


@APIS
def test_search_purchase_denied_under_iam(sandbox: SandboxControl, aws, api: SearchApi) -> None:
    sandbox.set_iam(True, {"Statement": [{"Effect": "Allow", "Action": "es:Describe*", "Resource": "*"}]})
    client = aws(api.service, account_id=ACCOUNT)
    offering_id = _search_offering(client, api)[api.offering_id]
    with pytest.raises(ClientError) as caught:
        _buy(client, api, offering_id, "denied-one")
    assert _error(caught) == ("AccessDeniedException", 403)
    assert sandbox.resources() == []


def test_production_role_grants_the_elasticsearch_purchase_but_not_the_opensearch_one(
    sandbox: SandboxControl, aws
) -> None:
    """The role grants es:PurchaseReservedElasticsearchInstanceOffering only; OpenSearch's purchase API is
    authorized by es:PurchaseReservedInstanceOffering, so it is denied."""
    sandbox.set_iam(
        True,
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["es:Describe*", "es:PurchaseReservedElasticsearchInstanceOffering"],
                    "Resource": "*",
                }
            ]
        },
    )
    es = aws("es", account_id=ACCOUNT)
    _buy(es, ES, _search_offering(es, ES)[ES.offering_id], "allowed-es")
    opensearch = aws("opensearch", account_id=ACCOUNT)
    with pytest.raises(ClientError) as caught:
        _buy(
            opensearch,
            OPENSEARCH,
            _search_offering(opensearch, OPENSEARCH)[OPENSEARCH.offering_id],
            "denied-os",
        )
    assert _error(caught) == ("AccessDeniedException", 403)
    assert "es:PurchaseReservedInstanceOffering" in caught.value.response["Error"]["Message"]
    assert [r["service"] for r in sandbox.resources(account_id=ACCOUNT)] == ["es"]


@pytest.mark.parametrize(
    ("kind", "api"),
    [("es:reserved-elasticsearch-instance", ES), ("opensearch:reserved-instance", OPENSEARCH)],
    ids=["es", "opensearch"],
)
def test_seeded_search_reservations(sandbox: SandboxControl, aws, kind: str, api: SearchApi) -> None:
    sandbox.seed(
        [
            {
                "kind": kind,
                "account_id": ACCOUNT,
                "region": "us-west-2",
                "instance_type": "r5.large",
                "payment_option": "ALL_UPFRONT",
                "duration_years": 1,
                "instance_count": 2,
                "reservation_name": "legacy-search",
                "start_days_ago": 350,
            }
        ]
    )
    client = aws(api.service, region="us-west-2", account_id=ACCOUNT)
    [reservation] = _reservations(client, api)
    assert reservation["State"] == "active" and reservation[api.instance_count] == 2
    assert reservation[api.instance_type] == "r5.large" + api.suffix
    with pytest.raises(client.exceptions.ResourceAlreadyExistsException):
        _buy(client, api, _search_offering(client, api)[api.offering_id], "legacy-search")
    sandbox.advance_clock(20 * 86400)
    assert _reservations(client, api)[0]["State"] == "retired"
