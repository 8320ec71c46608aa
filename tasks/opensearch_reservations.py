"""Family: OpenSearch / Elasticsearch reserved instances. Actions: es:PurchaseReservedElasticsearchInstanceOffering
and its alias es:PurchaseReservedElasticsearchInstance (the production role names both).

The purchase's only customer label is ``ReservationName``. AWS models ResourceAlreadyExistsException for it but
promises neither that names are unique nor a filter by name (aws-commitment-apis.md §1), so the purchase is
treated as a call without a token (docs/exactly-once.md): one plan at a time per offering (the intent's
``signature``), the intent and a durable send record before the call, and a reconciling read that matches the
offering, the count, a start at or after AWS's own time when the intent was made, and the name derived from the
plan id. Where AWS does refuse a repeated name, that refusal only means "look" (``done_signals``).

Two APIs buy the same reservations: Elasticsearch's (boto3 ``es``, the production role's
es:PurchaseReservedElasticsearchInstanceOffering, the default) and OpenSearch's newer one (boto3 ``opensearch``,
IAM es:PurchaseReservedInstanceOffering, which the production role does not grant). A plan chooses with
``params.api``; ``"opensearch"`` is carried out only for accounts that granted that extra permission
(config/permissions.py) and is refused before any read otherwise (``OptionalPermissionNotGranted``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field, model_validator

from config.permissions import EXTRA_PERMISSIONS
from tasks.families import OPENSEARCH_RESERVATIONS
from worker.actions import (
    YEAR_SECONDS,
    Absent,
    Action,
    Ambiguous,
    Found,
    Idempotency,
    Intent,
    Nouns,
    PlanFailed,
    Reconciled,
    Submitted,
    register,
)
from worker.handle import PlanHandle
from worker.plans import STRICT, NotBoolean, UsdAmount

BOUGHT_STATES = ("payment-pending", "active")
GUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
OPENSEARCH_PURCHASE = "es:PurchaseReservedInstanceOffering"


@dataclass(frozen=True)
class SearchApi:
    """The same operations under each API's names."""

    name: str
    service: str  # the boto3 client
    suffix: str  # instance types end with it
    describe_offerings: str
    purchase: str
    describe_reservations: str
    offering_id: str
    instance_type: str
    reservation_id: str
    instance_count: str
    offerings_key: str
    reservations_key: str


ELASTICSEARCH = SearchApi(
    "elasticsearch", "es", ".elasticsearch",
    "describe_reserved_elasticsearch_instance_offerings", "purchase_reserved_elasticsearch_instance_offering",
    "describe_reserved_elasticsearch_instances",
    "ReservedElasticsearchInstanceOfferingId", "ElasticsearchInstanceType", "ReservedElasticsearchInstanceId",
    "ElasticsearchInstanceCount", "ReservedElasticsearchInstanceOfferings", "ReservedElasticsearchInstances",
)
OPENSEARCH = SearchApi(
    "opensearch", "opensearch", ".search",
    "describe_reserved_instance_offerings", "purchase_reserved_instance_offering", "describe_reserved_instances",
    "ReservedInstanceOfferingId", "InstanceType", "ReservedInstanceId",
    "InstanceCount", "ReservedInstanceOfferings", "ReservedInstances",
)
APIS = {api.name: api for api in (ELASTICSEARCH, OPENSEARCH)}


def reservation_name(plan_id: str) -> str:
    """The plan's ReservationName (5–64 characters): stable across retries, crashes and workers, and distinct
    per plan id, whatever the plan id's length."""
    return "commitd-" + hashlib.sha256(plan_id.encode()).hexdigest()[:40]


class PurchaseReservedSearchInstanceParams(BaseModel):
    """Parameters of es:PurchaseReservedElasticsearchInstanceOffering (docs/actions/opensearch-reservations.md)."""

    model_config = STRICT

    api: Literal["elasticsearch", "opensearch"] = Field(
        "elasticsearch", description="elasticsearch: the production role's API; opensearch: the newer API, only "
        "where the account granted es:PurchaseReservedInstanceOffering")
    instance_type: str = Field(pattern=r"^[a-z][a-z0-9]*\.[a-z0-9]+\.(elasticsearch|search)$",
                               examples=["m5.large.elasticsearch", "m5.large.search"])
    payment_option: Literal["NO_UPFRONT", "PARTIAL_UPFRONT", "ALL_UPFRONT"]
    duration_years: Annotated[Literal[1, 3], NotBoolean]
    instance_count: int = Field(ge=1, le=1_000)
    offering_id: str | None = Field(None, pattern=GUID, description="pin one offering; it must match the fields")
    max_upfront_usd: UsdAmount = Field(description="ceiling on the total upfront for all instances")
    max_hourly_usd: UsdAmount = Field(description="ceiling on the recurring hourly price per instance")
    max_total_usd: UsdAmount = Field(description="ceiling on the total commitment: upfront + recurring over the term")

    @model_validator(mode="after")
    def _type_of_the_api(self) -> PurchaseReservedSearchInstanceParams:
        suffix = APIS[self.api].suffix
        if not self.instance_type.endswith(suffix):
            raise ValueError(f"instance_type: the {self.api} API names instance types '*{suffix}' "
                             f"(e.g. m5.large{suffix})")
        return self

    @property
    def term_hours(self) -> int:
        return self.duration_years * YEAR_SECONDS // 3600


class SearchPurchaseIntent(Intent):
    api: Literal["elasticsearch", "opensearch"]
    offering_id: str
    instance_type: str
    instance_count: int
    duration: int  # seconds
    payment_option: str
    reservation_name: str  # derived from the plan id, persisted before the call
    upfront_usd: Decimal  # total for all instances
    hourly_usd: Decimal  # recurring, per instance
    started_after: datetime  # AWS's time when the intent was made, less its tolerance


def _hourly(offering: dict[str, Any]) -> Decimal:
    recurring = sum(
        (Decimal(str(c["RecurringChargeAmount"])) for c in offering.get("RecurringCharges", [])
         if c.get("RecurringChargeFrequency") == "Hourly"),
        Decimal(0),
    )
    return recurring + Decimal(str(offering.get("UsagePrice", 0)))


@register
class PurchaseReservedElasticsearchInstanceOffering(
    Action[PurchaseReservedSearchInstanceParams, SearchPurchaseIntent]
):
    action: ClassVar[str] = "es:PurchaseReservedElasticsearchInstanceOffering"
    family = OPENSEARCH_RESERVATIONS
    service: ClassVar[str] = "es"
    params_model = PurchaseReservedSearchInstanceParams
    intent_model = SearchPurchaseIntent
    idempotency = Idempotency.NONE
    nouns = Nouns(resource="reserved search instances", done="bought", claim_kind="search-reserved-instance")
    permissions = frozenset({
        "es:PurchaseReservedElasticsearchInstanceOffering",
        # The production role's second name for this purchase: not an API and unknown to IAM's catalogue, so it
        # authorizes no call; declared because plans may name it (the alias below is registered under it).
        "es:PurchaseReservedElasticsearchInstance",
        "es:DescribeReservedElasticsearchInstanceOfferings",
        "es:DescribeReservedElasticsearchInstances",
        # The opensearch API's reads (within the role's es:Describe*), used only by plans with api "opensearch".
        "es:DescribeReservedInstanceOfferings",
        "es:DescribeReservedInstances",
    })
    optional_permissions = frozenset({OPENSEARCH_PURCHASE})
    # Where AWS refuses a ReservationName already used, this plan's earlier send may have bought: look.
    done_signals = frozenset({"ResourceAlreadyExistsException"})

    def max_commitment_usd(self, params: PurchaseReservedSearchInstanceParams) -> Decimal:
        by_parts = params.max_upfront_usd + params.max_hourly_usd * params.instance_count * params.term_hours
        return min(params.max_total_usd, by_parts)

    # --- reads before --------------------------------------------------------------------------------------
    def prepare(self, aws: PlanHandle, params: PurchaseReservedSearchInstanceParams) -> SearchPurchaseIntent:
        p = params
        api = APIS[p.api]
        if api is OPENSEARCH and not aws.account.granted(OPENSEARCH_PURCHASE):
            raise PlanFailed("OptionalPermissionNotGranted", f"api 'opensearch' buys with "
                             f"{OPENSEARCH_PURCHASE}, which the production role does not grant and account "
                             f"{aws.account.account_id} did not grant as an extra permission (it would "
                             f"{EXTRA_PERMISSIONS[OPENSEARCH_PURCHASE]}); use api 'elasticsearch' "
                             "(es:PurchaseReservedElasticsearchInstanceOffering); nothing was bought",
                             {"permission": OPENSEARCH_PURCHASE})
        offering = self._one_offering(aws, api, p)
        if offering.get("CurrencyCode", "USD") != "USD":
            raise PlanFailed("UnsupportedCurrency", f"offering is priced in {offering['CurrencyCode']}, ceilings "
                             "are in USD; nothing was bought")
        duration = int(offering["Duration"])
        upfront = Decimal(str(offering["FixedPrice"])) * p.instance_count
        hourly = _hourly(offering)
        total = upfront + hourly * p.instance_count * (duration // 3600)
        for figure, ceiling, name, what in (
            (upfront, p.max_upfront_usd, "upfront", f"upfront {upfront} USD for {p.instance_count} instances"),
            (hourly, p.max_hourly_usd, "hourly", f"recurring {hourly} USD/hour per instance"),
            (total, p.max_total_usd, "total", f"total commitment {total} USD (upfront plus recurring over the "
                                              "term)"),
        ):
            if figure > ceiling:
                raise PlanFailed("PriceAboveCeiling", f"{what} exceeds max_{name}_usd {ceiling}; nothing was bought",
                                 {f"{name}_usd": str(figure), f"max_{name}_usd": str(ceiling)})
        offering_id = offering[api.offering_id]
        return SearchPurchaseIntent(
            api=p.api,
            offering_id=offering_id,
            instance_type=offering[api.instance_type],
            instance_count=p.instance_count,
            duration=duration,
            payment_option=offering["PaymentOption"],
            reservation_name=reservation_name(aws.plan_id),
            upfront_usd=upfront,
            hourly_usd=hourly,
            commitment_usd=total,
            started_after=aws.earliest_start(),
            # One plan at a time per offering, whichever of the role's names the plan used.
            signature=f"search-ri:{aws.account.account_id}:{aws.region}:{p.api}:{offering_id}",
        )

    def _one_offering(self, aws: PlanHandle, api: SearchApi, p: PurchaseReservedSearchInstanceParams
                      ) -> dict[str, Any]:
        # The describe call filters by nothing but the offering id: match the rest here.
        request: dict[str, Any] = {api.offering_id: p.offering_id} if p.offering_id else {}
        try:
            offerings = aws.paginate(api.describe_offerings, api.offerings_key, service=api.service, **request)
        except ClientError as exc:
            if p.offering_id and exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                offerings = []
            else:
                raise
        matching = [
            o for o in offerings
            if o.get(api.instance_type) == p.instance_type
            and o.get("PaymentOption") == p.payment_option
            and int(o.get("Duration", 0)) == p.duration_years * YEAR_SECONDS
        ]
        if not matching:
            what = f"offering {p.offering_id}" if p.offering_id else "no offering"
            raise PlanFailed("NoMatchingOffering", f"{what} matches {p.instance_type} {p.payment_option} "
                             f"{p.duration_years}y in {aws.region} ({p.api} API); nothing was bought")
        if len(matching) > 1:
            raise PlanFailed("AmbiguousOffering", f"{len(matching)} offerings match; pin one with "
                             "params.offering_id; nothing was bought",
                             {"offering_ids": [o[api.offering_id] for o in matching]})
        return matching[0]

    # --- the call ------------------------------------------------------------------------------------------
    def submit(
        self, aws: PlanHandle, params: PurchaseReservedSearchInstanceParams, intent: SearchPurchaseIntent
    ) -> Submitted:
        api = APIS[intent.api]
        request = {api.offering_id: intent.offering_id, "ReservationName": intent.reservation_name,
                   "InstanceCount": intent.instance_count}
        # The newer API goes through the opensearch client; the es action's own client serves the other.
        response = aws.send_via(api.service, api.purchase, **request)
        reservation_id = response[api.reservation_id]
        return Submitted(self._result(intent, reservation_id, intent.instance_count, "response"), (reservation_id,))

    def _result(self, intent: SearchPurchaseIntent, reservation_id: str, count: int, found_by: str
                ) -> dict[str, Any]:
        return {"reserved_instance_id": reservation_id, "reservation_name": intent.reservation_name,
                "api": intent.api, "offering_id": intent.offering_id, "instance_type": intent.instance_type,
                "instance_count": count, "upfront_usd": str(intent.upfront_usd),
                "hourly_usd": str(intent.hourly_usd), "found_by": found_by}

    # --- reconciliation ------------------------------------------------------------------------------------
    def reconcile(
        self, aws: PlanHandle, params: PurchaseReservedSearchInstanceParams, intent: SearchPurchaseIntent
    ) -> Reconciled:
        api = APIS[intent.api]
        candidates = self._matching(aws, intent)
        elsewhere = aws.claimed_elsewhere([c[api.reservation_id] for c in candidates])
        mine = [c for c in candidates if c[api.reservation_id] not in elsewhere]
        evidence = {"matched": [c[api.reservation_id] for c in mine]}
        if not mine:
            return Absent(evidence)
        if len(mine) > 1:  # AWS let the same name be bought twice
            return Ambiguous(tuple(evidence["matched"]), evidence)
        found = mine[0]
        return Found(self._result(intent, found[api.reservation_id], found[api.instance_count], "attributes"),
                     (found[api.reservation_id],), evidence)

    def look_alikes(
        self, aws: PlanHandle, params: PurchaseReservedSearchInstanceParams, intent: SearchPurchaseIntent,
        own: tuple[str, ...],
    ) -> dict[str, datetime]:
        # A duplicate send of this plan carries this plan's name too.
        api = APIS[intent.api]
        return {c[api.reservation_id]: c["StartTime"] for c in self._matching(aws, intent)}

    def _matching(self, aws: PlanHandle, intent: SearchPurchaseIntent) -> list[dict[str, Any]]:
        """Reservations of the intent's offering, count and name that started at or after the intent (AWS's
        clock). Matched here: the describe call has no filter by name."""
        api = APIS[intent.api]
        reservations = aws.paginate(api.describe_reservations, api.reservations_key, service=api.service)
        return [
            r for r in reservations
            if r.get(api.offering_id) == intent.offering_id
            and r.get(api.instance_count) == intent.instance_count
            and r.get("ReservationName") == intent.reservation_name
            and r.get("State") in BOUGHT_STATES
            and r["StartTime"] >= intent.started_after
        ]


@register
class PurchaseReservedElasticsearchInstance(PurchaseReservedElasticsearchInstanceOffering):
    """The production role's other name for the same purchase (not an API name): plans may use either."""

    action: ClassVar[str] = "es:PurchaseReservedElasticsearchInstance"
