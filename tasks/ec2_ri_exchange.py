"""Family: EC2 convertible RI exchange. Action: ec2:AcceptReservedInstancesExchangeQuote.

Convertible Reserved Instances are exchanged for a new convertible RI of another configuration (an AWS offering:
type, platform, tenancy, payment option, term) of at least the same remaining value. ``GetReservedInstancesExchange
Quote`` is read right before the call: an exchange AWS says is invalid (``IsValidExchange`` false) is refused with
AWS's ``ValidationFailureReason``; ``PaymentDue`` (the upfront difference paid now) and the new RIs' total value are
checked against the plan's ceilings.

The call has no idempotency token (aws-commitment-apis.md §1), so it rests on the executor's protocol for such
calls (docs/exactly-once.md): one plan at a time per target offering, shared with RI purchases of it (the
intent's ``signature``), the intent and a durable send record before the call, and reconciliation by the
sources' state. AWS retires the sources when
it exchanges them and refuses to exchange a retired RI, so an exchange cannot happen twice; whether it happened is
read from the sources: all still active means nothing was done, all retired means the exchange happened, and the
new RI is then found by the target offering's attributes, the count, and a start at or after AWS's own time when
the intent was made. It is claimed for the plan (in the namespace of RI purchases, so that no purchase plan takes
it for its own).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.families import EC2_RI_EXCHANGE
from worker.actions import (
    YEAR_SECONDS,
    Absent,
    Action,
    Ambiguous,
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
from worker.handle import AWS_CLOCK_TOLERANCE, PlanHandle
from worker.plans import STRICT, NotBoolean, UsdAmount

# How long an exchange AWS accepted may take to show (sources retired, new RI visible) before a person looks.
EXCHANGE_SETTLES_WITHIN = timedelta(hours=1)
NEW_RI_STATES = ["payment-pending", "active"]


class ExchangeTargetConfiguration(BaseModel):
    """The target of the exchange, as AWS's ``TargetConfigurationRequest``: an offering id, or a selector that
    resolves to exactly one convertible AWS offering in the plan's region."""

    model_config = STRICT

    offering_id: str | None = Field(None, min_length=1, description="pin the target offering")
    instance_type: str | None = Field(None, pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$", examples=["m5.xlarge"])
    offering_type: Literal["No Upfront", "Partial Upfront", "All Upfront"] | None = None
    duration_years: Annotated[Literal[1, 3], NotBoolean] | None = None
    product_description: str = "Linux/UNIX"
    tenancy: Literal["default", "dedicated"] = "default"
    instance_count: int | None = Field(None, ge=1, le=10_000, description="default: the fewest AWS allows")

    @model_validator(mode="after")
    def _offering_or_selector(self) -> ExchangeTargetConfiguration:
        selector = (self.instance_type, self.offering_type, self.duration_years)
        if self.offering_id is None and any(v is None for v in selector):
            raise ValueError("give offering_id, or instance_type, offering_type and duration_years")
        return self


class AcceptExchangeQuoteParams(BaseModel):
    """Parameters of ec2:AcceptReservedInstancesExchangeQuote (docs/actions/ec2-ri-exchange.md)."""

    model_config = STRICT

    reserved_instance_ids: list[str] = Field(min_length=1, max_length=100, description="the convertible RIs given")
    # AWS exchanges convertible RIs into one target configuration.
    target_configurations: list[ExchangeTargetConfiguration] = Field(min_length=1, max_length=1)
    max_payment_due_usd: UsdAmount = Field(description="ceiling on the upfront difference paid now")
    max_total_usd: UsdAmount = Field(description="ceiling on the new RIs' total value (upfront + hourly, term)")

    @model_validator(mode="after")
    def _distinct(self) -> AcceptExchangeQuoteParams:
        if len(set(self.reserved_instance_ids)) != len(self.reserved_instance_ids):
            raise ValueError("reserved_instance_ids must be distinct")
        if any(not ri_id.strip() for ri_id in self.reserved_instance_ids):
            raise ValueError("reserved_instance_ids must not be blank")
        return self


class TargetOffering(BaseModel):
    """The attributes reconciliation matches the new RI on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offering_id: str
    instance_type: str
    product_description: str
    offering_type: str
    tenancy: str
    scope: str


class RiExchangeIntent(Intent):
    reserved_instance_ids: list[str]  # sorted
    target: TargetOffering
    instance_count: int
    upfront_usd: Decimal  # PaymentDue: the upfront paid now (the executor checks it against the upfront limit)
    source_value_usd: Decimal  # the remaining total value given up
    hourly_usd: Decimal  # the new RIs' recurring hourly price, all instances
    new_ri_end: datetime  # the quote's OutputReservedInstancesWillExpireAt
    started_after: datetime  # AWS's time when the intent was made, less its tolerance


@register
class AcceptReservedInstancesExchangeQuote(Action[AcceptExchangeQuoteParams, RiExchangeIntent]):
    action: ClassVar[str] = "ec2:AcceptReservedInstancesExchangeQuote"
    family = EC2_RI_EXCHANGE
    service: ClassVar[str] = "ec2"
    params_model = AcceptExchangeQuoteParams
    intent_model = RiExchangeIntent
    idempotency = Idempotency.NONE
    nouns = Nouns(resource="reserved instances", done="exchanged", claim_kind="ec2-ri")
    permissions = frozenset({
        "ec2:AcceptReservedInstancesExchangeQuote",
        "ec2:GetReservedInstancesExchangeQuote",
        "ec2:DescribeReservedInstances",
        "ec2:DescribeReservedInstancesOfferings",
    })

    def max_commitment_usd(self, params: AcceptExchangeQuoteParams) -> Decimal:
        return params.max_total_usd

    # --- reads before --------------------------------------------------------------------------------------
    def prepare(self, aws: PlanHandle, params: AcceptExchangeQuoteParams) -> RiExchangeIntent:
        source_ids = sorted(params.reserved_instance_ids)
        try:
            sources = aws.read("describe_reserved_instances", ReservedInstancesIds=source_ids)["ReservedInstances"]
        except ClientError as exc:
            if error_code(exc) != "InvalidReservedInstancesId":
                raise
            raise PlanFailed("UnknownReservedInstances", f"{exc.response['Error'].get('Message')}; nothing was "
                             "exchanged") from None
        by_id = {ri["ReservedInstancesId"]: ri for ri in sources}
        missing = [i for i in source_ids if i not in by_id]
        if missing:
            raise PlanFailed("UnknownReservedInstances", f"Reserved Instances {missing} do not exist in "
                             f"{aws.region}; nothing was exchanged")
        standard = [i for i in source_ids if by_id[i].get("OfferingClass") != "convertible"]
        if standard:
            raise PlanFailed("NotConvertible", f"only convertible Reserved Instances can be exchanged: {standard} "
                             "are standard; nothing was exchanged")
        inactive = {i: by_id[i].get("State") for i in source_ids if by_id[i].get("State") != "active"}
        if inactive:
            raise PlanFailed("ReservedInstancesNotActive", f"only active Reserved Instances can be exchanged: "
                             f"{inactive}; nothing was exchanged", {"states": inactive})
        target = params.target_configurations[0]
        offering = self._one_offering(aws, target)
        request: dict[str, Any] = {"OfferingId": offering["ReservedInstancesOfferingId"]}
        if target.instance_count is not None:
            request["InstanceCount"] = target.instance_count
        quote = aws.read("get_reserved_instances_exchange_quote", ReservedInstanceIds=source_ids,
                         TargetConfigurations=[request])
        if not quote.get("IsValidExchange"):
            reason = quote.get("ValidationFailureReason") or "no reason given"
            raise PlanFailed("InvalidExchange", f"AWS's quote says this exchange is not valid: {reason}; nothing was "
                             "exchanged", {"validation_failure_reason": reason})
        if quote.get("CurrencyCode", "USD") != "USD":
            raise PlanFailed("UnsupportedCurrency", f"the quote is in {quote['CurrencyCode']}, ceilings are in USD; "
                             "nothing was exchanged")
        payment_due = Decimal(str(quote.get("PaymentDue") or "0"))
        target_value = quote.get("TargetConfigurationValueRollup") or {}
        total = Decimal(str(target_value.get("RemainingTotalValue") or "0"))
        if payment_due > params.max_payment_due_usd:
            raise PlanFailed(
                "PriceAboveCeiling",
                f"payment due {payment_due} USD exceeds max_payment_due_usd {params.max_payment_due_usd}; nothing was "
                "exchanged",
                {"payment_due_usd": str(payment_due), "max_payment_due_usd": str(params.max_payment_due_usd)},
            )
        if total > params.max_total_usd:
            raise PlanFailed(
                "PriceAboveCeiling",
                f"the new Reserved Instances' total value {total} USD exceeds max_total_usd {params.max_total_usd}; "
                "nothing was exchanged", {"total_usd": str(total), "max_total_usd": str(params.max_total_usd)},
            )
        [quoted_target] = quote["TargetConfigurationValueSet"]
        count = int(quoted_target["TargetConfiguration"]["InstanceCount"])
        source_value = Decimal(str((quote.get("ReservedInstanceValueRollup") or {}).get("RemainingTotalValue") or "0"))
        started_after = aws.earliest_start()
        return RiExchangeIntent(
            reserved_instance_ids=source_ids,
            target=TargetOffering(
                offering_id=offering["ReservedInstancesOfferingId"],
                instance_type=offering["InstanceType"],
                product_description=offering["ProductDescription"],
                offering_type=offering["OfferingType"],
                tenancy=offering.get("InstanceTenancy", "default"),
                scope=offering.get("Scope", "Region"),
            ),
            instance_count=count,
            upfront_usd=payment_due,
            source_value_usd=source_value,
            hourly_usd=Decimal(str(target_value.get("HourlyPrice") or "0")),
            new_ri_end=quote["OutputReservedInstancesWillExpireAt"],
            started_after=started_after,
            commitment_usd=total,
            # One plan at a time per target offering, shared with RI purchases of that offering: the new RI is found
            # by the offering's attributes, count and start, which another exchange into it, or a purchase of it,
            # would match too. (Two plans on the same sources cannot both succeed: AWS refuses a retired RI.)
            signature=f"ec2-ri:{aws.account.account_id}:{aws.region}:{offering['ReservedInstancesOfferingId']}",
        )

    def _one_offering(self, aws: PlanHandle, target: ExchangeTargetConfiguration) -> dict[str, Any]:
        """The target: one convertible offering sold by AWS (exchanges never go to the marketplace)."""
        request: dict[str, Any] = {"OfferingClass": "convertible", "IncludeMarketplace": False}
        if target.offering_id:
            request["ReservedInstancesOfferingIds"] = [target.offering_id]
        else:
            assert target.duration_years is not None  # the params validator demands the whole selector
            request.update(
                InstanceType=target.instance_type, OfferingType=target.offering_type,
                ProductDescription=target.product_description, InstanceTenancy=target.tenancy,
                Filters=[{"Name": "duration", "Values": [str(target.duration_years * YEAR_SECONDS)]},
                         {"Name": "scope", "Values": ["Region"]}],
            )
        offerings = aws.paginate("describe_reserved_instances_offerings", "ReservedInstancesOfferings", **request)
        if not offerings:
            what = (f"offering {target.offering_id}" if target.offering_id else
                    f"{target.instance_type} {target.product_description} {target.offering_type} "
                    f"{target.duration_years}y {target.tenancy}")
            raise PlanFailed("NoMatchingOffering", f"no convertible AWS offering matches {what} in {aws.region}; "
                             "nothing was exchanged")
        if len(offerings) > 1:
            raise PlanFailed("AmbiguousOffering", f"{len(offerings)} convertible offerings match; pin one with "
                             "offering_id; nothing was exchanged",
                             {"offering_ids": [o["ReservedInstancesOfferingId"] for o in offerings]})
        return offerings[0]

    # --- the call ------------------------------------------------------------------------------------------
    def _request(self, intent: RiExchangeIntent) -> dict[str, Any]:
        # The quoted count, explicitly: what the ceilings were checked against.
        return {"ReservedInstanceIds": intent.reserved_instance_ids,
                "TargetConfigurations": [{"OfferingId": intent.target.offering_id,
                                          "InstanceCount": intent.instance_count}]}

    def submit(self, aws: PlanHandle, params: AcceptExchangeQuoteParams, intent: RiExchangeIntent) -> Submitted:
        response = aws.send("accept_reserved_instances_exchange_quote", **self._request(intent))
        exchange_id = response.get("ExchangeId")
        # AWS answers with the exchange id only: reconciliation confirms the sources retired and finds the new RI.
        return Submitted({"exchange_id": exchange_id}, (),
                         follow=f"exchange {exchange_id}: confirming the sources retired and the new RI")

    def dry_run(self, aws: PlanHandle, params: AcceptExchangeQuoteParams, intent: RiExchangeIntent) -> dict[str, Any]:
        answer = aws.dry_run("accept_reserved_instances_exchange_quote", **self._request(intent))
        would = {"reserved_instance_ids": intent.reserved_instance_ids, "offering_id": intent.target.offering_id,
                 "instance_count": intent.instance_count, "payment_due_usd": str(intent.upfront_usd),
                 "commitment_usd": str(intent.commitment_usd)}
        return {"would_exchange": would, "permitted": answer == "DryRunOperation", "aws_answer": answer}

    # --- reconciliation ------------------------------------------------------------------------------------
    def reconcile(self, aws: PlanHandle, params: AcceptExchangeQuoteParams, intent: RiExchangeIntent) -> Reconciled:
        sources = aws.read("describe_reserved_instances",
                           ReservedInstancesIds=intent.reserved_instance_ids)["ReservedInstances"]
        states = {ri["ReservedInstancesId"]: ri.get("State") for ri in sources}
        retired = sorted(i for i, state in states.items() if state == "retired")
        accepted = (aws.accepted or {}).get("exchange_id")
        evidence: dict[str, Any] = {"source_states": states, "exchange_id": accepted}
        if not retired:
            if accepted:
                return self._not_settled_yet(aws, intent, f"exchange {accepted} accepted; sources not retired yet",
                                             evidence)
            return Absent(evidence)
        if len(retired) != len(intent.reserved_instance_ids):
            # AWS retires every source of an exchange at once: a partial retirement is not this plan's exchange.
            return Ambiguous((), {**evidence, "reason": "only some sources are retired"})
        candidates = self._new_ris(aws, intent)
        elsewhere = aws.claimed_elsewhere([c["ReservedInstancesId"] for c in candidates])
        mine = [c for c in candidates if c["ReservedInstancesId"] not in elsewhere]
        evidence["matched"] = [c["ReservedInstancesId"] for c in mine]
        if not mine:
            return self._not_settled_yet(aws, intent, "sources retired; the new Reserved Instance is not visible yet",
                                         evidence)
        if len(mine) > 1:
            return Ambiguous(tuple(evidence["matched"]), evidence)
        new = mine[0]
        result = {
            "exchange_id": accepted,
            "source_reserved_instance_ids": intent.reserved_instance_ids,
            "source_state": "retired",
            "reserved_instances_id": new["ReservedInstancesId"],
            "offering_id": intent.target.offering_id,
            "instance_type": new["InstanceType"],
            "instance_count": new["InstanceCount"],
            "state": new.get("State"),
            "end": new["End"].isoformat(),
            "payment_due_usd": str(intent.upfront_usd),
            "source_value_usd": str(intent.source_value_usd),
            "hourly_usd": str(intent.hourly_usd),
            "found_by": "accepted" if accepted else "sources_retired",
        }
        return Found(result, (new["ReservedInstancesId"],), evidence)

    def _not_settled_yet(self, aws: PlanHandle, intent: RiExchangeIntent, reason: str,
                         evidence: dict[str, Any]) -> Reconciled:
        """Wait for AWS to show the exchange; past the bound, a person looks (never a guess either way)."""
        now = aws.aws_now() or aws.now()
        if now - intent.started_after > EXCHANGE_SETTLES_WITHIN:
            return Ambiguous((), {**evidence, "reason": f"{reason} after {EXCHANGE_SETTLES_WITHIN}"})
        return Pending(reason, evidence)

    def _new_ris(self, aws: PlanHandle, intent: RiExchangeIntent) -> list[dict[str, Any]]:
        """Convertible RIs of the target offering and count that started at or after the intent (AWS's clock) and
        end no earlier than the quote said (AWS keeps the sources' end, or starts a new longer term)."""
        t = intent.target
        response = aws.read("describe_reserved_instances", OfferingClass="convertible", OfferingType=t.offering_type,
                            Filters=[{"Name": "instance-type", "Values": [t.instance_type]},
                                     {"Name": "product-description", "Values": [t.product_description]},
                                     {"Name": "scope", "Values": [t.scope]},
                                     {"Name": "state", "Values": NEW_RI_STATES}])
        return [
            ri for ri in response.get("ReservedInstances", [])
            if ri.get("InstanceCount") == intent.instance_count
            and ri.get("InstanceTenancy", "default") == t.tenancy
            and ri["Start"] >= intent.started_after
            and ri["End"] >= intent.new_ri_end - AWS_CLOCK_TOLERANCE
            and ri["ReservedInstancesId"] not in intent.reserved_instance_ids
        ]

    def look_alikes(
        self, aws: PlanHandle, params: AcceptExchangeQuoteParams, intent: RiExchangeIntent, own: tuple[str, ...],
    ) -> dict[str, datetime]:
        # A second exchange of the same sources cannot exist: AWS retires them in the first and refuses to exchange
        # a retired RI. There is nothing a duplicate send could have made.
        return {}
