"""Under IAM enforcement, each of the 27 write actions is denied with its service's own error when the role
does not grant it (here: a role that may only read)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from examples.sandbox_tour.tour import ALL_ACTIONS
from sandbox.control import SandboxControl

ACCOUNT = "111122223333"
READ_ONLY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": [f"{s}:{v}*" for s in ("ec2", "rds", "redshift", "elasticache", "es",
                                                               "savingsplans", "organizations")
                                       for v in ("Describe", "List")], "Resource": "*"},
    ],
}
OID = "11111111-2222-3333-4444-555555555555"
# IAM action → (boto3 service, method, minimal valid parameters, the service's denial code)
CALLS: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "ec2:ModifyReservedInstances": (
        "ec2", "modify_reserved_instances",
        {"ReservedInstancesIds": [OID], "TargetConfigurations": [{"InstanceCount": 1}]}, "UnauthorizedOperation"),
    "ec2:PurchaseReservedInstancesOffering": (
        "ec2", "purchase_reserved_instances_offering",
        {"ReservedInstancesOfferingId": OID, "InstanceCount": 1}, "UnauthorizedOperation"),
    "ec2:AcceptReservedInstancesExchangeQuote": (
        "ec2", "accept_reserved_instances_exchange_quote", {"ReservedInstanceIds": [OID]}, "UnauthorizedOperation"),
    "ec2:CreateReservedInstancesListing": (
        "ec2", "create_reserved_instances_listing",
        {"ReservedInstancesId": OID, "InstanceCount": 1, "ClientToken": "t",
         "PriceSchedules": [{"Term": 6, "Price": 10.0, "CurrencyCode": "USD"}]}, "UnauthorizedOperation"),
    "ec2:CancelReservedInstancesListing": (
        "ec2", "cancel_reserved_instances_listing", {"ReservedInstancesListingId": OID}, "UnauthorizedOperation"),
    "ec2:PurchaseScheduledInstances": (
        "ec2", "purchase_scheduled_instances",
        {"PurchaseRequests": [{"InstanceCount": 1, "PurchaseToken": "dG9rZW4="}]}, "UnauthorizedOperation"),
    "ec2:RunScheduledInstances": (
        "ec2", "run_scheduled_instances",
        {"ScheduledInstanceId": "sci-1234-1234-1234-1234-123456789012", "LaunchSpecification": {"ImageId": "ami-1"}},
        "UnauthorizedOperation"),
    "ec2:ModifyCapacityReservation": (
        "ec2", "modify_capacity_reservation", {"CapacityReservationId": "cr-12345678901234567", "InstanceCount": 2},
        "UnauthorizedOperation"),
    "ec2:ModifyInstanceCapacityReservationAttributes": (
        "ec2", "modify_instance_capacity_reservation_attributes",
        {"InstanceId": "i-12345678901234567",
         "CapacityReservationSpecification": {"CapacityReservationPreference": "none"}}, "UnauthorizedOperation"),
    "ec2:CreateCapacityReservation": (
        "ec2", "create_capacity_reservation",
        {"InstanceType": "m5.large", "InstancePlatform": "Linux/UNIX", "InstanceCount": 1,
         "AvailabilityZone": "us-east-1a"}, "UnauthorizedOperation"),
    "ec2:CancelCapacityReservation": (
        "ec2", "cancel_capacity_reservation", {"CapacityReservationId": "cr-12345678901234567"},
        "UnauthorizedOperation"),
    "ec2:PurchaseHostReservation": (
        "ec2", "purchase_host_reservation",
        {"HostIdSet": ["h-12345678901234567"], "OfferingId": "hro-0123456789abcdef0"}, "UnauthorizedOperation"),
    "ec2:RequestSpotFleet": (
        "ec2", "request_spot_fleet",
        {"SpotFleetRequestConfig": {"IamFleetRole": "arn:aws:iam::111122223333:role/fleet", "TargetCapacity": 1,
                                    "LaunchSpecifications": [{"ImageId": "ami-1", "InstanceType": "m5.large"}]}},
        "UnauthorizedOperation"),
    "ec2:RequestSpotInstances": (
        "ec2", "request_spot_instances", {"InstanceCount": 1, "LaunchSpecification": {"ImageId": "ami-1"}},
        "UnauthorizedOperation"),
    "ec2:CancelSpotFleetRequests": (
        "ec2", "cancel_spot_fleet_requests",
        {"SpotFleetRequestIds": ["sfr-11111111-2222-3333-4444-555555555555"], "TerminateInstances": True},
        "UnauthorizedOperation"),
    "ec2:CancelSpotInstanceRequests": (
        "ec2", "cancel_spot_instance_requests", {"SpotInstanceRequestIds": ["sir-12345678"]}, "UnauthorizedOperation"),
    "rds:PurchaseReservedDbInstancesOffering": (
        "rds", "purchase_reserved_db_instances_offering", {"ReservedDBInstancesOfferingId": OID}, "AccessDenied"),
    "redshift:GetReservedNodeExchangeOfferings": (
        "redshift", "get_reserved_node_exchange_offerings", {"ReservedNodeId": OID}, "AccessDenied"),
    "redshift:PurchaseReservedNodeOffering": (
        "redshift", "purchase_reserved_node_offering", {"ReservedNodeOfferingId": OID}, "AccessDenied"),
    "redshift:AcceptReservedNodeExchange": (
        "redshift", "accept_reserved_node_exchange", {"ReservedNodeId": OID, "TargetReservedNodeOfferingId": OID},
        "AccessDenied"),
    "elasticache:PurchaseReservedCacheNodesOffering": (
        "elasticache", "purchase_reserved_cache_nodes_offering", {"ReservedCacheNodesOfferingId": OID},
        "AccessDenied"),
    "es:PurchaseReservedElasticsearchInstanceOffering": (
        "es", "purchase_reserved_elasticsearch_instance_offering",
        {"ReservedElasticsearchInstanceOfferingId": OID, "ReservationName": "denied-1"}, "AccessDeniedException"),
    # The IAM action es:PurchaseReservedElasticsearchInstance names no API; it authorizes the same purchase.
    "es:PurchaseReservedElasticsearchInstance": (
        "es", "purchase_reserved_elasticsearch_instance_offering",
        {"ReservedElasticsearchInstanceOfferingId": OID, "ReservationName": "denied-2"}, "AccessDeniedException"),
    "savingsplans:CreateSavingsPlan": (
        "savingsplans", "create_savings_plan", {"savingsPlanOfferingId": OID, "commitment": "1.0"},
        "AccessDeniedException"),
    "organizations:InviteAccountToOrganization": (
        "organizations", "invite_account_to_organization", {"Target": {"Id": "222233334444", "Type": "ACCOUNT"}},
        "AccessDeniedException"),
    "organizations:RemoveAccountFromOrganization": (
        "organizations", "remove_account_from_organization", {"AccountId": "222233334444"}, "AccessDeniedException"),
    "organizations:CreateAccount": (
        "organizations", "create_account", {"Email": "new@example.com", "AccountName": "new"},
        "AccessDeniedException"),
}


def test_the_table_covers_all_27_write_actions() -> None:
    assert sorted(CALLS) == sorted(ALL_ACTIONS)


@pytest.mark.parametrize("action", sorted(CALLS))
def test_write_denied_without_the_permission(sandbox: SandboxControl, aws: Any, action: str) -> None:
    service, method, params, code = CALLS[action]
    sandbox.set_iam(True, READ_ONLY)
    client = aws(service, account_id=ACCOUNT, retries=1)
    with pytest.raises(ClientError) as denied:
        getattr(client, method)(**params)
    assert denied.value.response["Error"]["Code"] == code
    assert sandbox.resources(account_id=ACCOUNT) == []
