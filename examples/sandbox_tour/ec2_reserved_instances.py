"""Tour section: EC2 Reserved Instances, from purchase to modification, exchange and Marketplace resale.

Written from the EC2 API reference and the user guide's RI pages: buy a Standard and a Convertible RI, tag
them, split the Standard one into larger instances (ModifyReservedInstances, tracked by its client token),
exchange the Convertible one after reading a quote, then list a Standard RI on the Reserved Instance
Marketplace once it has been held for 30 days, and take the listing down again.
"""

from __future__ import annotations

import uuid
from typing import Any

from botocore.exceptions import ClientError

from examples.sandbox_tour.tour import Tour

ACCOUNT = "210000000001"
REGION = "us-east-1"
ONE_YEAR = 31_536_000
DAY = 86_400


def _offering(ec2: Any, instance_type: str, offering_class: str, offering_type: str) -> str:
    [offering] = ec2.describe_reserved_instances_offerings(
        InstanceType=instance_type,
        OfferingClass=offering_class,
        OfferingType=offering_type,
        ProductDescription="Linux/UNIX",
        IncludeMarketplace=False,
        Filters=[{"Name": "scope", "Values": ["Region"]}, {"Name": "duration", "Values": [str(ONE_YEAR)]}],
    )["ReservedInstancesOfferings"]
    return str(offering["ReservedInstancesOfferingId"])


def _state(ec2: Any, ri_id: str) -> str:
    return str(ec2.describe_reserved_instances(ReservedInstancesIds=[ri_id])["ReservedInstances"][0]["State"])


def tour(t: Tour) -> None:
    ec2 = t.client("ec2", REGION, account_id=ACCOUNT)

    # 1. Buy: a Standard RI to resize and resell, a Convertible one to exchange.
    standard_id = ec2.purchase_reserved_instances_offering(
        ReservedInstancesOfferingId=_offering(ec2, "m5.large", "standard", "All Upfront"), InstanceCount=4
    )["ReservedInstancesId"]
    convertible_id = ec2.purchase_reserved_instances_offering(
        ReservedInstancesOfferingId=_offering(ec2, "m5.large", "convertible", "No Upfront"), InstanceCount=2
    )["ReservedInstancesId"]
    ec2.create_tags(Resources=[standard_id, convertible_id], Tags=[{"Key": "ManagedBy", "Value": "tour"}])
    t.record("ec2:PurchaseReservedInstancesOffering", f"{standard_id} {_state(ec2, standard_id)}")
    t.let_time_pass(120)  # payment-pending -> active
    assert _state(ec2, standard_id) == _state(ec2, convertible_id) == "active"

    # 2. Modify: 4 x m5.large into 2 x m5.xlarge (same normalized footprint). The token finds it after a crash.
    token = f"tour-modify-{uuid.uuid4()}"
    modification_id = ec2.modify_reserved_instances(
        ClientToken=token,
        ReservedInstancesIds=[standard_id],
        TargetConfigurations=[{"InstanceCount": 2, "InstanceType": "m5.xlarge", "Scope": "Region"}],
    )["ReservedInstancesModificationId"]
    t.let_time_pass(3600)
    [modification] = ec2.describe_reserved_instances_modifications(
        Filters=[{"Name": "client-token", "Values": [token]}]
    )["ReservedInstancesModifications"]
    assert modification["ReservedInstancesModificationId"] == modification_id
    resized_id = modification["ModificationResults"][0].get("ReservedInstancesId", "")
    t.record("ec2:ModifyReservedInstances", f"{modification_id} {modification['Status']} -> {resized_id}")

    # 3. Exchange the Convertible RI for c5.large, after checking the quote.
    target = {"OfferingId": _offering(ec2, "c5.large", "convertible", "No Upfront")}
    quote = ec2.get_reserved_instances_exchange_quote(
        ReservedInstanceIds=[convertible_id], TargetConfigurations=[target]
    )
    if not quote["IsValidExchange"]:
        raise AssertionError(f"the exchange is not valid: {quote.get('ValidationFailureReason')}")
    exchange_id = ec2.accept_reserved_instances_exchange_quote(
        ReservedInstanceIds=[convertible_id], TargetConfigurations=[target]
    )["ExchangeId"]
    t.record(
        "ec2:AcceptReservedInstancesExchangeQuote",
        f"{exchange_id}, payment due {quote['PaymentDue']} USD, source {_state(ec2, convertible_id)}",
    )
    try:  # a retired RI cannot be exchanged twice
        ec2.accept_reserved_instances_exchange_quote(
            ReservedInstanceIds=[convertible_id], TargetConfigurations=[target]
        )
        raise AssertionError("a retired Convertible RI was exchanged again")
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "InvalidParameterValue"

    # 4. Resell: a Standard RI can be listed after 30 days; list one instance, then cancel the listing.
    t.let_time_pass(31 * DAY)
    listing = ec2.create_reserved_instances_listing(
        ReservedInstancesId=resized_id,
        InstanceCount=1,
        PriceSchedules=[{"Term": 10, "Price": 600.0, "CurrencyCode": "USD"}, {"Term": 4, "Price": 200.0}],
        ClientToken=f"tour-listing-{uuid.uuid4()}",
    )["ReservedInstancesListings"][0]
    listing_id = listing["ReservedInstancesListingId"]
    t.record("ec2:CreateReservedInstancesListing", f"{listing_id} {listing['Status']}")
    cancelled = ec2.cancel_reserved_instances_listing(ReservedInstancesListingId=listing_id)[
        "ReservedInstancesListings"
    ][0]
    t.record("ec2:CancelReservedInstancesListing", f"{listing_id} {cancelled['Status']}")
