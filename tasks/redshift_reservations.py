"""Family: Redshift reserved nodes. Actions: redshift:PurchaseReservedNodeOffering and
redshift:AcceptReservedNodeExchange (DC1 → DC2).

Neither call takes an idempotency token or a customer id, and reserved nodes cannot be tagged
(aws-commitment-apis.md §1, §3), so both rest on the executor's protocol for calls without a token
(docs/exactly-once.md): one plan at a time per signature, the intent and a durable send record before the call,
and a reconciling read before any re-send.

- The purchase is reconciled like the EC2 RI purchase (tasks/ec2_reserved_instances.py): DescribeReservedNodes
  matched on the offering, the node count, and a StartTime at or after AWS's own time when the intent was made;
  after success, the look-alike check looks for a second node bought the same way.
- The exchange can happen only once per source node: AWS answers a replay with ``ReservedNodeAlreadyMigrated``
  (a done signal: look, never trust alone). It is reconciled with DescribeReservedNodeExchangeStatus for the
  source node (requested since the intent, to this plan's target offering) and the nodes' states; an exchange
  still under way is followed to its end (``Submitted.follow`` / ``Pending``), one that AWS reports ``FAILED``
  fails the plan with that reason.

``redshift:GetReservedNodeExchangeOfferings`` is a read (it changes nothing) that the production role lists among
its writes, so tasks/families.py has it in the family's ``write_actions``. It is no action of its own: plans never
name it, and the exchange action declares it in its ``permissions`` because it calls it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from tasks.families import REDSHIFT_RESERVATIONS
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

# States of a node a purchase may be in once AWS made it (Redshift spells it "pending-payment").
BOUGHT_STATES = ("pending-payment", "active")
# The states of an exchange that is not over yet (botocore's ReservedNodeExchangeStatusType).
EXCHANGE_UNDER_WAY = ("REQUESTED", "PENDING", "IN_PROGRESS", "RETRYING")
NODE_TYPE = r"^[a-z][a-z0-9]*\.[a-z0-9]+$"
CLAIM_KIND = "redshift-reserved-node"  # both actions make reserved nodes: one namespace of claims


def _aws_start_floor(aws: PlanHandle) -> datetime:
    """AWS's time now, less its tolerance: what the call makes starts at or after this (never the worker's clock
    when AWS's is known)."""
    return aws.earliest_start()


def _hourly(offering: dict[str, Any]) -> Decimal:
    """The recurring price per node-hour: the hourly recurring charges plus the usage price."""
    recurring = sum(
        (Decimal(str(c["RecurringChargeAmount"])) for c in offering.get("RecurringCharges", [])
         if c.get("RecurringChargeFrequency") == "Hourly"),
        Decimal(0),
    )
    return recurring + Decimal(str(offering.get("UsagePrice", 0)))


def _price_above(figures: dict[str, Decimal], message: str) -> PlanFailed:
    return PlanFailed("PriceAboveCeiling", message, {k: str(v) for k, v in figures.items()})


# =================================================================================================================
# redshift:PurchaseReservedNodeOffering
# =================================================================================================================
class PurchaseReservedNodeParams(BaseModel):
    """Parameters of redshift:PurchaseReservedNodeOffering (docs/actions/redshift-reservations.md)."""

    model_config = STRICT

    node_type: str = Field(pattern=NODE_TYPE, examples=["dc2.large", "ra3.xlplus"])
    offering_type: Literal["No Upfront", "Partial Upfront", "All Upfront"]
    duration_years: Annotated[Literal[1, 3], NotBoolean]
    node_count: int = Field(ge=1, le=1_000)
    reserved_node_offering_type: Literal["Regular", "Upgradable"] = "Regular"
    offering_id: str | None = Field(None, min_length=1, max_length=64,
                                    description="pin one offering; it must match the fields")
    max_upfront_usd: UsdAmount = Field(description="ceiling on the total upfront for all nodes")
    max_hourly_usd: UsdAmount = Field(description="ceiling on the recurring hourly price per node")
    max_total_usd: UsdAmount = Field(description="ceiling on the total commitment: upfront + recurring over the term")

    @property
    def term_hours(self) -> int:
        return self.duration_years * YEAR_SECONDS // 3600


class NodePurchaseIntent(Intent):
    offering_id: str
    node_type: str
    node_count: int
    duration: int  # seconds
    offering_type: str
    upfront_usd: Decimal  # total for all nodes
    hourly_usd: Decimal  # recurring, per node
    started_after: datetime  # AWS's time when the intent was made, less its tolerance


@register
class PurchaseReservedNodeOffering(Action[PurchaseReservedNodeParams, NodePurchaseIntent]):
    action: ClassVar[str] = "redshift:PurchaseReservedNodeOffering"
    family = REDSHIFT_RESERVATIONS
    service: ClassVar[str] = "redshift"
    params_model = PurchaseReservedNodeParams
    intent_model = NodePurchaseIntent
    idempotency = Idempotency.NONE
    nouns = Nouns(resource="reserved nodes", done="bought", claim_kind=CLAIM_KIND)
    permissions = frozenset({
        "redshift:PurchaseReservedNodeOffering",
        "redshift:DescribeReservedNodeOfferings",
        "redshift:DescribeReservedNodes",
    })

    def max_commitment_usd(self, params: PurchaseReservedNodeParams) -> Decimal:
        by_parts = params.max_upfront_usd + params.max_hourly_usd * params.node_count * params.term_hours
        return min(params.max_total_usd, by_parts)

    # --- reads before --------------------------------------------------------------------------------------
    def prepare(self, aws: PlanHandle, params: PurchaseReservedNodeParams) -> NodePurchaseIntent:
        p = params
        offering = self._one_offering(aws, p)
        if offering.get("CurrencyCode", "USD") != "USD":
            raise PlanFailed("UnsupportedCurrency", f"offering is priced in {offering['CurrencyCode']}, ceilings "
                             "are in USD; nothing was bought")
        duration = int(offering["Duration"])
        upfront = Decimal(str(offering["FixedPrice"])) * p.node_count
        hourly = _hourly(offering)
        total = upfront + hourly * p.node_count * (duration // 3600)
        if upfront > p.max_upfront_usd:
            raise _price_above({"upfront_usd": upfront, "max_upfront_usd": p.max_upfront_usd},
                               f"upfront {upfront} USD for {p.node_count} nodes exceeds max_upfront_usd "
                               f"{p.max_upfront_usd}; nothing was bought")
        if hourly > p.max_hourly_usd:
            raise _price_above({"hourly_usd": hourly, "max_hourly_usd": p.max_hourly_usd},
                               f"recurring {hourly} USD/hour per node exceeds max_hourly_usd {p.max_hourly_usd}; "
                               "nothing was bought")
        if total > p.max_total_usd:
            raise _price_above({"total_usd": total, "max_total_usd": p.max_total_usd},
                               f"total commitment {total} USD (upfront plus recurring over the term) exceeds "
                               f"max_total_usd {p.max_total_usd}; nothing was bought")
        offering_id = offering["ReservedNodeOfferingId"]
        return NodePurchaseIntent(
            offering_id=offering_id,
            node_type=offering["NodeType"],
            node_count=p.node_count,
            duration=duration,
            offering_type=offering["OfferingType"],
            upfront_usd=upfront,
            hourly_usd=hourly,
            commitment_usd=total,
            started_after=_aws_start_floor(aws),
            signature=f"redshift-node:{aws.account.account_id}:{aws.region}:{offering_id}",
        )

    def _one_offering(self, aws: PlanHandle, p: PurchaseReservedNodeParams) -> dict[str, Any]:
        # DescribeReservedNodeOfferings filters by nothing but the offering id: match the rest here.
        request: dict[str, Any] = {"ReservedNodeOfferingId": p.offering_id} if p.offering_id else {}
        try:
            offerings = aws.paginate("describe_reserved_node_offerings", "ReservedNodeOfferings", **request)
        except ClientError as exc:
            if p.offering_id and exc.response.get("Error", {}).get("Code") == "ReservedNodeOfferingNotFound":
                offerings = []
            else:
                raise
        matching = [
            o for o in offerings
            if o.get("NodeType") == p.node_type
            and o.get("OfferingType") == p.offering_type
            and int(o.get("Duration", 0)) == p.duration_years * YEAR_SECONDS
            and o.get("ReservedNodeOfferingType", "Regular") == p.reserved_node_offering_type
        ]
        if not matching:
            what = f"offering {p.offering_id}" if p.offering_id else "no offering"
            raise PlanFailed(
                "NoMatchingOffering",
                f"{what} matches {p.node_type} {p.offering_type} {p.duration_years}y "
                f"{p.reserved_node_offering_type} in {aws.region}; nothing was bought",
            )
        if len(matching) > 1:
            raise PlanFailed(
                "AmbiguousOffering",
                f"{len(matching)} offerings match; pin one with params.offering_id; nothing was bought",
                {"offering_ids": [o["ReservedNodeOfferingId"] for o in matching]},
            )
        return matching[0]

    # --- the call ------------------------------------------------------------------------------------------
    def submit(self, aws: PlanHandle, params: PurchaseReservedNodeParams, intent: NodePurchaseIntent) -> Submitted:
        response = aws.send("purchase_reserved_node_offering", ReservedNodeOfferingId=intent.offering_id,
                            NodeCount=intent.node_count)
        node = response["ReservedNode"]
        return Submitted(self._result(intent, node, "response"), (node["ReservedNodeId"],))

    def _result(self, intent: NodePurchaseIntent, node: dict[str, Any], found_by: str) -> dict[str, Any]:
        return {"reserved_node_id": node["ReservedNodeId"], "offering_id": intent.offering_id,
                "node_type": intent.node_type, "node_count": node.get("NodeCount", intent.node_count),
                "state": node.get("State"), "upfront_usd": str(intent.upfront_usd),
                "hourly_usd": str(intent.hourly_usd), "found_by": found_by}

    # --- reconciliation ------------------------------------------------------------------------------------
    def reconcile(
        self, aws: PlanHandle, params: PurchaseReservedNodeParams, intent: NodePurchaseIntent
    ) -> Reconciled:
        candidates = self._matching(aws, intent)
        elsewhere = aws.claimed_elsewhere([c["ReservedNodeId"] for c in candidates])
        mine = [c for c in candidates if c["ReservedNodeId"] not in elsewhere]
        evidence = {"matched": [c["ReservedNodeId"] for c in mine]}
        if not mine:
            return Absent(evidence)
        if len(mine) > 1:
            return Ambiguous(tuple(evidence["matched"]), evidence)
        return Found(self._result(intent, mine[0], "attributes"), (mine[0]["ReservedNodeId"],), evidence)

    def look_alikes(
        self, aws: PlanHandle, params: PurchaseReservedNodeParams, intent: NodePurchaseIntent, own: tuple[str, ...]
    ) -> dict[str, datetime]:
        return {c["ReservedNodeId"]: c["StartTime"] for c in self._matching(aws, intent)}

    def _matching(self, aws: PlanHandle, intent: NodePurchaseIntent) -> list[dict[str, Any]]:
        """Nodes of the intent's offering and count that started at or after the intent (AWS's clock)."""
        nodes = aws.paginate("describe_reserved_nodes", "ReservedNodes")
        return [
            n for n in nodes
            if n.get("ReservedNodeOfferingId") == intent.offering_id
            and n.get("NodeCount") == intent.node_count
            and n.get("State") in BOUGHT_STATES
            and n["StartTime"] >= intent.started_after
        ]


# =================================================================================================================
# redshift:AcceptReservedNodeExchange
# =================================================================================================================
class AcceptReservedNodeExchangeParams(BaseModel):
    """Parameters of redshift:AcceptReservedNodeExchange (docs/actions/redshift-reservations.md)."""

    model_config = STRICT

    reserved_node_id: str = Field(min_length=1, max_length=64, description="the DC1 reserved node to exchange")
    node_count: int = Field(ge=1, le=1_000, description="the source's node count, which the new reservation "
                                                        "keeps (AWS exchanges DC1 for DC2 node for node)")
    target_node_type: str = Field(pattern=NODE_TYPE, examples=["dc2.large"])
    target_offering_id: str | None = Field(None, min_length=1, max_length=64,
                                           description="pin one exchange offering; it must be of target_node_type")
    max_total_usd: UsdAmount = Field(description="ceiling on the new reservation's cost at the target offering's "
                                                 "prices: (upfront + hourly × term hours) × node count")
    max_hourly_usd: UsdAmount | None = Field(None, description="ceiling on the target offering's recurring price "
                                                               "per node-hour")


class ExchangeIntent(Intent):
    source_reserved_node_id: str
    source_node_type: str
    source_start_time: datetime
    node_count: int
    target_offering_id: str
    target_node_type: str
    target_duration: int  # seconds
    target_upfront_usd: Decimal  # per node, the offering's price
    target_hourly_usd: Decimal  # per node
    started_after: datetime  # AWS's time when the intent was made, less its tolerance


@register
class AcceptReservedNodeExchange(Action[AcceptReservedNodeExchangeParams, ExchangeIntent]):
    action: ClassVar[str] = "redshift:AcceptReservedNodeExchange"
    family = REDSHIFT_RESERVATIONS
    service: ClassVar[str] = "redshift"
    params_model = AcceptReservedNodeExchangeParams
    intent_model = ExchangeIntent
    idempotency = Idempotency.NONE
    nouns = Nouns(resource="reserved nodes", done="exchanged", claim_kind=CLAIM_KIND)
    permissions = frozenset({
        "redshift:AcceptReservedNodeExchange",
        # A read, though the production role lists it among its writes: the target offerings of the source.
        "redshift:GetReservedNodeExchangeOfferings",
        "redshift:DescribeReservedNodes",
        "redshift:DescribeReservedNodeExchangeStatus",
    })
    # A replay of an exchange that took effect: look (reconcile), never take it for success on its own.
    done_signals = frozenset({"ReservedNodeAlreadyMigrated"})

    def max_commitment_usd(self, params: AcceptReservedNodeExchangeParams) -> Decimal:
        return params.max_total_usd

    # --- reads before --------------------------------------------------------------------------------------
    def prepare(self, aws: PlanHandle, params: AcceptReservedNodeExchangeParams) -> ExchangeIntent:
        p = params
        source = self._node(aws, p.reserved_node_id)
        if source.get("State") != "active":
            raise PlanFailed("InvalidReservedNodeState", f"reserved node {p.reserved_node_id} is "
                             f"{source.get('State')}, not active; nothing was exchanged")
        if source.get("NodeCount") != p.node_count:
            raise PlanFailed("NodeCountMismatch", f"reserved node {p.reserved_node_id} has "
                             f"{source.get('NodeCount')} nodes, the plan expects {p.node_count}; nothing was "
                             "exchanged", {"node_count": source.get("NodeCount")})
        target = self._one_target(aws, p)
        if target.get("CurrencyCode", "USD") != "USD":
            raise PlanFailed("UnsupportedCurrency", f"offering is priced in {target['CurrencyCode']}, ceilings "
                             "are in USD; nothing was exchanged")
        duration = int(target["Duration"])
        upfront, hourly = Decimal(str(target["FixedPrice"])), _hourly(target)
        total = (upfront + hourly * (duration // 3600)) * p.node_count
        if p.max_hourly_usd is not None and hourly > p.max_hourly_usd:
            raise _price_above({"hourly_usd": hourly, "max_hourly_usd": p.max_hourly_usd},
                               f"the target offering's recurring {hourly} USD/hour per node exceeds max_hourly_usd "
                               f"{p.max_hourly_usd}; nothing was exchanged")
        if total > p.max_total_usd:
            raise _price_above({"total_usd": total, "max_total_usd": p.max_total_usd},
                               f"the new reservation costs {total} USD at the target offering's prices "
                               f"({p.node_count} × {target['NodeType']}), above max_total_usd {p.max_total_usd}; "
                               "nothing was exchanged")
        return ExchangeIntent(
            source_reserved_node_id=p.reserved_node_id,
            source_node_type=source["NodeType"],
            source_start_time=source["StartTime"],
            node_count=p.node_count,
            target_offering_id=target["ReservedNodeOfferingId"],
            target_node_type=target["NodeType"],
            target_duration=duration,
            target_upfront_usd=upfront,
            target_hourly_usd=hourly,
            commitment_usd=total,
            started_after=_aws_start_floor(aws),
            # One plan at a time per source node: an exchange can be made only once per node anyway.
            signature=f"redshift-exchange:{aws.account.account_id}:{aws.region}:{p.reserved_node_id}",
        )

    def _node(self, aws: PlanHandle, node_id: str) -> dict[str, Any]:
        try:
            nodes = aws.read("describe_reserved_nodes", ReservedNodeId=node_id).get("ReservedNodes", [])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ReservedNodeNotFound":
                raise PlanFailed("ReservedNodeNotFound", f"reserved node {node_id} does not exist in "
                                 f"{aws.account.account_id} {aws.region}; nothing was exchanged") from None
            raise
        if len(nodes) != 1:
            raise PlanFailed("ReservedNodeNotFound", f"reserved node {node_id} does not exist in "
                             f"{aws.account.account_id} {aws.region}; nothing was exchanged")
        return dict(nodes[0])

    def _one_target(self, aws: PlanHandle, p: AcceptReservedNodeExchangeParams) -> dict[str, Any]:
        offerings = aws.paginate("get_reserved_node_exchange_offerings", "ReservedNodeOfferings",
                                 ReservedNodeId=p.reserved_node_id)
        matching = [o for o in offerings if o.get("NodeType") == p.target_node_type
                    and (p.target_offering_id is None or o["ReservedNodeOfferingId"] == p.target_offering_id)]
        if not matching:
            raise PlanFailed(
                "NoMatchingOffering",
                f"no exchange offering of reserved node {p.reserved_node_id} is of node type {p.target_node_type}"
                + (f" with id {p.target_offering_id}" if p.target_offering_id else "") + "; nothing was exchanged",
                {"exchange_offerings": [{"offering_id": o["ReservedNodeOfferingId"], "node_type": o.get("NodeType"),
                                         "offering_type": o.get("OfferingType"), "duration": o.get("Duration")}
                                        for o in offerings]},
            )
        if len(matching) > 1:
            raise PlanFailed(
                "AmbiguousOffering",
                f"{len(matching)} exchange offerings of node type {p.target_node_type} match; pin one with "
                "params.target_offering_id; nothing was exchanged",
                {"offering_ids": [o["ReservedNodeOfferingId"] for o in matching]},
            )
        return matching[0]

    # --- the call ------------------------------------------------------------------------------------------
    def submit(self, aws: PlanHandle, params: AcceptReservedNodeExchangeParams, intent: ExchangeIntent) -> Submitted:
        response = aws.send("accept_reserved_node_exchange", ReservedNodeId=intent.source_reserved_node_id,
                            TargetReservedNodeOfferingId=intent.target_offering_id)
        node = response["ExchangedReservedNode"]
        result = self._result(intent, node["ReservedNodeId"], node.get("NodeCount"), None, node.get("State"),
                              "response")
        if node.get("State") == "active":
            return Submitted(result, (node["ReservedNodeId"],))
        # AWS accepted the exchange and is still carrying it out: follow it with the exchange status.
        return Submitted(result, (node["ReservedNodeId"],),
                         follow=f"exchange of reserved node {intent.source_reserved_node_id} is {node.get('State')}")

    def _result(self, intent: ExchangeIntent, node_id: str, count: Any, request_id: str | None, state: Any,
                found_by: str) -> dict[str, Any]:
        return {"source_reserved_node_id": intent.source_reserved_node_id, "exchanged_reserved_node_id": node_id,
                "target_offering_id": intent.target_offering_id, "node_type": intent.target_node_type,
                "node_count": count if count is not None else intent.node_count,
                "exchange_request_id": request_id, "state": state,
                "target_upfront_usd": str(intent.target_upfront_usd),
                "target_hourly_usd": str(intent.target_hourly_usd), "found_by": found_by}

    # --- reconciliation and following ----------------------------------------------------------------------
    def reconcile(
        self, aws: PlanHandle, params: AcceptReservedNodeExchangeParams, intent: ExchangeIntent
    ) -> Reconciled:
        statuses = self._statuses(aws, intent)
        evidence: dict[str, Any] = {"exchanges": [{"id": s["ReservedNodeExchangeRequestId"], "status": s["Status"]}
                                                  for s in statuses]}
        if not statuses:
            return Absent(evidence)
        succeeded = [s for s in statuses if s["Status"] == "SUCCEEDED"]
        if len(succeeded) > 1:  # the source can be exchanged once: never seen, a person looks
            return Ambiguous(tuple(s["ReservedNodeExchangeRequestId"] for s in succeeded), evidence)
        if not succeeded:
            under_way = [s for s in statuses if s["Status"] in EXCHANGE_UNDER_WAY]
            if under_way:
                return Pending(f"exchange {under_way[-1]['ReservedNodeExchangeRequestId']} of reserved node "
                               f"{intent.source_reserved_node_id} is {under_way[-1]['Status']}", evidence)
            last = statuses[-1]
            source = self._node(aws, intent.source_reserved_node_id)
            return Failed("ReservedNodeExchangeFailed",
                          f"AWS reports exchange {last['ReservedNodeExchangeRequestId']} of reserved node "
                          f"{intent.source_reserved_node_id} as {last['Status']}; the source node is "
                          f"{source.get('State')}; nothing was exchanged", {**evidence, "source_state":
                                                                             source.get("State")})
        status = succeeded[0]
        # Confirmed by the nodes' states too: the source retired, the new node in place.
        source = self._node(aws, intent.source_reserved_node_id)
        if source.get("State") != "retired":
            return Pending(f"exchange {status['ReservedNodeExchangeRequestId']} SUCCEEDED; source node "
                           f"{intent.source_reserved_node_id} is still {source.get('State')}", evidence)
        new_nodes = self._exchanged_nodes(aws, intent, status)
        evidence["exchanged"] = [n["ReservedNodeId"] for n in new_nodes]
        if len(new_nodes) != 1:
            return Ambiguous(tuple(evidence["exchanged"]), evidence)
        node = new_nodes[0]
        if node.get("State") != "active":
            return Pending(f"exchanged node {node['ReservedNodeId']} is {node.get('State')}", evidence)
        return Found(self._result(intent, node["ReservedNodeId"], node.get("NodeCount"),
                                  status["ReservedNodeExchangeRequestId"], node.get("State"), "exchange-status"),
                     (node["ReservedNodeId"],), evidence)

    def _statuses(self, aws: PlanHandle, intent: ExchangeIntent) -> list[dict[str, Any]]:
        """Exchanges of the source node to this plan's target, requested since the intent (AWS's clock), oldest
        first. An earlier exchange (one AWS reverted, say) is not this plan's."""
        try:
            statuses = aws.paginate("describe_reserved_node_exchange_status", "ReservedNodeExchangeStatusDetails",
                                    ReservedNodeId=intent.source_reserved_node_id)
        except ClientError as exc:
            # Redshift's model really spells it "NotFond": no exchange of this node was ever requested.
            if exc.response.get("Error", {}).get("Code") in ("ReservedNodeExchangeNotFond",
                                                              "ReservedNodeExchangeNotFound"):
                return []
            raise
        mine = [s for s in statuses if s.get("TargetReservedNodeOfferingId") == intent.target_offering_id
                and s["RequestTime"] >= intent.started_after]
        return sorted(mine, key=lambda s: s["RequestTime"])

    def _exchanged_nodes(
        self, aws: PlanHandle, intent: ExchangeIntent, status: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """The node the exchange made: by the id AWS answered with when this plan's send came back, or else by
        its offering and count, made by this exchange (it keeps the source's start, or starts since the intent),
        and claimed by no other plan."""
        accepted = aws.accepted or {}
        node_id = accepted.get("exchanged_reserved_node_id")
        if node_id:
            return [self._node(aws, node_id)]
        count = status.get("TargetReservedNodeCount", intent.node_count)
        nodes = [
            n for n in aws.paginate("describe_reserved_nodes", "ReservedNodes")
            if n.get("ReservedNodeOfferingId") == intent.target_offering_id and n.get("NodeCount") == count
            and n.get("State") in ("active", "exchanging", "pending-payment")
            and (n["StartTime"] == intent.source_start_time or n["StartTime"] >= intent.started_after)
        ]
        elsewhere = aws.claimed_elsewhere([n["ReservedNodeId"] for n in nodes])
        return [n for n in nodes if n["ReservedNodeId"] not in elsewhere]
