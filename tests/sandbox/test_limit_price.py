"""LimitPrice is compared with the total in decimal, as AWS does: in binary floats 234.61 × 5 is
1173.0500000000002, which would refuse a limit of exactly 1173.05."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox.app import SandboxApp
from sandbox.catalogue import Catalogue, stable_uuid
from sandbox.control import SandboxControl
from sandbox.server import SandboxServer
from tests.sandbox.clients import client

RI_OFFERING_ID = stable_uuid("test", "ri", "234.61")
HOST_OFFERING_ID = "hro-0234610000000000f"


def _catalogue() -> Catalogue:
    """The default catalogue plus an RI offering and a host offering whose upfront price is 234.61."""
    catalogue = Catalogue.load()
    [template] = [
        o for o in catalogue.section("ec2_ri_offerings")
        if o["Region"] == "us-east-1" and o["InstanceType"] == "t3.medium" and o["Scope"] == "Region"
        and o["OfferingClass"] == "standard" and o["OfferingType"] == "All Upfront" and o["Duration"] == 31536000
    ]
    catalogue.sections["ec2_ri_offerings"].append(
        {**template, "ReservedInstancesOfferingId": RI_OFFERING_ID, "FixedPrice": 234.61}
    )
    [host_template] = [
        o for o in catalogue.section("ec2_host_reservation_offerings")
        if o["Region"] == "us-east-1" and o["InstanceFamily"] == "m5" and o["PaymentOption"] == "AllUpfront"
        and o["Duration"] == 31536000
    ]
    catalogue.sections["ec2_host_reservation_offerings"].append(
        {**host_template, "OfferingId": HOST_OFFERING_ID, "UpfrontPrice": "234.610"}
    )
    return catalogue


@pytest.fixture(scope="module")
def priced_server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxApp(_catalogue())) as server:
        yield server


@pytest.fixture
def priced(priced_server: SandboxServer) -> SandboxControl:
    control = SandboxControl(priced_server.url)
    control.reset()
    return control


def _code(caught: pytest.ExceptionInfo[ClientError]) -> str:
    return str(caught.value.response["Error"]["Code"])


def _buy_five(ec2: Any, limit: dict[str, Any]) -> Any:
    return ec2.purchase_reserved_instances_offering(
        ReservedInstancesOfferingId=RI_OFFERING_ID, InstanceCount=5, LimitPrice=limit
    )


def test_ri_limit_price_equal_to_the_decimal_total_is_enough(priced: SandboxControl) -> None:
    ec2 = client(priced.url, "ec2")
    with pytest.raises(ClientError) as caught:
        _buy_five(ec2, {"Amount": 1173.04, "CurrencyCode": "USD"})
    assert _code(caught) == "LimitPriceExceeded"
    assert "1173.05" in caught.value.response["Error"]["Message"]
    assert priced.resources() == []

    ri_id = _buy_five(ec2, {"Amount": 1173.05, "CurrencyCode": "USD"})["ReservedInstancesId"]
    [bought] = ec2.describe_reserved_instances()["ReservedInstances"]
    assert (bought["ReservedInstancesId"], bought["InstanceCount"], bought["FixedPrice"]) == (ri_id, 5, 234.61)


def test_ri_limit_price_in_another_currency_is_refused(priced: SandboxControl) -> None:
    ec2 = client(priced.url, "ec2")
    with pytest.raises(ClientError) as caught:
        _buy_five(ec2, {"Amount": 5000.0, "CurrencyCode": "EUR"})
    assert _code(caught) == "InvalidParameterValue"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert priced.resources() == []


def test_host_reservation_limit_price_is_decimal_too(priced: SandboxControl) -> None:
    ec2 = client(priced.url, "ec2")
    hosts = ec2.allocate_hosts(AvailabilityZone="us-east-1a", InstanceFamily="m5", Quantity=5)["HostIds"]
    for limit, code in [("1173.049", "LimitPriceExceeded"), ("NaN", "InvalidParameterValue"),
                        ("cheap", "InvalidParameterValue")]:
        with pytest.raises(ClientError) as caught:
            ec2.purchase_host_reservation(HostIdSet=hosts, OfferingId=HOST_OFFERING_ID, LimitPrice=limit)
        assert _code(caught) == code, limit
    assert priced.resources() == []
    bought = ec2.purchase_host_reservation(HostIdSet=hosts, OfferingId=HOST_OFFERING_ID, LimitPrice="1173.05")
    assert bought["TotalUpfrontPrice"] == "1173.050"
    assert len(priced.resources()) == 1
