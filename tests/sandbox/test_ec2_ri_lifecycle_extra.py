"""The Reserved Instance Marketplace's account setting and sales: seller registration (which no EC2 API reports)
and a buyer's purchase from a listing, both seeded through the control API; and a closed listing keeps its sales.

Every call goes over HTTP through real boto3 clients whose responses are checked against botocore's output shapes.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox.control import SandboxControl, SandboxControlError

ACCOUNT = "111122223333"
REGION = "us-east-1"
RI_ID = "33333333-3333-4333-8333-333333333333"
SCHEDULE = [{"Term": 6, "Price": 300.0, "CurrencyCode": "USD"}]


@pytest.fixture
def ec2(sandbox: SandboxControl, aws: Any) -> Any:
    sandbox.seed([{
        "kind": "ec2:reserved-instances", "account_id": ACCOUNT, "region": REGION, "id": RI_ID,
        "instance_type": "m5.large", "offering_class": "standard", "offering_type": "All Upfront",
        "duration_years": 1, "instance_count": 4, "start_days_ago": 40,
    }])
    return aws("ec2", account_id=ACCOUNT)


def _list(ec2: Any, count: int, token: str) -> str:
    listing = ec2.create_reserved_instances_listing(
        ReservedInstancesId=RI_ID, InstanceCount=count, PriceSchedules=SCHEDULE, ClientToken=token,
    )["ReservedInstancesListings"][0]
    return str(listing["ReservedInstancesListingId"])


def _listing(ec2: Any, listing_id: str) -> dict[str, Any]:
    found = ec2.describe_reserved_instances_listings(ReservedInstancesListingId=listing_id)
    return dict(found["ReservedInstancesListings"][0])


def _counts(listing: dict[str, Any]) -> dict[str, int]:
    return {c["State"]: c["InstanceCount"] for c in listing["InstanceCounts"]}


def test_an_unregistered_seller_is_refused_until_it_registers(sandbox: SandboxControl, ec2: Any) -> None:
    sandbox.seed([{"kind": "ec2:ri-marketplace-seller", "account_id": ACCOUNT, "registered": False}])
    with pytest.raises(ClientError) as refused:
        _list(ec2, 1, "t-unregistered")
    error = refused.value.response["Error"]
    assert error["Code"] == "InvalidInput"
    assert "not registered as a seller" in error["Message"]
    assert ec2.describe_reserved_instances_listings()["ReservedInstancesListings"] == []
    sandbox.seed([{"kind": "ec2:ri-marketplace-seller", "account_id": ACCOUNT, "registered": True}])
    assert _listing(ec2, _list(ec2, 1, "t-registered"))["Status"] == "active"


def test_registration_is_per_account_and_forgotten_on_reset(sandbox: SandboxControl, ec2: Any, aws: Any) -> None:
    sandbox.seed([{"kind": "ec2:ri-marketplace-seller", "account_id": "999988887777", "registered": False}])
    assert _listing(ec2, _list(ec2, 1, "t-other-account"))["Status"] == "active"
    sandbox.seed([{"kind": "ec2:ri-marketplace-seller", "account_id": ACCOUNT, "registered": False}])
    sandbox.reset()  # every account is a registered seller again (and sessions are forgotten: a new client)
    ec2 = aws("ec2", account_id=ACCOUNT)
    sandbox.seed([{"kind": "ec2:reserved-instances", "account_id": ACCOUNT, "region": REGION, "id": RI_ID,
                   "instance_type": "m5.large", "offering_class": "standard", "offering_type": "All Upfront",
                   "duration_years": 1, "instance_count": 4, "start_days_ago": 40}])
    assert _listing(ec2, _list(ec2, 1, "t-after-reset"))["Status"] == "active"


def test_a_seeded_sale_moves_units_to_sold_and_a_sold_out_listing_closes(sandbox: SandboxControl, ec2: Any) -> None:
    listing_id = _list(ec2, 2, "t-sale")
    sale = {"kind": "ec2:ri-listing-sale", "account_id": ACCOUNT, "region": REGION, "reserved_instances_id": RI_ID}
    sandbox.seed([{**sale, "instance_count": 1}])
    listing = _listing(ec2, listing_id)
    assert listing["Status"] == "active"
    assert _counts(listing) == {"available": 1, "sold": 1, "cancelled": 0, "pending": 0}
    with pytest.raises(SandboxControlError):  # more than is available
        sandbox.seed([{**sale, "instance_count": 2}])
    sandbox.seed([{**sale, "instance_count": 1}])
    listing = _listing(ec2, listing_id)
    assert listing["Status"] == "closed"
    assert _counts(listing) == {"available": 0, "sold": 2, "cancelled": 0, "pending": 0}
    with pytest.raises(SandboxControlError):  # nothing active to sell from
        sandbox.seed([{**sale, "instance_count": 1}])


def test_cancel_after_a_sale_reports_the_units_sold(sandbox: SandboxControl, ec2: Any) -> None:
    listing_id = _list(ec2, 3, "t-cancel-after-sale")
    sandbox.seed([{"kind": "ec2:ri-listing-sale", "account_id": ACCOUNT, "region": REGION,
                   "reserved_instances_id": RI_ID, "instance_count": 1}])
    cancelled = ec2.cancel_reserved_instances_listing(ReservedInstancesListingId=listing_id)
    [listing] = cancelled["ReservedInstancesListings"]
    assert listing["Status"] == "cancelled"
    assert _counts(listing) == {"available": 0, "sold": 1, "cancelled": 2, "pending": 0}


def test_a_listing_closed_because_its_ri_retired_keeps_its_sales(sandbox: SandboxControl, ec2: Any) -> None:
    listing_id = _list(ec2, 3, "t-close-after-sale")
    sandbox.seed([{"kind": "ec2:ri-listing-sale", "account_id": ACCOUNT, "region": REGION,
                   "reserved_instances_id": RI_ID, "instance_count": 1}])
    sandbox.advance_clock(400 * 86400)  # past the RI's end: it retires, and its listing closes
    listing = _listing(ec2, listing_id)
    assert listing["Status"] == "closed"
    assert _counts(listing) == {"available": 0, "sold": 1, "cancelled": 2, "pending": 0}
