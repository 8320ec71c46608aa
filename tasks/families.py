"""The permission families of the production role: which IAM actions each family's sessions may use.

Every write action of ``docs/production-role.md`` belongs to exactly one family. Each family
runs as one Celery task on its own queue, and its AssumeRole session policy allows only the actions listed
here (``Family.session_policy``). tests/test_families.py checks this table against the production role and
against botocore's service models.
"""

from __future__ import annotations

from worker.family import Family

EC2_RESERVED_INSTANCES = Family(
    name="ec2_reserved_instances",
    title="EC2 reserved instances (purchase, modify)",
    write_actions=("ec2:PurchaseReservedInstancesOffering", "ec2:ModifyReservedInstances"),
    read_actions=(
        "ec2:DescribeReservedInstances",
        "ec2:DescribeReservedInstancesOfferings",
        "ec2:DescribeReservedInstancesModifications",
    ),
    optional_actions=("ec2:CreateTags",),
)
EC2_RI_EXCHANGE = Family(
    name="ec2_ri_exchange",
    title="EC2 convertible RI exchange",
    write_actions=("ec2:AcceptReservedInstancesExchangeQuote",),
    read_actions=(
        "ec2:GetReservedInstancesExchangeQuote",
        "ec2:DescribeReservedInstances",
        "ec2:DescribeReservedInstancesOfferings",
    ),
)
EC2_RI_MARKETPLACE = Family(
    name="ec2_ri_marketplace",
    title="EC2 RI marketplace resale",
    write_actions=("ec2:CreateReservedInstancesListing", "ec2:CancelReservedInstancesListing"),
    read_actions=("ec2:DescribeReservedInstances", "ec2:DescribeReservedInstancesListings"),
)
EC2_CAPACITY_RESERVATIONS = Family(
    name="ec2_capacity_reservations",
    title="EC2 capacity reservations",
    write_actions=(
        "ec2:CreateCapacityReservation",
        "ec2:ModifyCapacityReservation",
        "ec2:CancelCapacityReservation",
        "ec2:ModifyInstanceCapacityReservationAttributes",
    ),
    read_actions=("ec2:DescribeCapacityReservations", "ec2:DescribeInstances", "ec2:DescribeInstanceTypeOfferings"),
    optional_actions=("ec2:CreateTags",),
)
EC2_HOST_RESERVATIONS = Family(
    name="ec2_host_reservations",
    title="EC2 dedicated host reservations",
    write_actions=("ec2:PurchaseHostReservation",),
    read_actions=(
        "ec2:DescribeHosts",
        "ec2:DescribeHostReservationOfferings",
        "ec2:DescribeHostReservations",
        "ec2:GetHostReservationPurchasePreview",
    ),
    optional_actions=("ec2:CreateTags",),
)
EC2_SCHEDULED_INSTANCES = Family(
    name="ec2_scheduled_instances",
    title="EC2 scheduled instances",
    write_actions=("ec2:PurchaseScheduledInstances", "ec2:RunScheduledInstances"),
    read_actions=(
        "ec2:DescribeScheduledInstanceAvailability",
        "ec2:DescribeScheduledInstances",
        "ec2:DescribeInstances",
    ),
)
EC2_SPOT = Family(
    name="ec2_spot",
    title="EC2 spot requests",
    write_actions=(
        "ec2:RequestSpotFleet",
        "ec2:RequestSpotInstances",
        "ec2:CancelSpotFleetRequests",
        "ec2:CancelSpotInstanceRequests",
    ),
    read_actions=(
        "ec2:DescribeSpotPriceHistory",
        "ec2:DescribeSpotFleetRequests",
        "ec2:DescribeSpotInstanceRequests",
    ),
    # iam:PassRole: a fleet passes IamFleetRole to EC2; ec2:CreateTags: tag-on-create of spot instance requests.
    optional_actions=("ec2:CreateTags", "iam:PassRole"),
)
SAVINGS_PLANS = Family(
    name="savings_plans",
    title="Savings Plans",
    write_actions=("savingsplans:CreateSavingsPlan",),
    read_actions=(
        "savingsplans:DescribeSavingsPlansOfferings",
        "savingsplans:DescribeSavingsPlansOfferingRates",
        "savingsplans:DescribeSavingsPlans",
    ),
)
RDS_RESERVATIONS = Family(
    name="rds_reservations",
    title="RDS reserved DB instances",
    write_actions=("rds:PurchaseReservedDbInstancesOffering",),
    read_actions=("rds:DescribeReservedDBInstancesOfferings", "rds:DescribeReservedDBInstances"),
)
REDSHIFT_RESERVATIONS = Family(
    name="redshift_reservations",
    title="Redshift reserved nodes (purchase, exchange)",
    write_actions=(
        "redshift:PurchaseReservedNodeOffering",
        "redshift:AcceptReservedNodeExchange",
        "redshift:GetReservedNodeExchangeOfferings",
    ),
    read_actions=(
        "redshift:DescribeReservedNodeOfferings",
        "redshift:DescribeReservedNodes",
        "redshift:DescribeReservedNodeExchangeStatus",
    ),
)
ELASTICACHE_RESERVATIONS = Family(
    name="elasticache_reservations",
    title="ElastiCache reserved cache nodes",
    write_actions=("elasticache:PurchaseReservedCacheNodesOffering",),
    read_actions=("elasticache:DescribeReservedCacheNodesOfferings", "elasticache:DescribeReservedCacheNodes"),
)
OPENSEARCH_RESERVATIONS = Family(
    name="opensearch_reservations",
    title="OpenSearch / Elasticsearch reserved instances",
    write_actions=(
        "es:PurchaseReservedElasticsearchInstanceOffering",
        "es:PurchaseReservedElasticsearchInstance",
    ),
    read_actions=(
        "es:DescribeReservedElasticsearchInstanceOfferings",
        "es:DescribeReservedElasticsearchInstances",
        # OpenSearch's newer API (params.api "opensearch"): its reads are within the role's es:Describe*.
        "es:DescribeReservedInstanceOfferings",
        "es:DescribeReservedInstances",
    ),
    # OpenSearch's newer purchase API (params.api "opensearch"), outside the production role.
    optional_actions=("es:PurchaseReservedInstanceOffering",),
)
ORG_TRANSFER = Family(
    name="org_transfer",
    title="Organizations sub-account transfer (optional)",
    write_actions=(
        "organizations:InviteAccountToOrganization",
        "organizations:RemoveAccountFromOrganization",
        "organizations:CreateAccount",
    ),
    read_actions=(
        "organizations:DescribeOrganization",
        "organizations:ListAccounts",
        "organizations:DescribeAccount",
        "organizations:ListCreateAccountStatus",
        "organizations:DescribeCreateAccountStatus",
        "organizations:ListHandshakesForOrganization",
        "organizations:DescribeHandshake",
        "organizations:ListDelegatedAdministrators",
    ),
    optional_block="organizations",
)

FAMILIES: tuple[Family, ...] = (
    EC2_RESERVED_INSTANCES,
    EC2_RI_EXCHANGE,
    EC2_RI_MARKETPLACE,
    EC2_CAPACITY_RESERVATIONS,
    EC2_HOST_RESERVATIONS,
    EC2_SCHEDULED_INSTANCES,
    EC2_SPOT,
    SAVINGS_PLANS,
    RDS_RESERVATIONS,
    REDSHIFT_RESERVATIONS,
    ELASTICACHE_RESERVATIONS,
    OPENSEARCH_RESERVATIONS,
    ORG_TRANSFER,
)


def family_of(action: str) -> Family | None:
    for family in FAMILIES:
        if action.lower() in {a.lower() for a in family.write_actions}:
            return family
    return None
