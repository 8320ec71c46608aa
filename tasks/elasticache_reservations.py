"""Family: ElastiCache reservations. Action: elasticache:PurchaseReservedCacheNodesOffering.

The customer-chosen ``ReservedCacheNodeId`` is the idempotency handle (aws-commitment-apis.md §1): derived from
the plan id and recorded in the intent before the call (without one, ElastiCache would generate an id and a
re-send would buy again), so AWS itself refuses a second purchase under it (``ReservedCacheNodeAlreadyExists``,
which only means "look": ``done_signals``). Reconciliation describes the reservation by that id. The shared
mechanics are in tasks/_reserved_by_id.py, which RDS uses too.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tasks._reserved_by_id import ReservationApi, ReservationParams, ReservedByIdAction
from tasks.families import ELASTICACHE_RESERVATIONS
from worker.actions import Nouns, register


class PurchaseReservedCacheNodesParams(ReservationParams):
    """Parameters of elasticache:PurchaseReservedCacheNodesOffering (docs/actions/elasticache-reservations.md)."""

    AWS_NAMES: ClassVar[dict[str, str]] = {
        "cache_node_type": "CacheNodeType",
        "product_description": "ProductDescription",
        "duration_years": "Duration",
        "offering_type": "OfferingType",
    }

    cache_node_type: str | None = Field(None, pattern=r"^cache\.[a-z0-9-]+\.[a-z0-9]+$",
                                        examples=["cache.r5.large"])
    cache_node_count: int = Field(1, ge=1, le=10_000)

    @property
    def count(self) -> int:
        return self.cache_node_count


@register
class PurchaseReservedCacheNodesOffering(ReservedByIdAction[PurchaseReservedCacheNodesParams]):
    action: ClassVar[str] = "elasticache:PurchaseReservedCacheNodesOffering"
    family = ELASTICACHE_RESERVATIONS
    service: ClassVar[str] = "elasticache"
    params_model = PurchaseReservedCacheNodesParams
    nouns = Nouns(resource="reserved cache nodes", done="bought", claim_kind="elasticache-reserved-cache-node")
    permissions = frozenset({
        "elasticache:PurchaseReservedCacheNodesOffering",
        "elasticache:DescribeReservedCacheNodesOfferings",
        "elasticache:DescribeReservedCacheNodes",
    })
    done_signals = frozenset({"ReservedCacheNodeAlreadyExists"})
    api = ReservationApi(
        offerings_operation="describe_reserved_cache_nodes_offerings",
        offerings_key="ReservedCacheNodesOfferings",
        offering_id_key="ReservedCacheNodesOfferingId",
        purchase_operation="purchase_reserved_cache_nodes_offering",
        purchased_key="ReservedCacheNode",
        reservation_id_key="ReservedCacheNodeId",
        count_key="CacheNodeCount",
        reservations_operation="describe_reserved_cache_nodes",
        reservations_key="ReservedCacheNodes",
        arn_key="ReservationARN",
        not_found_code="ReservedCacheNodeNotFound",
        currency_key=None,  # ElastiCache offerings name no currency: AWS prices them in USD
        result_names={"id": "reserved_cache_node_id", "arn": "reservation_arn", "count": "cache_node_count"},
    )
    offering_attributes = ("CacheNodeType", "ProductDescription", "Duration", "OfferingType")
