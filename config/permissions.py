"""Permissions beyond the production role that commitd uses when a customer grants them, and why.

The production role (docs/production-role.md) is the whole scope of the product; these are
opt-in. Where a customer did not grant one, commitd works without it (the reason says what is lost).
"""

EXTRA_PERMISSIONS: dict[str, str] = {
    "ec2:CreateTags": (
        "tag each Reserved Instance bought with its plan id (commitd:plan-id), so that reconciliation after a lost "
        "answer finds it by tag instead of by offering attributes and start time; and tag capacity reservations, "
        "host reservations and spot instance requests on creation with their plan id, so that a lost answer is "
        "reconciled by tag instead of by attributes"
    ),
    "iam:PassRole": (
        "let a spot fleet request (ec2:RequestSpotFleet) pass its IamFleetRole to EC2; without it, spot fleet "
        "plans are refused before anything is requested (single spot instance requests need no role)"
    ),
    "es:PurchaseReservedInstanceOffering": (
        "buy OpenSearch reserved instances through OpenSearch's newer API name; without it, plans naming that API "
        "are refused, and the production role's es:PurchaseReservedElasticsearchInstanceOffering is used instead"
    ),
}
