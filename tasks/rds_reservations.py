"""Family: RDS reservations. Action: rds:PurchaseReservedDbInstancesOffering.

The customer-chosen ``ReservedDBInstanceId`` is the idempotency handle (aws-commitment-apis.md §1): derived
from the plan id and recorded in the intent before the call, so AWS itself refuses a second purchase under it
(``ReservedDBInstanceAlreadyExists``, which only means "look": ``done_signals``). Reconciliation describes the
reservation by that id. The shared mechanics (offering resolution, ceilings, the id, reconciliation) are in
tasks/_reserved_by_id.py, which ElastiCache uses too.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tasks._reserved_by_id import ReservationApi, ReservationParams, ReservedByIdAction
from tasks.families import RDS_RESERVATIONS
from worker.actions import Nouns, register


class PurchaseReservedDbInstancesParams(ReservationParams):
    """Parameters of rds:PurchaseReservedDBInstancesOffering (docs/actions/rds-reservations.md)."""

    AWS_NAMES: ClassVar[dict[str, str]] = {
        "db_instance_class": "DBInstanceClass",
        "product_description": "ProductDescription",
        "duration_years": "Duration",
        "offering_type": "OfferingType",
        "multi_az": "MultiAZ",
    }

    db_instance_class: str | None = Field(None, pattern=r"^db\.[a-z0-9-]+\.[a-z0-9]+$", examples=["db.r5.large"])
    multi_az: bool | None = None
    db_instance_count: int = Field(1, ge=1, le=10_000)

    @property
    def count(self) -> int:
        return self.db_instance_count


@register
class PurchaseReservedDbInstancesOffering(ReservedByIdAction[PurchaseReservedDbInstancesParams]):
    action: ClassVar[str] = "rds:PurchaseReservedDbInstancesOffering"
    family = RDS_RESERVATIONS
    service: ClassVar[str] = "rds"
    params_model = PurchaseReservedDbInstancesParams
    nouns = Nouns(resource="reserved DB instances", done="bought", claim_kind="rds-reserved-db-instance")
    permissions = frozenset({
        "rds:PurchaseReservedDbInstancesOffering",
        "rds:DescribeReservedDBInstancesOfferings",
        "rds:DescribeReservedDBInstances",
    })
    done_signals = frozenset({"ReservedDBInstanceAlreadyExists"})
    api = ReservationApi(
        offerings_operation="describe_reserved_db_instances_offerings",
        offerings_key="ReservedDBInstancesOfferings",
        offering_id_key="ReservedDBInstancesOfferingId",
        purchase_operation="purchase_reserved_db_instances_offering",
        purchased_key="ReservedDBInstance",
        reservation_id_key="ReservedDBInstanceId",
        count_key="DBInstanceCount",
        reservations_operation="describe_reserved_db_instances",
        reservations_key="ReservedDBInstances",
        arn_key="ReservedDBInstanceArn",
        not_found_code="ReservedDBInstanceNotFound",
        currency_key="CurrencyCode",
        result_names={"id": "reserved_db_instance_id", "arn": "reserved_db_instance_arn",
                      "count": "db_instance_count"},
    )
    offering_attributes = ("DBInstanceClass", "ProductDescription", "Duration", "OfferingType", "MultiAZ")
