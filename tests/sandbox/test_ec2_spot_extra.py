"""EC2 spot prices (DescribeSpotPriceHistory), the sandbox's own, over HTTP with real boto3 (shapes checked)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox.control import SandboxControl

ACCOUNT = "210000000001"
LINUX = ["Linux/UNIX"]


def _prices(ec2: Any, **params: Any) -> list[dict[str, Any]]:
    return list(ec2.describe_spot_price_history(**params)["SpotPriceHistory"])


def test_one_current_price_per_zone_a_share_of_on_demand(sandbox: SandboxControl, aws: Any) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    now = datetime.fromisoformat(sandbox.health()["now"])
    prices = _prices(ec2, InstanceTypes=["m5.large"], ProductDescriptions=LINUX)
    # moto offers m5.large in five of us-east-1's six zones; each zone's price is a little higher than the last.
    assert [p["AvailabilityZone"] for p in prices] == ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d",
                                                       "us-east-1f"]
    assert [p["SpotPrice"] for p in prices] == ["0.028800", "0.029760", "0.030720", "0.031680", "0.033600"]
    assert all(Decimal(p["SpotPrice"]) < Decimal("0.096") for p in prices)  # below the On-Demand price
    assert {p["ProductDescription"] for p in prices} == set(LINUX)
    assert prices[0]["AvailabilityZoneId"] == "use1-az6"
    stamp = prices[0]["Timestamp"]
    assert stamp <= now and now - stamp < timedelta(hours=1)  # the price in effect now
    [windows] = _prices(ec2, InstanceTypes=["m5.large"], ProductDescriptions=["Windows"],
                        AvailabilityZone="us-east-1a")
    assert windows["SpotPrice"] == "0.057600"


def test_filters_times_and_pages(sandbox: SandboxControl, aws: Any) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    assert _prices(ec2, InstanceTypes=["x9.unknown"]) == []  # not offered in the region: no spot market
    [c5] = _prices(ec2, Filters=[{"Name": "instance-type", "Values": ["c5.large"]},
                                 {"Name": "availability-zone", "Values": ["us-east-1b"]},
                                 {"Name": "product-description", "Values": LINUX}])
    assert (c5["InstanceType"], c5["AvailabilityZone"]) == ("c5.large", "us-east-1b")
    now = datetime.fromisoformat(sandbox.health()["now"])
    assert _prices(ec2, InstanceTypes=["c5.large"], EndTime=now - timedelta(hours=2)) == []
    assert len(_prices(ec2, InstanceTypes=["c5.large"], ProductDescriptions=LINUX,
                       StartTime=now - timedelta(hours=1))) >= 5
    first = ec2.describe_spot_price_history(InstanceTypes=["m5.large", "c5.large"], ProductDescriptions=LINUX,
                                            MaxResults=3)
    assert len(first["SpotPriceHistory"]) == 3 and first["NextToken"]
    pages = [*first["SpotPriceHistory"]]
    paginator = ec2.get_paginator("describe_spot_price_history")
    every = [p for page in paginator.paginate(InstanceTypes=["m5.large", "c5.large"], ProductDescriptions=LINUX,
                                              PaginationConfig={"PageSize": 3})
             for p in page["SpotPriceHistory"]]
    assert every[:3] == pages and len(every) == len({(p["InstanceType"], p["AvailabilityZone"]) for p in every})


def test_unknown_product_description_and_dry_run(sandbox: SandboxControl, aws: Any) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    with pytest.raises(ClientError) as caught:
        ec2.describe_spot_price_history(ProductDescriptions=["BeOS"])
    assert caught.value.response["Error"]["Code"] == "InvalidParameterValue"
    with pytest.raises(ClientError) as caught:
        ec2.describe_spot_price_history(InstanceTypes=["m5.large"], DryRun=True)
    assert caught.value.response["Error"]["Code"] == "DryRunOperation"
