"""EC2 Reserved Instances after purchase: modification, convertible exchange, Marketplace listings and tags.

Every call goes over HTTP through real boto3 clients whose responses are checked against botocore's output shapes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox.control import SandboxControl

ACCOUNT = "111122223333"
REGION = "us-east-1"
STANDARD_ID = "11111111-1111-4111-8111-111111111111"
CONVERTIBLE_ID = "22222222-2222-4222-8222-222222222222"
DESCRIBE_ONLY = {"Statement": [{"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"}]}
MODIFICATION_SECONDS = 300  # sandbox.services.ec2_ri_lifecycle.MODIFICATION_SECONDS


def _seed_ri(sandbox: SandboxControl, ri_id: str, **overrides: Any) -> None:
    entry = {
        "kind": "ec2:reserved-instances",
        "account_id": ACCOUNT,
        "region": REGION,
        "id": ri_id,
        "instance_type": "m5.large",
        "offering_class": "standard",
        "offering_type": "All Upfront",
        "duration_years": 1,
        "instance_count": 4,
        "start_days_ago": 40,
    }
    entry.update(overrides)
    sandbox.seed([entry])


@pytest.fixture
def ec2(sandbox: SandboxControl, aws) -> Any:
    _seed_ri(sandbox, STANDARD_ID)
    _seed_ri(sandbox, CONVERTIBLE_ID, offering_class="convertible", offering_type="No Upfront", instance_count=2)
    return aws("ec2", account_id=ACCOUNT)


def _error(caught: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def _ri(ec2: Any, ri_id: str) -> dict[str, Any]:
    return ec2.describe_reserved_instances(ReservedInstancesIds=[ri_id])["ReservedInstances"][0]


def _convertible_offering(ec2: Any, instance_type: str, offering_type: str = "No Upfront", years: int = 1) -> str:
    offerings = ec2.describe_reserved_instances_offerings(
        InstanceType=instance_type,
        OfferingClass="convertible",
        OfferingType=offering_type,
        ProductDescription="Linux/UNIX",
        IncludeMarketplace=False,
        Filters=[{"Name": "duration", "Values": [str(years * 31536000)]}],
    )["ReservedInstancesOfferings"]
    assert len(offerings) == 1
    return str(offerings[0]["ReservedInstancesOfferingId"])


def _standard_offering(ec2: Any) -> str:
    offerings = ec2.describe_reserved_instances_offerings(
        InstanceType="c5.large",
        OfferingClass="standard",
        OfferingType="All Upfront",
        ProductDescription="Linux/UNIX",
        IncludeMarketplace=False,
        Filters=[{"Name": "duration", "Values": ["31536000"]}, {"Name": "scope", "Values": ["Region"]}],
    )["ReservedInstancesOfferings"]
    return str(offerings[0]["ReservedInstancesOfferingId"])


def _deny_writes(sandbox: SandboxControl, aws) -> Any:
    sandbox.set_iam(True, DESCRIBE_ONLY)
    return aws("ec2", account_id=ACCOUNT)


# --- ModifyReservedInstances -------------------------------------------------------------------------------------
def _split_into_xlarge(ec2: Any, token: str = "mod-1") -> str:
    return str(
        ec2.modify_reserved_instances(
            ClientToken=token,
            ReservedInstancesIds=[STANDARD_ID],
            TargetConfigurations=[{"InstanceCount": 2, "InstanceType": "m5.xlarge"}],
        )["ReservedInstancesModificationId"]
    )


def test_modify_processes_then_retires_the_source_and_creates_new_ris(sandbox: SandboxControl, ec2) -> None:
    source_end = _ri(ec2, STANDARD_ID)["End"]
    mod_id = _split_into_xlarge(ec2)
    assert mod_id.startswith("rimod-")
    [pending] = ec2.describe_reserved_instances_modifications(Filters=[{"Name": "client-token", "Values": ["mod-1"]}])[
        "ReservedInstancesModifications"
    ]
    assert pending["ReservedInstancesModificationId"] == mod_id
    assert pending["Status"] == "processing" and pending["ClientToken"] == "mod-1"
    assert pending["ReservedInstancesIds"] == [{"ReservedInstancesId": STANDARD_ID}]
    assert "ReservedInstancesId" not in pending["ModificationResults"][0]
    assert _ri(ec2, STANDARD_ID)["State"] == "active"  # the source keeps working until fulfilment
    [truth] = sandbox.resources(type="reserved-instances-modification")
    assert truth["id"] == mod_id and truth["state"] == "processing"
    assert truth["created_by"] == {**truth["created_by"], "operation": "ec2:ModifyReservedInstances", "token": "mod-1"}

    sandbox.advance_clock(MODIFICATION_SECONDS + 1)
    [done] = ec2.describe_reserved_instances_modifications(ReservedInstancesModificationIds=[mod_id])[
        "ReservedInstancesModifications"
    ]
    assert done["Status"] == "fulfilled"
    [result] = done["ModificationResults"]
    assert result["TargetConfiguration"]["InstanceType"] == "m5.xlarge"
    assert result["TargetConfiguration"]["InstanceCount"] == 2
    new = _ri(ec2, result["ReservedInstancesId"])
    assert (new["State"], new["InstanceType"], new["InstanceCount"]) == ("active", "m5.xlarge", 2)
    assert new["End"] == source_end and new["OfferingClass"] == "standard"
    assert _ri(ec2, STANDARD_ID)["State"] == "retired"
    truth_by_id = {r["id"]: r for r in sandbox.resources(account_id=ACCOUNT)}
    assert truth_by_id[STANDARD_ID]["state"] == "retired"
    assert truth_by_id[mod_id]["state"] == "fulfilled"
    assert truth_by_id[new["ReservedInstancesId"]]["created_by"]["operation"] == "ec2:ModifyReservedInstances"
    assert truth_by_id[new["ReservedInstancesId"]]["created_by"]["token"] == "mod-1"
    statuses = ec2.describe_reserved_instances_modifications(Filters=[{"Name": "status", "Values": ["fulfilled"]}])
    assert [m["ReservedInstancesModificationId"] for m in statuses["ReservedInstancesModifications"]] == [mod_id]


def test_modify_is_idempotent_on_its_client_token(sandbox: SandboxControl, ec2) -> None:
    first = _split_into_xlarge(ec2, "same-token")
    assert _split_into_xlarge(ec2, "same-token") == first
    assert len(sandbox.resources(type="reserved-instances-modification")) == 1
    # The same token still answers the original result after the sources were retired.
    sandbox.advance_clock(MODIFICATION_SECONDS + 1)
    assert _split_into_xlarge(ec2, "same-token") == first
    with pytest.raises(ClientError) as caught:
        ec2.modify_reserved_instances(
            ClientToken="same-token",
            ReservedInstancesIds=[STANDARD_ID],
            TargetConfigurations=[{"InstanceCount": 4, "AvailabilityZone": "us-east-1a"}],
        )
    assert _error(caught)[0] == "IdempotentParameterMismatch"
    assert len(sandbox.resources(type="reserved-instances-modification")) == 1


def test_modify_refusals(sandbox: SandboxControl, ec2) -> None:
    cases = [
        ({"InstanceCount": 3, "InstanceType": "m5.xlarge"}, "InvalidParameterValue"),  # footprint 24 != 16
        ({"InstanceCount": 4, "InstanceType": "c5.large"}, "InvalidParameterValue"),  # another family
        ({"InstanceCount": 4, "Scope": "Region", "AvailabilityZone": "us-east-1a"}, "InvalidParameterCombination"),
        ({"InstanceCount": 4, "AvailabilityZone": "eu-west-1a"}, "InvalidParameterValue"),
        ({"InstanceCount": 4}, "InvalidParameterValue"),  # changes nothing
    ]
    for target, code in cases:
        with pytest.raises(ClientError) as caught:
            ec2.modify_reserved_instances(ReservedInstancesIds=[STANDARD_ID], TargetConfigurations=[target])
        assert _error(caught)[:2] == (code, 400), target
    with pytest.raises(ClientError) as caught:
        ec2.modify_reserved_instances(
            ReservedInstancesIds=["33333333-3333-4333-8333-333333333333"],
            TargetConfigurations=[{"InstanceCount": 1}],
        )
    assert _error(caught)[0] == "InvalidReservedInstancesId"
    assert sandbox.resources(type="reserved-instances-modification") == []

    _split_into_xlarge(ec2, "first")
    with pytest.raises(ClientError) as caught:  # a modification is already pending
        ec2.modify_reserved_instances(
            ClientToken="second",
            ReservedInstancesIds=[STANDARD_ID],
            TargetConfigurations=[{"InstanceCount": 4, "AvailabilityZone": "us-east-1b"}],
        )
    assert _error(caught)[0] == "IncorrectState"
    sandbox.advance_clock(MODIFICATION_SECONDS + 1)
    with pytest.raises(ClientError) as caught:  # the source is retired by now
        _split_into_xlarge(ec2, "third")
    assert _error(caught)[0] == "InvalidReservedInstancesId"


def test_modify_to_a_zone_and_back_to_region(sandbox: SandboxControl, ec2) -> None:
    mod_id = ec2.modify_reserved_instances(
        ReservedInstancesIds=[STANDARD_ID],
        TargetConfigurations=[
            {"InstanceCount": 2, "AvailabilityZone": "us-east-1a", "Scope": "Availability Zone"},
            {"InstanceCount": 2, "Scope": "Region"},
        ],
    )["ReservedInstancesModificationId"]
    sandbox.advance_clock(MODIFICATION_SECONDS + 1)
    [mod] = ec2.describe_reserved_instances_modifications(
        Filters=[{"Name": "reserved-instances-modification-id", "Values": [mod_id]}]
    )["ReservedInstancesModifications"]
    new = [_ri(ec2, r["ReservedInstancesId"]) for r in mod["ModificationResults"]]
    assert sorted((r["Scope"], r.get("AvailabilityZone", "")) for r in new) == [
        ("Availability Zone", "us-east-1a"),
        ("Region", ""),
    ]


def test_modify_denied_without_permission(sandbox: SandboxControl, ec2, aws) -> None:
    denied = _deny_writes(sandbox, aws)
    with pytest.raises(ClientError) as caught:
        _split_into_xlarge(denied)
    assert _error(caught)[:2] == ("UnauthorizedOperation", 403)
    assert sandbox.resources(type="reserved-instances-modification") == []


# --- Exchanges ---------------------------------------------------------------------------------------------------
def test_exchange_quote_values_the_exchange(ec2) -> None:
    source = _ri(ec2, CONVERTIBLE_ID)
    target = _convertible_offering(ec2, "c5.large")
    quote = ec2.get_reserved_instances_exchange_quote(
        ReservedInstanceIds=[CONVERTIBLE_ID], TargetConfigurations=[{"OfferingId": target}]
    )
    assert quote["IsValidExchange"] is True and "ValidationFailureReason" not in quote
    assert quote["CurrencyCode"] == "USD" and quote["PaymentDue"] == "0.00"
    assert quote["OutputReservedInstancesWillExpireAt"] == source["End"]  # same term: the source's End
    source_value = float(quote["ReservedInstanceValueRollup"]["RemainingTotalValue"])
    target_value = float(quote["TargetConfigurationValueRollup"]["RemainingTotalValue"])
    [configuration] = quote["TargetConfigurationValueSet"]
    count = configuration["TargetConfiguration"]["InstanceCount"]
    # The default count is the smallest that covers the value of what is given up.
    assert target_value >= source_value > target_value * (count - 1) / count
    assert quote["ReservedInstanceValueSet"][0]["ReservedInstanceId"] == CONVERTIBLE_ID


def test_exchange_quote_reports_invalid_exchanges(ec2) -> None:
    convertible_target = _convertible_offering(ec2, "c5.large")
    cases = [
        ([STANDARD_ID], convertible_target, None, "Standard"),
        ([CONVERTIBLE_ID], _standard_offering(ec2), None, "not a Convertible"),
        ([CONVERTIBLE_ID], convertible_target, 1, "less than"),
        ([CONVERTIBLE_ID], _convertible_offering(ec2, "c5.large", years=3), 2, None),  # longer term is fine
    ]
    for ids, offering, count, reason in cases:
        target: dict[str, Any] = {"OfferingId": offering}
        if count:
            target["InstanceCount"] = count
        quote = ec2.get_reserved_instances_exchange_quote(ReservedInstanceIds=ids, TargetConfigurations=[target])
        if reason is None:
            assert quote["IsValidExchange"] is True
        else:
            assert quote["IsValidExchange"] is False
            assert reason in quote["ValidationFailureReason"]
    with pytest.raises(ClientError) as caught:
        ec2.get_reserved_instances_exchange_quote(ReservedInstanceIds=["33333333-3333-4333-8333-333333333333"])
    assert _error(caught)[0] == "InvalidReservedInstancesId"


def test_accept_exchange_retires_the_source_and_cannot_be_replayed(sandbox: SandboxControl, ec2) -> None:
    target = _convertible_offering(ec2, "c5.large")
    request = {"ReservedInstanceIds": [CONVERTIBLE_ID], "TargetConfigurations": [{"OfferingId": target}]}
    quote = ec2.get_reserved_instances_exchange_quote(**request)
    exchange_id = ec2.accept_reserved_instances_exchange_quote(**request)["ExchangeId"]
    assert exchange_id.startswith("riex-")
    assert _ri(ec2, CONVERTIBLE_ID)["State"] == "retired"
    [new] = ec2.describe_reserved_instances(
        OfferingClass="convertible", Filters=[{"Name": "state", "Values": ["active"]}]
    )["ReservedInstances"]
    assert new["InstanceType"] == "c5.large"
    assert new["InstanceCount"] == quote["TargetConfigurationValueSet"][0]["TargetConfiguration"]["InstanceCount"]
    assert new["End"] == quote["OutputReservedInstancesWillExpireAt"]
    truth = {r["id"]: r for r in sandbox.resources(account_id=ACCOUNT)}
    assert truth[new["ReservedInstancesId"]]["created_by"]["operation"] == "ec2:AcceptReservedInstancesExchangeQuote"
    assert truth[CONVERTIBLE_ID]["state"] == "retired"

    replay = ec2.get_reserved_instances_exchange_quote(**request)
    assert replay["IsValidExchange"] is False and "retired" in replay["ValidationFailureReason"]
    with pytest.raises(ClientError) as caught:
        ec2.accept_reserved_instances_exchange_quote(**request)
    assert _error(caught) == ("InvalidParameterValue", 400, replay["ValidationFailureReason"])
    assert len(sandbox.resources(account_id=ACCOUNT)) == len(truth)


def test_accept_refuses_an_invalid_exchange_with_the_quote_reason(sandbox: SandboxControl, ec2) -> None:
    request = {
        "ReservedInstanceIds": [CONVERTIBLE_ID],
        "TargetConfigurations": [{"OfferingId": _convertible_offering(ec2, "c5.large"), "InstanceCount": 1}],
    }
    reason = ec2.get_reserved_instances_exchange_quote(**request)["ValidationFailureReason"]
    with pytest.raises(ClientError) as caught:
        ec2.accept_reserved_instances_exchange_quote(**request)
    assert _error(caught) == ("InvalidParameterValue", 400, reason)
    assert _ri(ec2, CONVERTIBLE_ID)["State"] == "active"


def test_exchange_into_a_longer_term_with_upfront_payment(sandbox: SandboxControl, ec2) -> None:
    target = _convertible_offering(ec2, "m5.large", offering_type="All Upfront", years=3)
    request = {"ReservedInstanceIds": [CONVERTIBLE_ID], "TargetConfigurations": [{"OfferingId": target}]}
    quote = ec2.get_reserved_instances_exchange_quote(**request)
    assert quote["IsValidExchange"] is True
    assert float(quote["PaymentDue"]) > 0  # No Upfront into All Upfront: the upfront is due
    now = _ri(ec2, CONVERTIBLE_ID)["End"] - timedelta(days=325)  # the seed started 40 days ago, 1 year
    expires = quote["OutputReservedInstancesWillExpireAt"]
    assert abs((expires - now).days - 3 * 365) <= 1  # a new three-year term starts now
    ec2.accept_reserved_instances_exchange_quote(**request)
    [new] = ec2.describe_reserved_instances(
        OfferingClass="convertible", Filters=[{"Name": "state", "Values": ["payment-pending"]}]
    )["ReservedInstances"]
    sandbox.advance_clock(60)
    assert _ri(ec2, new["ReservedInstancesId"])["State"] == "active"


def test_exchange_dry_run_and_denial(sandbox: SandboxControl, ec2, aws) -> None:
    request = {
        "ReservedInstanceIds": [CONVERTIBLE_ID],
        "TargetConfigurations": [{"OfferingId": _convertible_offering(ec2, "c5.large")}],
    }
    for call in (ec2.get_reserved_instances_exchange_quote, ec2.accept_reserved_instances_exchange_quote):
        with pytest.raises(ClientError) as caught:
            call(DryRun=True, **request)
        assert _error(caught)[:2] == ("DryRunOperation", 412)
    assert _ri(ec2, CONVERTIBLE_ID)["State"] == "active"
    denied = _deny_writes(sandbox, aws)
    with pytest.raises(ClientError) as caught:
        denied.accept_reserved_instances_exchange_quote(**request)
    assert _error(caught)[:2] == ("UnauthorizedOperation", 403)
    assert _ri(denied, CONVERTIBLE_ID)["State"] == "active"


# --- Marketplace listings ----------------------------------------------------------------------------------------
def _list(ec2: Any, token: str = "listing-1", ri_id: str = STANDARD_ID, count: int = 2, **extra: Any) -> Any:
    return ec2.create_reserved_instances_listing(
        ReservedInstancesId=ri_id,
        InstanceCount=count,
        PriceSchedules=extra.pop("PriceSchedules", [{"Term": 10, "Price": 300.0}, {"Term": 4, "Price": 90.0}]),
        ClientToken=token,
        **extra,
    )["ReservedInstancesListings"][0]


def test_listing_goes_active_then_cancelled(sandbox: SandboxControl, ec2) -> None:
    listing = _list(ec2)
    listing_id = listing["ReservedInstancesListingId"]
    assert listing["Status"] == "active" and listing["ClientToken"] == "listing-1"
    counts = {c["State"]: c["InstanceCount"] for c in listing["InstanceCounts"]}
    assert counts == {"available": 2, "sold": 0, "cancelled": 0, "pending": 0}
    # 10 months and a bit remain: the Term 10 schedule is in effect.
    assert [(s["Term"], s["Active"]) for s in listing["PriceSchedules"]] == [(10, True), (4, False)]
    [described] = ec2.describe_reserved_instances_listings(ReservedInstancesId=STANDARD_ID)["ReservedInstancesListings"]
    assert described["ReservedInstancesListingId"] == listing_id
    by_status = ec2.describe_reserved_instances_listings(Filters=[{"Name": "status", "Values": ["active"]}])
    assert [x["ReservedInstancesListingId"] for x in by_status["ReservedInstancesListings"]] == [listing_id]
    [truth] = sandbox.resources(type="reserved-instances-listing")
    assert truth["id"] == listing_id and truth["state"] == "active"
    assert truth["created_by"]["operation"] == "ec2:CreateReservedInstancesListing"

    cancelled = ec2.cancel_reserved_instances_listing(ReservedInstancesListingId=listing_id)[
        "ReservedInstancesListings"
    ][0]
    assert cancelled["Status"] == "cancelled"
    assert {c["State"]: c["InstanceCount"] for c in cancelled["InstanceCounts"]}["cancelled"] == 2
    [again] = ec2.describe_reserved_instances_listings(ReservedInstancesListingId=listing_id)[
        "ReservedInstancesListings"
    ]
    assert again["Status"] == "cancelled"
    assert sandbox.resources(type="reserved-instances-listing")[0]["state"] == "cancelled"
    with pytest.raises(ClientError) as caught:
        ec2.cancel_reserved_instances_listing(ReservedInstancesListingId=listing_id)
    assert _error(caught)[:2] == ("InvalidInput", 400)
    # Once cancelled, the RI can be listed again.
    assert _list(ec2, token="listing-2")["Status"] == "active"


def test_listing_is_idempotent_on_its_client_token(sandbox: SandboxControl, ec2) -> None:
    first = _list(ec2, token="tok")
    assert _list(ec2, token="tok")["ReservedInstancesListingId"] == first["ReservedInstancesListingId"]
    assert len(sandbox.resources(type="reserved-instances-listing")) == 1
    with pytest.raises(ClientError) as caught:
        _list(ec2, token="tok", count=1)
    assert _error(caught)[0] == "IdempotentParameterMismatch"
    assert len(sandbox.resources(type="reserved-instances-listing")) == 1


def test_listing_refusals(sandbox: SandboxControl, ec2) -> None:
    _seed_ri(sandbox, "44444444-4444-4444-8444-444444444444", start_days_ago=10)
    _seed_ri(sandbox, "55555555-5555-4555-8555-555555555555", start_days_ago=350)
    few_months = [{"Term": 1, "Price": 10.0}]
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"ri_id": CONVERTIBLE_ID}, "InvalidInput", "Standard"),
        ({"ri_id": "44444444-4444-4444-8444-444444444444"}, "InvalidInput", "30 days"),
        ({"ri_id": "55555555-5555-4555-8555-555555555555", "PriceSchedules": few_months}, "InvalidInput", "month"),
        ({"count": 5}, "InvalidParameterValue", "exceeds"),
        ({"PriceSchedules": [{"Term": 13, "Price": 1.0}]}, "InvalidParameterValue", "months"),
        ({"PriceSchedules": [{"Term": 5, "Price": -1.0}]}, "InvalidParameterValue", "Price"),
        ({"ri_id": "33333333-3333-4333-8333-333333333333"}, "InvalidReservedInstancesId", ""),
    ]
    for i, (kwargs, code, words) in enumerate(cases):
        with pytest.raises(ClientError) as caught:
            _list(ec2, token=f"refused-{i}", **kwargs)
        assert _error(caught)[0] == code and words in _error(caught)[2], kwargs
    assert sandbox.resources(type="reserved-instances-listing") == []
    _list(ec2, token="ok")
    with pytest.raises(ClientError) as caught:
        _list(ec2, token="twice")
    assert _error(caught)[:2] == ("InvalidInput", 400)
    with pytest.raises(ClientError) as caught:
        ec2.cancel_reserved_instances_listing(ReservedInstancesListingId="66666666-6666-4666-8666-666666666666")
    assert _error(caught)[0] == "InvalidParameterValue"


def test_listing_closes_when_the_ri_expires(sandbox: SandboxControl, ec2) -> None:
    listing_id = _list(ec2)["ReservedInstancesListingId"]
    sandbox.advance_clock(330 * 86400)
    [listing] = ec2.describe_reserved_instances_listings(ReservedInstancesListingId=listing_id)[
        "ReservedInstancesListings"
    ]
    assert listing["Status"] == "closed"
    assert not any(s["Active"] for s in listing["PriceSchedules"])


def test_listing_writes_are_denied_without_permission(sandbox: SandboxControl, ec2, aws) -> None:
    listing_id = _list(ec2)["ReservedInstancesListingId"]
    denied = _deny_writes(sandbox, aws)
    with pytest.raises(ClientError) as caught:
        _list(denied, token="other", ri_id=STANDARD_ID)
    assert _error(caught)[:2] == ("UnauthorizedOperation", 403)
    with pytest.raises(ClientError) as caught:
        denied.cancel_reserved_instances_listing(ReservedInstancesListingId=listing_id)
    assert _error(caught)[:2] == ("UnauthorizedOperation", 403)
    assert [r["state"] for r in sandbox.resources(type="reserved-instances-listing")] == ["active"]


# --- Tags --------------------------------------------------------------------------------------------------------
def test_tags_on_reserved_instances(ec2) -> None:
    ec2.create_tags(Resources=[STANDARD_ID], Tags=[{"Key": "plan", "Value": "p-1"}, {"Key": "owner", "Value": "x"}])
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [STANDARD_ID]}])["Tags"]
    assert {(t["Key"], t["Value"], t["ResourceType"]) for t in tags} == {
        ("plan", "p-1", "reserved-instances"),
        ("owner", "x", "reserved-instances"),
    }
    tagged = ec2.describe_reserved_instances(Filters=[{"Name": "tag:plan", "Values": ["p-1"]}])["ReservedInstances"]
    assert [r["ReservedInstancesId"] for r in tagged] == [STANDARD_ID]
    ec2.delete_tags(Resources=[STANDARD_ID], Tags=[{"Key": "plan", "Value": "other"}])  # value differs: kept
    ec2.delete_tags(Resources=[STANDARD_ID], Tags=[{"Key": "owner"}])
    assert _ri(ec2, STANDARD_ID)["Tags"] == [{"Key": "plan", "Value": "p-1"}]
    ec2.delete_tags(Resources=[STANDARD_ID])
    assert _ri(ec2, STANDARD_ID)["Tags"] == []


def test_tags_mixed_with_moto_resources(ec2) -> None:
    vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.create_tags(Resources=[vpc_id, CONVERTIBLE_ID], Tags=[{"Key": "plan", "Value": "mixed"}])
    tags = ec2.describe_tags(Filters=[{"Name": "key", "Values": ["plan"]}])["Tags"]
    assert {(t["ResourceId"], t["ResourceType"]) for t in tags} == {
        (vpc_id, "vpc"),
        (CONVERTIBLE_ID, "reserved-instances"),
    }
    only_ris = ec2.describe_tags(Filters=[{"Name": "resource-type", "Values": ["reserved-instances"]}])["Tags"]
    assert [t["ResourceId"] for t in only_ris] == [CONVERTIBLE_ID]
    page = ec2.describe_tags(MaxResults=5, Filters=[{"Name": "tag:plan", "Values": ["mixed"]}])
    assert len(page["Tags"]) == 2
    ec2.delete_tags(Resources=[vpc_id, CONVERTIBLE_ID], Tags=[{"Key": "plan"}])
    assert ec2.describe_tags(Filters=[{"Name": "key", "Values": ["plan"]}])["Tags"] == []
    # moto alone still answers calls that name only its resources.
    ec2.create_tags(Resources=[vpc_id], Tags=[{"Key": "only", "Value": "moto"}])
    assert ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [vpc_id]}])["Tags"][0]["Key"] == "only"


def test_tag_refusals_dry_run_and_denial(sandbox: SandboxControl, ec2, aws) -> None:
    with pytest.raises(ClientError) as caught:
        ec2.create_tags(Resources=[STANDARD_ID], Tags=[{"Key": "plan", "Value": "x"}], DryRun=True)
    assert _error(caught)[:2] == ("DryRunOperation", 412)
    with pytest.raises(ClientError) as caught:
        ec2.create_tags(Resources=["33333333-3333-4333-8333-333333333333"], Tags=[{"Key": "plan", "Value": "x"}])
    assert _error(caught)[0] == "InvalidReservedInstancesId"
    with pytest.raises(ClientError) as caught:
        ec2.create_tags(Resources=[STANDARD_ID], Tags=[{"Key": "aws:reserved", "Value": "x"}])
    assert _error(caught)[0] == "InvalidParameterValue"
    assert _ri(ec2, STANDARD_ID)["Tags"] == []
    denied = _deny_writes(sandbox, aws)
    with pytest.raises(ClientError) as caught:
        denied.create_tags(Resources=[STANDARD_ID], Tags=[{"Key": "plan", "Value": "x"}])
    assert _error(caught)[:2] == ("UnauthorizedOperation", 403)
    assert denied.describe_tags()["Tags"] == []
