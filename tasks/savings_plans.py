"""Family: Savings Plans. Action: savingsplans:CreateSavingsPlan.

Idempotency: ``clientToken``, derived from the plan id (``derive_token``) and recorded in the intent before the
call, so a re-send after a lost answer is deduplicated by AWS (aws-commitment-apis.md §1: botocore would
otherwise fill in a new uuid per call). The token is a second line of defence: DescribeSavingsPlans cannot
filter by token (nor by tag, §5), so every plan is created with the tag ``commitd:plan-id`` = plan id (``tags``
is part of CreateSavingsPlan: no savingsplans:TagResource needed, the authorization reference lists no
dependent action) and reconciliation reads every Savings Plan of the account (paged by ``nextToken``) and
matches that tag, then checks the offering and the commitment.

Money: a Savings Plan commits ``commitment`` USD per hour for the whole term, whatever the payment option:
total = commitment × term hours (the term from the live offering). All Upfront pays that total upfront, Partial
Upfront pays ``upfront_payment_amount`` upfront (AWS: a whole number, 50 % to 99 % of the total) and the rest
hourly, No Upfront pays nothing upfront. ``max_total_usd`` bounds the total (intake checks it against the
account's limit before any read), ``max_upfront_usd`` the upfront part; both are checked in ``prepare`` against
the live offering's term, and the executor re-checks the intent's figures right before the send.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from tasks._reserved_by_id import PAYMENT_FAILED
from tasks.ec2_reserved_instances import YEAR_SECONDS
from tasks.families import SAVINGS_PLANS
from worker.actions import (
    Absent,
    Action,
    Ambiguous,
    Failed,
    Found,
    Idempotency,
    Intent,
    Nouns,
    PlanFailed,
    Reconciled,
    Submitted,
    register,
)
from worker.execution import derive_token
from worker.handle import PlanHandle
from worker.plans import STRICT, NotBoolean, Rfc3339Time, UsdAmount

PLAN_TAG = "commitd:plan-id"
MANAGED_TAG = {"commitd:managed-by": "commitd"}
PlanType = Literal["Compute", "EC2Instance", "SageMaker", "Database"]  # botocore's SavingsPlanType enum
PaymentOption = Literal["All Upfront", "Partial Upfront", "No Upfront"]
PARTIAL = "Partial Upfront"
# AWS's bounds on upfrontPaymentAmount: a share of the plan's total value.
UPFRONT_MIN_SHARE, UPFRONT_MAX_SHARE = Decimal("0.5"), Decimal("0.99")


class CreateSavingsPlanParams(BaseModel):
    """Parameters of savingsplans:CreateSavingsPlan (docs/actions/savings-plans.md)."""

    model_config = STRICT

    offering_id: str | None = Field(None, min_length=1, max_length=255,
                                    description="pin one offering; selector fields given must match it")
    plan_type: PlanType | None = None
    payment_option: PaymentOption | None = None
    duration_years: Annotated[Literal[1, 3], NotBoolean] | None = None
    region: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$",
                               description="EC2 Instance plans: the region the plan applies in")
    instance_family: str | None = Field(None, pattern=r"^[a-z][a-z0-9-]*$",
                                        description="EC2 Instance plans: the instance family, e.g. m5")
    commitment_usd_per_hour: UsdAmount = Field(ge=Decimal("0.001"), le=Decimal("1000000"))
    upfront_payment_amount: UsdAmount | None = Field(None, description="Partial Upfront only: whole USD")
    purchase_time: Rfc3339Time | None = Field(None, description="queue the plan to start at this time")
    max_total_usd: UsdAmount = Field(description="ceiling on commitment × term hours")
    max_upfront_usd: UsdAmount = Field(description="ceiling on the upfront payment")

    @model_validator(mode="after")
    def _rules(self) -> CreateSavingsPlanParams:
        if self.offering_id is None:
            missing = [n for n in ("plan_type", "payment_option", "duration_years") if getattr(self, n) is None]
            if self.plan_type == "EC2Instance":
                missing += [n for n in ("region", "instance_family") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"without offering_id, the selector needs {', '.join(missing)}")
        if self.plan_type not in (None, "EC2Instance") and (self.region or self.instance_family):
            raise ValueError("region and instance_family select EC2Instance plans only")
        amount = self.upfront_payment_amount
        if amount is not None and amount != amount.to_integral_value():
            raise ValueError("upfront_payment_amount must be a whole number of USD (AWS)")
        if self.payment_option == PARTIAL and amount is None:
            raise ValueError("upfront_payment_amount is required for Partial Upfront")
        if self.payment_option not in (None, PARTIAL) and amount is not None:
            raise ValueError("upfront_payment_amount is only for Partial Upfront (AWS)")
        return self


class SavingsPlanIntent(Intent):
    offering_id: str
    plan_type: str
    payment_option: str
    duration_seconds: int
    commitment_usd_per_hour: Decimal
    upfront_usd: Decimal  # what is paid upfront: the total (All), upfront_payment_amount (Partial) or 0
    upfront_payment_amount: Decimal | None  # sent as upfrontPaymentAmount (Partial Upfront only)
    purchase_time: datetime | None


def _money_text(value: Decimal) -> str:
    """A decimal string without exponent or trailing zeros, as AWS takes amounts ("1.5", "5256")."""
    text = format(value.normalize(), "f")
    return text if "." not in text else text.rstrip("0").rstrip(".")


def _property(offering: dict[str, Any], name: str) -> str | None:
    return next((str(p["value"]) for p in offering.get("properties", []) if p.get("name") == name), None)


@register
class CreateSavingsPlan(Action[CreateSavingsPlanParams, SavingsPlanIntent]):
    action: ClassVar[str] = "savingsplans:CreateSavingsPlan"
    family = SAVINGS_PLANS
    service: ClassVar[str] = "savingsplans"
    params_model = CreateSavingsPlanParams
    intent_model = SavingsPlanIntent
    idempotency = Idempotency.CLIENT_TOKEN
    nouns = Nouns(resource="Savings Plans", done="bought", claim_kind="savings-plan")
    permissions = frozenset({
        "savingsplans:CreateSavingsPlan",
        "savingsplans:DescribeSavingsPlansOfferings",
        "savingsplans:DescribeSavingsPlans",
    })

    def max_commitment_usd(self, params: CreateSavingsPlanParams) -> Decimal:
        return params.max_total_usd

    # --- reads before --------------------------------------------------------------------------------------
    def _one_offering(self, aws: PlanHandle, p: CreateSavingsPlanParams) -> dict[str, Any]:
        request: dict[str, Any] = {"currencies": ["USD"]}
        if p.offering_id:
            request["offeringIds"] = [p.offering_id]
        if p.plan_type:
            request["planTypes"] = [p.plan_type]
        if p.payment_option:
            request["paymentOptions"] = [p.payment_option]
        if p.duration_years:
            request["durations"] = [p.duration_years * YEAR_SECONDS]
        wanted = {"region": p.region, "instanceFamily": p.instance_family}
        request["filters"] = [{"name": k, "values": [v]} for k, v in wanted.items() if v]
        offerings = aws.paginate("describe_savings_plans_offerings", "searchResults", **request)
        # The properties filter does not exclude offerings without the property (Compute plans apply in every
        # region): only offerings that carry exactly the wanted properties match.
        matching = [o for o in offerings if all(_property(o, k) == v for k, v in wanted.items() if v)]
        if not matching:
            raise PlanFailed("NoMatchingOffering", f"no Savings Plans offering matches {request}; a plan priced in "
                             "another currency is not bought either; nothing was bought", {"request": request})
        if len(matching) > 1:
            raise PlanFailed(
                "AmbiguousOffering",
                f"{len(matching)} Savings Plans offerings match; pin one with params.offering_id; nothing was bought",
                {"offering_ids": [o["offeringId"] for o in matching],
                 "descriptions": [o.get("description") for o in matching]},
            )
        return matching[0]

    def prepare(self, aws: PlanHandle, params: CreateSavingsPlanParams) -> SavingsPlanIntent:
        p = params
        offering = self._one_offering(aws, p)
        payment = offering["paymentOption"]
        duration = int(offering["durationSeconds"])
        total = p.commitment_usd_per_hour * (duration // 3600)
        amount = p.upfront_payment_amount
        if payment == PARTIAL:
            low, high = total * UPFRONT_MIN_SHARE, total * UPFRONT_MAX_SHARE
            if amount is None or not low <= amount <= high:
                raise PlanFailed(
                    "InvalidUpfrontPayment",
                    f"a Partial Upfront plan needs upfront_payment_amount, a whole number between 50 % ({low}) and "
                    f"99 % ({high}) of its total {total} USD (AWS); got {amount}; nothing was bought",
                    {"total_usd": str(total), "upfront_payment_amount": str(amount)},
                )
            upfront = amount
        else:
            if amount is not None:
                raise PlanFailed("InvalidUpfrontPayment", f"upfront_payment_amount is only for Partial Upfront; "
                                 f"the offering is {payment}; nothing was bought")
            upfront = total if payment == "All Upfront" else Decimal(0)
        figures = {"total_usd": str(total), "upfront_usd": str(upfront), "payment_option": payment}
        if total > p.max_total_usd:
            raise PlanFailed("PriceAboveCeiling", f"total commitment {total} USD ({p.commitment_usd_per_hour} USD/h "
                             f"× {duration // 3600} h) exceeds max_total_usd {p.max_total_usd}; nothing was bought",
                             figures)
        if upfront > p.max_upfront_usd:
            raise PlanFailed("PriceAboveCeiling", f"upfront {upfront} USD ({payment}) exceeds max_upfront_usd "
                             f"{p.max_upfront_usd}; nothing was bought", figures)
        aws_now = aws.aws_now() or aws.now()
        if p.purchase_time is not None and p.purchase_time <= aws_now:
            raise PlanFailed("PurchaseTimePassed", f"purchase_time {p.purchase_time.isoformat()} is not after AWS's "
                             f"time {aws_now.isoformat()}: the plan would start at another time than planned; "
                             "nothing was bought")
        return SavingsPlanIntent(
            offering_id=offering["offeringId"],
            plan_type=offering["planType"],
            payment_option=payment,
            duration_seconds=duration,
            commitment_usd_per_hour=p.commitment_usd_per_hour,
            upfront_usd=upfront,
            upfront_payment_amount=amount,
            purchase_time=p.purchase_time,
            idempotency_value=derive_token(aws.plan_id),
            commitment_usd=total,
        )

    # --- the call ------------------------------------------------------------------------------------------
    def submit(self, aws: PlanHandle, params: CreateSavingsPlanParams, intent: SavingsPlanIntent) -> Submitted:
        request: dict[str, Any] = {
            "savingsPlanOfferingId": intent.offering_id,
            "commitment": _money_text(intent.commitment_usd_per_hour),
            "clientToken": intent.idempotency_value,
            # Stamped in the same call (no separate tagging): reconciliation finds the plan by this tag.
            "tags": {PLAN_TAG: aws.plan_id, **MANAGED_TAG},
        }
        if intent.upfront_payment_amount is not None:
            request["upfrontPaymentAmount"] = _money_text(intent.upfront_payment_amount)
        if intent.purchase_time is not None:
            request["purchaseTime"] = intent.purchase_time
        response = aws.send("create_savings_plan", **request)
        plan_id = response["savingsPlanId"]
        return Submitted(self._result(intent, plan_id, None, "response"), (plan_id,))

    def _result(self, intent: SavingsPlanIntent, savings_plan_id: str, plan: dict[str, Any] | None,
                found_by: str) -> dict[str, Any]:
        hours = intent.duration_seconds // 3600
        # The hourly part left after the upfront payment, rounded to AWS's five decimals.
        recurring = ((intent.commitment_usd_per_hour * hours - intent.upfront_usd) / hours).quantize(Decimal("0.00001"))
        result = {
            "savings_plan_id": savings_plan_id,
            "offering_id": intent.offering_id,
            "plan_type": intent.plan_type,
            "payment_option": intent.payment_option,
            "duration_seconds": intent.duration_seconds,
            "commitment_usd_per_hour": str(intent.commitment_usd_per_hour),
            "upfront_usd": str(intent.upfront_usd),
            "recurring_usd_per_hour": str(recurring),
            "purchase_time": intent.purchase_time.isoformat() if intent.purchase_time else None,
            "client_token": intent.idempotency_value,
            "found_by": found_by,
        }
        if plan is not None:
            result.update(savings_plan_arn=plan.get("savingsPlanArn"), state=plan.get("state"),
                          start=str(plan.get("start")))
        return result

    # --- reconciliation ------------------------------------------------------------------------------------
    def reconcile(
        self, aws: PlanHandle, params: CreateSavingsPlanParams, intent: SavingsPlanIntent
    ) -> Reconciled:
        # Every plan of the account, every state: DescribeSavingsPlans has no tag or token filter (§5).
        plans = aws.paginate("describe_savings_plans", "savingsPlans")
        tagged = [sp for sp in plans if (sp.get("tags") or {}).get(PLAN_TAG) == aws.plan_id]
        evidence: dict[str, Any] = {"plans_read": len(plans), "tagged": [sp["savingsPlanId"] for sp in tagged]}
        if not tagged:
            return Absent(evidence)
        if len(tagged) > 1:  # two plans carry this plan's id: a person must look
            return Ambiguous(tuple(evidence["tagged"]), evidence)
        plan = tagged[0]
        evidence.update(offering_id=plan.get("offeringId"), commitment=plan.get("commitment"),
                        state=plan.get("state"), start=str(plan.get("start")))
        if plan.get("offeringId") != intent.offering_id or Decimal(str(plan.get("commitment"))) \
                != intent.commitment_usd_per_hour:
            # Our tag on a plan that is not what this plan creates (a tag set by hand?): never adopt it.
            return Ambiguous((plan["savingsPlanId"],), evidence)
        if plan.get("state") == PAYMENT_FAILED:
            return Failed("PaymentFailed", f"AWS made Savings Plan {plan['savingsPlanId']} but its payment failed: "
                          "nothing was bought", evidence)
        return Found(self._result(intent, plan["savingsPlanId"], plan, "tag"), (plan["savingsPlanId"],), evidence)
