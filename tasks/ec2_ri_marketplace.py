"""Family: EC2 RI marketplace (resale). Actions: ec2:CreateReservedInstancesListing, ec2:CancelReservedInstancesListing.

A listing offers some or all instances of a standard RI to other AWS customers, at an upfront price per instance
that depends on the months left (the price schedule). AWS's rules (aws-commitment-apis.md §6) are checked before
the call: a standard RI, active (so its upfront is paid), held at least 30 days, at least a month left, a count
within the RI's, and no active listing for it already. The plan sets a floor: a schedule with any price below it is
refused. Seller registration is the one rule no EC2 API reports (the account's root user registers once, with a
bank account): AWS's refusal for an unregistered seller fails the plan with ``SellerNotRegistered``.

The listing has a required ``ClientToken``, derived from the plan id and recorded in the intent; the listing is
found again by its RI and that token (``DescribeReservedInstancesListings`` returns it). A cancel has no token,
but it is declarative: cancelling a listing that is already cancelled changes nothing (AWS refuses it as not
active; the plan then reads the listing and succeeds if it is cancelled), and reconciliation checks the target
state, ``cancelled``. AWS still sells the units
a buyer already matched: the cancel reports how many had sold.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any, ClassVar, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.families import EC2_RI_MARKETPLACE
from worker.actions import (
    Absent,
    Action,
    Ambiguous,
    Failed,
    Found,
    Idempotency,
    Intent,
    Nouns,
    Pending,
    PlanFailed,
    Reconciled,
    Submitted,
    register,
)
from worker.errors import error_code
from worker.execution import derive_token
from worker.handle import PlanHandle
from worker.plans import STRICT, UsdAmount

LISTINGS = "ReservedInstancesListings"
MIN_HOLDING = timedelta(days=30)
MONTH = timedelta(days=30)
OPEN_STATES = ("active", "pending")


def _counts(listing: dict[str, Any]) -> dict[str, int]:
    """AWS's InstanceCounts (available, sold, cancelled, pending) as a dict."""
    counts = {"available": 0, "sold": 0, "cancelled": 0, "pending": 0}
    for entry in listing.get("InstanceCounts", []):
        counts[entry["State"]] = int(entry["InstanceCount"])
    return counts


def _listing_result(listing: dict[str, Any], found_by: str) -> dict[str, Any]:
    counts = _counts(listing)
    return {
        "reserved_instances_listing_id": listing["ReservedInstancesListingId"],
        "reserved_instances_id": listing["ReservedInstancesId"],
        "status": listing.get("Status"),
        "instance_counts": counts,
        "units_sold": counts["sold"],
        "price_schedules": [
            {"term": int(s["Term"]), "price_usd": str(Decimal(str(s["Price"]))), "active": bool(s.get("Active"))}
            for s in listing.get("PriceSchedules", [])
        ],
        "found_by": found_by,
    }


def _listings(aws: PlanHandle, **request: str) -> list[dict[str, Any]]:
    return list(aws.read("describe_reserved_instances_listings", **request).get(LISTINGS, []))


# --- ec2:CreateReservedInstancesListing ------------------------------------------------------------------------
class PriceSchedule(BaseModel):
    """One price of the schedule: from ``term`` months left (down to the next term given), ``price`` per
    instance, upfront, in USD (AWS's ``PriceScheduleSpecification``)."""

    model_config = STRICT

    term: int = Field(ge=1, le=36, description="months remaining from which this price applies")
    price: UsdAmount = Field(description="upfront price per instance")
    currency_code: Literal["USD"] = "USD"


class CreateListingParams(BaseModel):
    """Parameters of ec2:CreateReservedInstancesListing (docs/actions/ec2-ri-marketplace.md)."""

    model_config = STRICT

    reserved_instances_id: str = Field(min_length=1)
    instance_count: int = Field(ge=1, le=10_000)
    price_schedules: list[PriceSchedule] = Field(min_length=1, max_length=36)
    min_price_usd: UsdAmount = Field(description="floor: no price of the schedule may be below it")

    @model_validator(mode="after")
    def _distinct_terms(self) -> CreateListingParams:
        terms = [s.term for s in self.price_schedules]
        if len(set(terms)) != len(terms):
            raise ValueError("price_schedules terms must be distinct")
        return self


class ScheduledPrice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    term: int
    price: Decimal


class RiListingIntent(Intent):
    reserved_instances_id: str
    instance_count: int
    price_schedules: list[ScheduledPrice]  # by term, longest first
    min_price_usd: Decimal
    months_left: int  # whole 30-day months left when the intent was made


def _seller_not_registered(exc: ClientError) -> bool:
    """AWS documents no error code for an unregistered seller: its refusal is recognised by what it says."""
    message = str(exc.response.get("Error", {}).get("Message", "")).lower()
    return "seller" in message and "regist" in message


@register
class CreateReservedInstancesListing(Action[CreateListingParams, RiListingIntent]):
    action: ClassVar[str] = "ec2:CreateReservedInstancesListing"
    family = EC2_RI_MARKETPLACE
    service: ClassVar[str] = "ec2"
    params_model = CreateListingParams
    intent_model = RiListingIntent
    idempotency = Idempotency.CLIENT_TOKEN
    nouns = Nouns(resource="reserved instances listing", done="listed", claim_kind="ec2-ri-listing")
    permissions = frozenset({
        "ec2:CreateReservedInstancesListing",
        "ec2:DescribeReservedInstances",
        "ec2:DescribeReservedInstancesListings",
    })

    # --- reads before --------------------------------------------------------------------------------------
    def prepare(self, aws: PlanHandle, params: CreateListingParams) -> RiListingIntent:
        ri = self._ri(aws, params.reserved_instances_id)
        ri_id = ri["ReservedInstancesId"]
        if ri.get("OfferingClass") != "standard":
            raise PlanFailed("NotStandard", f"only standard Reserved Instances can be sold; {ri_id} is "
                             f"{ri.get('OfferingClass')}; nothing was listed")
        if ri.get("State") != "active":
            raise PlanFailed("ReservedInstancesNotActive", f"only active Reserved Instances (upfront paid) can be "
                             f"sold; {ri_id} is {ri.get('State')}; nothing was listed")
        now = aws.aws_now() or aws.now()  # AWS's clock decides the holding period and the time left
        if now - ri["Start"] < MIN_HOLDING:
            sellable_from = (ri["Start"] + MIN_HOLDING).isoformat()
            raise PlanFailed("HeldLessThan30Days", f"{ri_id} started {ri['Start'].isoformat()}: AWS sells Reserved "
                             f"Instances held at least 30 days (from {sellable_from}); nothing was listed",
                             {"start": ri["Start"].isoformat(), "sellable_from": sellable_from})
        if ri["End"] - now < MONTH:
            raise PlanFailed("LessThanAMonthLeft", f"{ri_id} ends {ri['End'].isoformat()}: AWS sells Reserved "
                             "Instances with at least a month left; nothing was listed")
        if params.instance_count > int(ri["InstanceCount"]):
            raise PlanFailed("CountAboveReservedInstances", f"instance_count {params.instance_count} exceeds the "
                             f"{ri['InstanceCount']} instances of {ri_id}; nothing was listed")
        open_listings = [lst for lst in _listings(aws, ReservedInstancesId=ri_id) if lst.get("Status") in OPEN_STATES]
        if open_listings:
            raise PlanFailed("ListingAlreadyActive", f"{ri_id} already has an open listing "
                             f"{[lst['ReservedInstancesListingId'] for lst in open_listings]}; cancel it first; "
                             "nothing was listed")
        below = [s for s in params.price_schedules if s.price < params.min_price_usd]
        if below:
            raise PlanFailed(
                "PriceBelowFloor",
                f"prices {[f'{s.price} USD at {s.term} months' for s in below]} are below the floor min_price_usd "
                f"{params.min_price_usd}; nothing was listed",
                {"below_floor": [{"term": s.term, "price_usd": str(s.price)} for s in below],
                 "min_price_usd": str(params.min_price_usd)},
            )
        schedules = sorted((ScheduledPrice(term=s.term, price=s.price) for s in params.price_schedules),
                           key=lambda s: -s.term)
        return RiListingIntent(
            reserved_instances_id=ri_id,
            instance_count=params.instance_count,
            price_schedules=schedules,
            min_price_usd=params.min_price_usd,
            months_left=int((ri["End"] - now) / MONTH),
            idempotency_value=derive_token(aws.plan_id),  # 48 ASCII characters; EC2 allows 64
        )

    def _ri(self, aws: PlanHandle, ri_id: str) -> dict[str, Any]:
        try:
            found = aws.read("describe_reserved_instances", ReservedInstancesIds=[ri_id])["ReservedInstances"]
        except ClientError as exc:
            if error_code(exc) != "InvalidReservedInstancesId":
                raise
            found = []
        if not found:
            raise PlanFailed("UnknownReservedInstances", f"Reserved Instances {ri_id} do not exist in "
                             f"{aws.region}; nothing was listed")
        return dict(found[0])

    # --- the call ------------------------------------------------------------------------------------------
    def submit(self, aws: PlanHandle, params: CreateListingParams, intent: RiListingIntent) -> Submitted:
        try:
            response = aws.send(
                "create_reserved_instances_listing",
                ReservedInstancesId=intent.reserved_instances_id,
                InstanceCount=intent.instance_count,
                # The wire type is a double: the decimal is converted here, at the edge, and nowhere else.
                PriceSchedules=[{"Term": s.term, "Price": float(s.price), "CurrencyCode": "USD"}
                                for s in intent.price_schedules],
                ClientToken=intent.idempotency_value,
            )
        except ClientError as exc:
            if _seller_not_registered(exc):
                raise self._seller_refusal(aws, exc) from exc
            raise
        listing = response[LISTINGS][0]
        result = _listing_result(listing, "response")
        if listing.get("Status") == "pending":
            return Submitted(result, (), follow=f"listing {listing['ReservedInstancesListingId']} is pending")
        return Submitted(result, (listing["ReservedInstancesListingId"],))

    @staticmethod
    def _seller_refusal(aws: PlanHandle, exc: ClientError) -> ClientError:
        """AWS's refusal, renamed to the rule it enforces (still a terminal AWS answer: the plan fails with it)."""
        error = exc.response.get("Error", {})
        message = (f"account {aws.account.account_id} is not registered as a seller in the Reserved Instance "
                   "Marketplace (an account setting no EC2 API reports: the root user registers once, with a bank "
                   f"account, in the EC2 console); AWS answered {error.get('Code')}: {error.get('Message')}; "
                   "nothing was listed")
        return ClientError({"Error": {"Code": "SellerNotRegistered", "Message": message},
                            "ResponseMetadata": exc.response.get("ResponseMetadata", {})}, exc.operation_name)

    # --- reconciliation ------------------------------------------------------------------------------------
    def reconcile(self, aws: PlanHandle, params: CreateListingParams, intent: RiListingIntent) -> Reconciled:
        listings = _listings(aws, ReservedInstancesId=intent.reserved_instances_id)
        mine = [lst for lst in listings if lst.get("ClientToken") == intent.idempotency_value]
        evidence: dict[str, Any] = {"found_by": "client_token", "listings": [
            {"id": lst["ReservedInstancesListingId"], "status": lst.get("Status")} for lst in listings]}
        if not mine:
            return Absent(evidence)
        if len(mine) > 1:  # AWS deduplicates by token: never expected
            return Ambiguous(tuple(lst["ReservedInstancesListingId"] for lst in mine), evidence)
        listing = mine[0]
        if listing.get("Status") == "pending":
            return Pending(f"listing {listing['ReservedInstancesListingId']} is pending", evidence)
        return Found(_listing_result(listing, "client_token"), (listing["ReservedInstancesListingId"],), evidence)


# --- ec2:CancelReservedInstancesListing ------------------------------------------------------------------------
class CancelListingParams(BaseModel):
    """Parameters of ec2:CancelReservedInstancesListing: the listing, or the RI whose active listing to cancel."""

    model_config = STRICT

    reserved_instances_listing_id: str | None = Field(None, min_length=1)
    reserved_instances_id: str | None = Field(None, min_length=1, description="cancel this RI's active listing")

    @model_validator(mode="after")
    def _one_way(self) -> CancelListingParams:
        if (self.reserved_instances_listing_id is None) == (self.reserved_instances_id is None):
            raise ValueError("give exactly one of reserved_instances_listing_id and reserved_instances_id")
        return self


class RiListingCancelIntent(Intent):
    reserved_instances_listing_id: str
    reserved_instances_id: str
    instance_counts_before: dict[str, int]


@register
class CancelReservedInstancesListing(Action[CancelListingParams, RiListingCancelIntent]):
    action: ClassVar[str] = "ec2:CancelReservedInstancesListing"
    family = EC2_RI_MARKETPLACE
    service: ClassVar[str] = "ec2"
    params_model = CancelListingParams
    intent_model = RiListingCancelIntent
    idempotency = Idempotency.NONE
    # Its own namespace: the listing stays claimed by the plan that created it.
    nouns = Nouns(resource="reserved instances listing", done="cancelled", claim_kind="ec2-ri-listing-cancel")
    permissions = frozenset({"ec2:CancelReservedInstancesListing", "ec2:DescribeReservedInstancesListings"})

    def prepare(self, aws: PlanHandle, params: CancelListingParams) -> RiListingCancelIntent:
        if params.reserved_instances_listing_id is not None:
            listings = _listings(aws, ReservedInstancesListingId=params.reserved_instances_listing_id)
            if not listings:
                raise PlanFailed("ListingNotFound", f"listing {params.reserved_instances_listing_id} does not exist "
                                 f"in {aws.region}; nothing was cancelled")
            listing = listings[0]
            if listing.get("Status") != "active":
                counts = _counts(listing)
                raise PlanFailed("ListingNotActive", f"listing {listing['ReservedInstancesListingId']} is "
                                 f"{listing.get('Status')} ({counts['sold']} sold): only an active listing can be "
                                 "cancelled; nothing was cancelled", {"instance_counts": counts})
        else:
            assert params.reserved_instances_id is not None  # the params validator demands one of the two
            listings = _listings(aws, ReservedInstancesId=params.reserved_instances_id)
            active = [lst for lst in listings if lst.get("Status") == "active"]
            if not active:
                raise PlanFailed("NoActiveListing", f"Reserved Instances {params.reserved_instances_id} have no "
                                 "active listing; nothing was cancelled", {"listings": [
                                     {"id": lst["ReservedInstancesListingId"], "status": lst.get("Status")}
                                     for lst in listings]})
            if len(active) > 1:
                raise PlanFailed("AmbiguousListing", f"{len(active)} active listings for "
                                 f"{params.reserved_instances_id}; name one with reserved_instances_listing_id; "
                                 "nothing was cancelled",
                                 {"listing_ids": [lst["ReservedInstancesListingId"] for lst in active]})
            listing = active[0]
        listing_id = listing["ReservedInstancesListingId"]
        return RiListingCancelIntent(
            reserved_instances_listing_id=listing_id,
            reserved_instances_id=listing["ReservedInstancesId"],
            instance_counts_before=_counts(listing),
            # One plan at a time per listing: its state then tells whose cancel it sees.
            signature=f"ec2-ri-listing-cancel:{aws.account.account_id}:{aws.region}:{listing_id}",
        )

    def submit(self, aws: PlanHandle, params: CancelListingParams, intent: RiListingCancelIntent) -> Submitted:
        try:
            response = aws.send("cancel_reserved_instances_listing",
                                ReservedInstancesListingId=intent.reserved_instances_listing_id)
        except ClientError as exc:
            if error_code(exc) != "InvalidInput":
                raise
            # AWS refuses to cancel a listing that is no longer active. The cancel is declarative: a listing already
            # cancelled (by this plan's own call, applied after its answer was lost, or by hand) is the target
            # state, and a repeat changed nothing. Any other state is AWS's refusal, and the plan fails with it.
            # (Not a done signal: with the listing still active, that would re-send after every conclusive absence.)
            listings = _listings(aws, ReservedInstancesListingId=intent.reserved_instances_listing_id)
            if listings and listings[0].get("Status") == "cancelled":
                return Submitted(_listing_result(listings[0], "already_cancelled"),
                                 (intent.reserved_instances_listing_id,))
            raise
        listing = response[LISTINGS][0]
        return Submitted(_listing_result(listing, "response"), (intent.reserved_instances_listing_id,))

    def reconcile(self, aws: PlanHandle, params: CancelListingParams, intent: RiListingCancelIntent) -> Reconciled:
        listings = _listings(aws, ReservedInstancesListingId=intent.reserved_instances_listing_id)
        status = listings[0].get("Status") if listings else None
        evidence: dict[str, Any] = {"status": status}
        if status == "cancelled":  # the target state
            return Found(_listing_result(listings[0], "status"), (intent.reserved_instances_listing_id,), evidence)
        if status == "closed":  # sold out, or its RI stopped being active, before the cancel
            counts = _counts(listings[0])
            return Failed("ListingClosed", f"listing {intent.reserved_instances_listing_id} closed before it was "
                          f"cancelled ({counts['sold']} sold); nothing was cancelled", {"instance_counts": counts})
        return Absent(evidence)
