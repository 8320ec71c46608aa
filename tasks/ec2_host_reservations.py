"""Family: EC2 Dedicated Host reservations. Action: ec2:PurchaseHostReservation.

A host reservation pays for whole Dedicated Hosts the customer already holds, for one or three years. The
purchase takes a ``ClientToken`` (aws-commitment-apis.md §1, echoed in the answer), derived here from the plan
id and recorded in the intent before the call, so AWS answers a re-send with the original reservation. A token
alone never makes a re-send safe (docs/exactly-once.md): after any unknown outcome the executor reconciles with
``DescribeHostReservations``, which has no client-token filter and does not return the token. Reconciliation
therefore finds the reservation by its plan tag where the customer granted ``ec2:CreateTags`` (tag-on-create),
else by what only this plan's purchase can look like: the same offering, exactly the plan's hosts, and a start
at or after AWS's own time when the intent was made. One plan at a time per set of hosts (the intent's
``signature``) keeps that match attributable; AWS itself refuses to cover a host twice
(``HostAlreadyCoveredByReservation``).

The reservation starts ``payment-pending`` and becomes ``active`` once AWS has taken the payment, or
``payment-failed``: the plan follows it to that end (``Submitted.follow``, ``Pending``), and fails with AWS's
state when the payment fails.

Money: ``GetHostReservationPurchasePreview`` gives the real total upfront and hourly prices for these hosts right
before the call; the plan's ceilings (upfront, hourly, total over the term) are checked against them, and the
previewed upfront is sent as ``LimitPrice`` so that AWS refuses the purchase if the upfront rose since.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field, model_validator

from tasks.families import EC2_HOST_RESERVATIONS
from worker.actions import (
    YEAR_SECONDS,
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
from worker.handle import PlanHandle
from worker.plans import STRICT, NotBoolean, UsdAmount

# Every state a purchase can be in before its term ends (retired is a term that ended: not a fresh purchase).
RECONCILE_STATES = ["payment-pending", "active", "payment-failed"]
# Host states that can be reserved; released or failed hosts cannot.
RESERVABLE_HOST_STATES = {"available", "under-assessment"}
PLAN_TAG = "commitd:plan-id"
PaymentOption = Literal["NoUpfront", "PartialUpfront", "AllUpfront"]


def client_token(plan_id: str) -> str:
    """The plan's ClientToken: deterministic, ASCII, within EC2's 64-character limit (plan ids reach 128)."""
    return "commitd-" + hashlib.sha256(plan_id.encode()).hexdigest()[:40]


class PurchaseHostReservationParams(BaseModel):
    """Parameters of ec2:PurchaseHostReservation. The offering is pinned by ``offering_id`` or chosen by a
    selector (``payment_option`` + ``duration_years``, and ``instance_family``, which defaults to the hosts')."""

    model_config = STRICT

    host_ids: list[Annotated[str, Field(pattern=r"^h-([0-9a-f]{8}|[0-9a-f]{17})$")]] = Field(
        min_length=1, max_length=500, description="the Dedicated Hosts to reserve (AWS's HostIdSet)"
    )
    offering_id: str | None = Field(None, pattern=r"^hro-[0-9a-f]{17}$", description="pin one offering")
    instance_family: str | None = Field(None, pattern=r"^[a-z][a-z0-9-]*$", examples=["m5"])
    payment_option: PaymentOption | None = None
    duration_years: Annotated[Literal[1, 3], NotBoolean] | None = None
    max_upfront_usd: UsdAmount = Field(description="ceiling on the total upfront for all the hosts")
    max_hourly_usd: UsdAmount = Field(description="ceiling on the total recurring hourly price for all the hosts")
    max_total_usd: UsdAmount = Field(description="ceiling on upfront + hourly over the whole term")

    @model_validator(mode="after")
    def _offering_or_selector(self) -> PurchaseHostReservationParams:
        if len(set(self.host_ids)) != len(self.host_ids):
            raise ValueError("host_ids lists a host twice")
        if self.offering_id is None and (self.payment_option is None or self.duration_years is None):
            raise ValueError("give offering_id, or payment_option and duration_years to select the offering")
        return self


class HostReservationIntent(Intent):
    offering_id: str
    host_ids: tuple[str, ...]
    instance_family: str
    payment_option: str
    duration_seconds: int
    upfront_usd: Decimal  # total for all hosts; also the LimitPrice
    hourly_usd: Decimal  # total recurring for all hosts
    started_after: datetime  # AWS's time when the intent was made, less its tolerance
    tagged: bool  # tag-on-create with the plan id (the customer granted ec2:CreateTags)


def _host_family(host: dict[str, Any]) -> str:
    properties = host.get("HostProperties") or {}
    return str(properties.get("InstanceFamily") or str(properties.get("InstanceType") or "").split(".")[0])


@register
class PurchaseHostReservation(Action[PurchaseHostReservationParams, HostReservationIntent]):
    action: ClassVar[str] = "ec2:PurchaseHostReservation"
    family = EC2_HOST_RESERVATIONS
    service: ClassVar[str] = "ec2"
    params_model = PurchaseHostReservationParams
    intent_model = HostReservationIntent
    idempotency = Idempotency.CLIENT_TOKEN
    nouns = Nouns(resource="host reservations", done="bought", claim_kind="ec2-hr")
    permissions = frozenset({
        "ec2:PurchaseHostReservation",
        "ec2:DescribeHosts",
        "ec2:DescribeHostReservationOfferings",
        "ec2:GetHostReservationPurchasePreview",
        "ec2:DescribeHostReservations",
    })
    # Tag-on-create (TagSpecifications) needs ec2:CreateTags on AWS.
    optional_permissions = frozenset({"ec2:CreateTags"})

    def max_commitment_usd(self, params: PurchaseHostReservationParams) -> Decimal:
        return params.max_total_usd

    # --- reads before --------------------------------------------------------------------------------------
    def prepare(self, aws: PlanHandle, params: PurchaseHostReservationParams) -> HostReservationIntent:
        p = params
        family = self._hosts_family(aws, p)
        offering = self._one_offering(aws, p, family)
        if offering["InstanceFamily"] != family:
            raise PlanFailed(
                "HostFamilyMismatch",
                f"offering {offering['OfferingId']} is for instance family {offering['InstanceFamily']}, the hosts "
                f"are {family}; nothing was bought",
                {"offering_family": offering["InstanceFamily"], "host_family": family},
            )
        preview = aws.read("get_host_reservation_purchase_preview", HostIdSet=list(p.host_ids),
                           OfferingId=offering["OfferingId"])
        if preview.get("CurrencyCode", "USD") != "USD":
            raise PlanFailed("UnsupportedCurrency", f"the preview is priced in {preview['CurrencyCode']}, ceilings "
                             "are in USD; nothing was bought")
        upfront = Decimal(str(preview.get("TotalUpfrontPrice") or "0"))
        hourly = Decimal(str(preview.get("TotalHourlyPrice") or "0"))
        duration = int(offering["Duration"])
        total = upfront + hourly * (duration // 3600)
        for figure, value, ceiling, name in (("upfront", upfront, p.max_upfront_usd, "max_upfront_usd"),
                                             ("hourly", hourly, p.max_hourly_usd, "max_hourly_usd"),
                                             ("total over the term", total, p.max_total_usd, "max_total_usd")):
            if value > ceiling:
                raise PlanFailed(
                    "PriceAboveCeiling",
                    f"{figure} {value} USD for {len(p.host_ids)} hosts exceeds {name} {ceiling}; nothing was bought",
                    {"upfront_usd": str(upfront), "hourly_usd": str(hourly), "total_usd": str(total),
                     name: str(ceiling)},
                )
        started_after = aws.earliest_start()
        return HostReservationIntent(
            offering_id=offering["OfferingId"],
            host_ids=tuple(p.host_ids),
            instance_family=offering["InstanceFamily"],
            payment_option=offering["PaymentOption"],
            duration_seconds=duration,
            upfront_usd=upfront,
            hourly_usd=hourly,
            commitment_usd=total,
            started_after=started_after,
            tagged=aws.account.granted("ec2:CreateTags"),
            idempotency_value=client_token(aws.plan_id),
            # Reconciliation matches on the hosts: one plan at a time per set of hosts tells whose purchase it sees.
            signature=f"ec2-hr:{aws.account.account_id}:{aws.region}:{','.join(sorted(p.host_ids))}",
        )

    def _hosts_family(self, aws: PlanHandle, p: PurchaseHostReservationParams) -> str:
        """The hosts exist, can be reserved, are not covered yet, and share one instance family (returned)."""
        try:
            hosts = aws.read("describe_hosts", HostIds=list(p.host_ids)).get("Hosts", [])
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")).lower().startswith("invalidhostid"):
                raise PlanFailed("HostNotFound", f"{exc.response['Error'].get('Message')}; nothing was bought",
                                 {"host_ids": list(p.host_ids)}) from exc
            raise
        by_id = {h["HostId"]: h for h in hosts}
        missing = [h for h in p.host_ids if h not in by_id]
        if missing:
            raise PlanFailed("HostNotFound", f"hosts {missing} do not exist in {aws.account.account_id} "
                             f"{aws.region}; nothing was bought", {"host_ids": missing})
        unusable = {h: by_id[h].get("State") for h in p.host_ids if by_id[h].get("State") not in RESERVABLE_HOST_STATES}
        if unusable:
            raise PlanFailed("HostNotAvailable", f"hosts cannot be reserved in their state: {unusable}; nothing was "
                             "bought", {"states": unusable})
        covered = {h: by_id[h]["HostReservationId"] for h in p.host_ids if by_id[h].get("HostReservationId")}
        if covered:
            raise PlanFailed("HostAlreadyCovered", f"hosts are already covered by a reservation: {covered}; nothing "
                             "was bought", {"covered": covered})
        families = {h: _host_family(by_id[h]) for h in p.host_ids}
        if len(set(families.values())) != 1:
            raise PlanFailed("HostFamilyMismatch", f"the hosts support different instance families: {families}; one "
                             "reservation covers one family; nothing was bought", {"families": families})
        family = next(iter(families.values()))
        if p.instance_family is not None and p.instance_family != family:
            raise PlanFailed("HostFamilyMismatch", f"the hosts support instance family {family}, the plan asks for "
                             f"{p.instance_family}; nothing was bought", {"host_family": family})
        return family

    def _one_offering(self, aws: PlanHandle, p: PurchaseHostReservationParams, family: str) -> dict[str, Any]:
        """The offering: the pinned one (which must agree with any selector field given), or the only one the
        selector matches."""
        if p.offering_id:
            pinned = aws.paginate("describe_host_reservation_offerings", "OfferingSet", OfferingId=p.offering_id)
            if not pinned:
                raise PlanFailed("NoMatchingOffering", f"offering {p.offering_id} does not exist in {aws.region}; "
                                 "nothing was bought")
            offering = dict(pinned[0])
            disagree = {name: {"plan": wanted, "offering": actual} for name, wanted, actual in (
                ("payment_option", p.payment_option, offering.get("PaymentOption")),
                ("duration_years", p.duration_years, int(offering.get("Duration", 0)) // YEAR_SECONDS),
                ("instance_family", p.instance_family, offering.get("InstanceFamily")),
            ) if wanted is not None and wanted != actual}
            if disagree:
                raise PlanFailed("OfferingMismatch", f"offering {p.offering_id} does not match the plan: {disagree}; "
                                 "nothing was bought", {"mismatch": disagree})
            return offering
        assert p.duration_years is not None and p.payment_option is not None  # the params model requires them
        what = f"{p.instance_family or family} {p.payment_option} {p.duration_years}y"
        offerings = aws.paginate(
            "describe_host_reservation_offerings", "OfferingSet",
            Filter=[{"Name": "instance-family", "Values": [p.instance_family or family]},
                    {"Name": "payment-option", "Values": [p.payment_option]}],
            MinDuration=p.duration_years * YEAR_SECONDS, MaxDuration=p.duration_years * YEAR_SECONDS,
        )
        if not offerings:
            raise PlanFailed("NoMatchingOffering", f"no host reservation offering matches {what} in {aws.region}; "
                             "nothing was bought")
        if len(offerings) > 1:
            raise PlanFailed(
                "AmbiguousOffering",
                f"{len(offerings)} host reservation offerings match {what}; pin one with params.offering_id; nothing "
                "was bought",
                {"offering_ids": [o["OfferingId"] for o in offerings]},
            )
        return dict(offerings[0])

    # --- the call ------------------------------------------------------------------------------------------
    def _request(self, aws: PlanHandle, intent: HostReservationIntent) -> dict[str, Any]:
        request: dict[str, Any] = {
            "HostIdSet": list(intent.host_ids),
            "OfferingId": intent.offering_id,
            "ClientToken": intent.idempotency_value,
            # AWS refuses (LimitPriceExceeded) if the total upfront rose above what the preview showed.
            "LimitPrice": str(intent.upfront_usd),
            "CurrencyCode": "USD",
        }
        if intent.tagged:
            request["TagSpecifications"] = [{"ResourceType": "host-reservation", "Tags": [
                {"Key": PLAN_TAG, "Value": aws.plan_id}, {"Key": "commitd:managed-by", "Value": "commitd"}]}]
        return request

    def submit(
        self, aws: PlanHandle, params: PurchaseHostReservationParams, intent: HostReservationIntent
    ) -> Submitted:
        response = aws.send("purchase_host_reservation", **self._request(aws, intent))
        [purchase] = response["Purchase"]
        hr_id = purchase["HostReservationId"]
        result = self._result(intent, hr_id, purchase.get("HostIdSet", list(intent.host_ids)), "payment-pending",
                              "response")
        # The reservation is payment-pending until AWS has taken the payment: follow it to active (or failed).
        return Submitted(result, (hr_id,), follow=f"host reservation {hr_id} awaits its payment")

    def dry_run(
        self, aws: PlanHandle, params: PurchaseHostReservationParams, intent: HostReservationIntent
    ) -> dict[str, Any]:
        # PurchaseHostReservation has no DryRun: the preview made in prepare is the rehearsal.
        return {"would_buy": {"offering_id": intent.offering_id, "host_ids": list(intent.host_ids),
                              "upfront_usd": str(intent.upfront_usd), "hourly_usd": str(intent.hourly_usd),
                              "commitment_usd": str(intent.commitment_usd)},
                "aws_answer": "GetHostReservationPurchasePreview"}

    def _result(self, intent: HostReservationIntent, hr_id: str, host_ids: list[str], state: str,
                found_by: str) -> dict[str, Any]:
        return {"host_reservation_id": hr_id, "offering_id": intent.offering_id, "host_ids": list(host_ids),
                "state": state, "upfront_usd": str(intent.upfront_usd), "hourly_usd": str(intent.hourly_usd),
                "client_token": intent.idempotency_value, "found_by": found_by}

    # --- reconciliation ------------------------------------------------------------------------------------
    def reconcile(
        self, aws: PlanHandle, params: PurchaseHostReservationParams, intent: HostReservationIntent
    ) -> Reconciled:
        accepted_id = (aws.accepted or {}).get("host_reservation_id")
        if accepted_id:  # following a purchase AWS answered: read it by its id
            by_id = aws.read("describe_host_reservations", HostReservationIdSet=[accepted_id]).get(
                "HostReservationSet", [])
            if by_id:
                return self._settle(intent, by_id[0], "response")
        if intent.tagged:
            tagged = aws.paginate("describe_host_reservations", "HostReservationSet",
                                  Filter=[{"Name": f"tag:{PLAN_TAG}", "Values": [aws.plan_id]}])
            if len(tagged) > 1:  # two reservations carry this plan's id: it was bought twice
                return Ambiguous(tuple(r["HostReservationId"] for r in tagged), {"found_by": "tag"})
            if tagged:
                return self._settle(intent, tagged[0], "tag")
        candidates = self._matching(aws, intent)
        elsewhere = aws.claimed_elsewhere([c["HostReservationId"] for c in candidates])
        mine = [c for c in candidates if c["HostReservationId"] not in elsewhere]
        evidence = {"matched": [c["HostReservationId"] for c in mine]}
        if not mine:
            return Absent(evidence)
        if len(mine) > 1:
            return Ambiguous(tuple(evidence["matched"]), evidence)
        return self._settle(intent, mine[0], "attributes")

    def _settle(self, intent: HostReservationIntent, reservation: dict[str, Any], found_by: str) -> Reconciled:
        """The reservation of this plan, by its state: paying (look again), paid (found) or payment failed."""
        hr_id = reservation["HostReservationId"]
        state = reservation.get("State")
        evidence = {"host_reservation_id": hr_id, "state": state, "found_by": found_by}
        if state == "payment-pending":
            return Pending(f"host reservation {hr_id} is payment-pending", evidence)
        if state == "payment-failed":
            return Failed("PaymentFailed", f"AWS could not take the payment for host reservation {hr_id} "
                          "(state payment-failed): the hosts are not reserved", evidence)
        return Found(self._result(intent, hr_id, reservation.get("HostIdSet", []), str(state), found_by),
                     (hr_id,), evidence)

    def _matching(self, aws: PlanHandle, intent: HostReservationIntent) -> list[dict[str, Any]]:
        """Reservations of the intent's offering on exactly its hosts that started at or after the intent (AWS's
        clock)."""
        reservations = aws.paginate("describe_host_reservations", "HostReservationSet", Filter=[
            {"Name": "instance-family", "Values": [intent.instance_family]},
            {"Name": "payment-option", "Values": [intent.payment_option]},
            {"Name": "state", "Values": RECONCILE_STATES},
        ])
        return [
            r for r in reservations
            if r.get("OfferingId") == intent.offering_id
            and set(r.get("HostIdSet", [])) == set(intent.host_ids)
            and r["Start"] >= intent.started_after
        ]
