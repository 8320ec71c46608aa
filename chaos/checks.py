"""The end of a chaos run: the ledger held against the sandbox's ground truth, plan by plan.

Every check adds a ``Problem`` instead of stopping at the first: a run reports everything it found. Categories
(``chaos.report`` counts them; each "must be 0"):

- ``duplicate``: something the sandbox made that two plans name, that no plan accounts for, or a plan owning
  more than it asked for (made twice);
- ``disagrees``: a plan's ledger result that is not what the sandbox holds (a resource never made, a succeeded
  plan without its resources, a claim that names another plan, a stored plan that is not what was submitted);
- ``lost``: a valid plan the producer had confirmed that the ledger does not have;
- ``unexplained``: an outcome the fault schedule does not explain (a family plan failed for another reason, a
  needs_attention reason other than an unknown outcome after a send, a valid plan rejected).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from config.accounts import AccountRegistry
from sandbox.control import SandboxControl
from sandbox.errors import SERVER_ERRORS
from tests import chaos_plans
from tests.chaos_plans import ALLOWED_ATTENTION, DUPLICATE_CODES, THROTTLED, Problem, named_in_error
from tests.spine.test_exactly_once import bought
from worker.ledger import PlanRecord
from worker.runtime import Runtime

RI_PURCHASE = "ec2:PurchaseReservedInstancesOffering"
# A plan whose every round met a fault fails having made nothing (worker/settle.py): with the last error's code
# (a throttle, a 5xx, a dropped connection, a read timeout) or OutOfRounds once the reads showed nothing. The
# ground-truth check proves the "nothing": whatever the sandbox made that no plan names is a duplicate.
GAVE_UP = {"OutOfRounds", "ConnectionClosedError", "ReadTimeoutError", "EndpointConnectionError", *THROTTLED,
           *(error.code for error in SERVER_ERRORS.values())}


@dataclass
class Checked:
    problems: list[Problem] = field(default_factory=list)
    kinds: list[chaos_plans.KindReport] = field(default_factory=list)
    ris_bought: int = 0
    explained_family_outcomes: list[str] = field(default_factory=list)

    def add(self, category: str, plan_ids: tuple[str, ...] | list[str], message: str) -> None:
        self.problems.append(Problem(category, tuple(plan_ids), message))


def could_be_its_purchase(record: PlanRecord, ri: dict[str, Any]) -> bool:
    """An OutcomeUnknown plan accounts for an RI no result names when its send record shows a send and the RI is
    what that send would have bought: the intent's offering and count, started after the intent (AWS's clock)."""
    if record.error is None or record.error["code"] != "OutcomeUnknown" or record.intent is None:
        return False
    offering = record.intent["offering"]
    return (record.error["book"]["sends"] >= 1
            and (ri["InstanceType"], ri["ProductDescription"], ri["Duration"], ri["Scope"], ri["OfferingClass"],
                 ri["OfferingType"], ri["InstanceTenancy"], ri["InstanceCount"])
            == (offering["instance_type"], offering["product_description"], offering["duration"], offering["scope"],
                offering["offering_class"], offering["offering_type"], offering["tenancy"],
                record.intent["instance_count"])
            and ri["Start"] >= datetime.fromisoformat(record.intent["started_after"]))


def check_ri_purchases(out: Checked, runtime: Runtime, sandbox: SandboxControl, aws: Callable[..., Any],
                       records: dict[str, PlanRecord], external_id: str) -> None:
    """Per account, who owns each RI bought: the plan whose result lists it, else a plan in needs_attention whose
    evidence accounts for it; one owner each, one RI per succeeded plan, claims to match."""
    for account in sorted({str((r.plan or {})["account_id"]) for r in records.values()}):
        mine = {p: r for p, r in records.items() if (r.plan or {})["account_id"] == account}
        described = {ri["ReservedInstancesId"]: ri for ri in aws("ec2", account_id=account, external_id=external_id)
                     .describe_reserved_instances()["ReservedInstances"]}
        # What DescribeReservedInstances answers is the sandbox's ground truth (seeded, modified, exchanged RIs too).
        truth = {r["id"] for r in sandbox.resources(account_id=account, type="reserved-instances")}
        if set(described) != truth:
            out.add("disagrees", [], f"{account}: DescribeReservedInstances {sorted(set(described) ^ truth)} "
                                     "differ from the sandbox's ground truth")
        purchased = {ri["id"] for ri in bought(sandbox, account)}
        ris = {ri_id: ri for ri_id, ri in described.items() if ri_id in purchased}
        out.ris_bought += len(ris)
        owners: dict[str, list[str]] = {ri_id: [] for ri_id in ris}
        for plan_id, record in mine.items():
            for ri_id in (record.result or {}).get("resource_ids", []):
                if ri_id not in ris:
                    out.add("disagrees", [plan_id], f"{plan_id} claims {ri_id}, which the sandbox never sold")
                    continue
                owners[ri_id].append(plan_id)
        attention = [p for p, r in mine.items() if r.state.value == "needs_attention"]
        for ri_id in [ri_id for ri_id, plans in owners.items() if not plans]:
            owners[ri_id] = [p for p in attention if ri_id in named_in_error(mine[p].error)
                             or could_be_its_purchase(mine[p], ris[ri_id])]
        owned: dict[str, list[str]] = {plan_id: [] for plan_id in mine}
        for ri_id, plans in owners.items():
            if len(plans) != 1:
                ri = ris[ri_id]
                holders = {p: f"{mine[p].state.value} {(mine[p].error or {}).get('code', '')}" for p in plans}
                out.add("duplicate", plans, f"{account}: RI {ri_id} {ri['InstanceType']} x{ri['InstanceCount']}: "
                                            f"{holders or 'no plan'}")
            else:
                owned[plans[0]].append(ri_id)
        claims = runtime.redis.hgetall(runtime.key("claimed", "ec2-ri", account, "us-east-1"))
        for plan_id, record in mine.items():
            state, error = record.state.value, record.error or {}
            if len(owned[plan_id]) > 1:  # flagged (DuplicateSend...) or not, the ground truth holds one too many
                flagged = "flagged" if state == "needs_attention" and error.get("code") in DUPLICATE_CODES else "unseen"
                out.add("duplicate", [plan_id], f"{plan_id} has {owned[plan_id]} ({flagged}): {error}")
            if state not in ("succeeded", "needs_attention") and owned[plan_id]:
                out.add("disagrees", [plan_id], f"{plan_id} is {state} and has {owned[plan_id]}")
            if state == "succeeded":
                if len(owned[plan_id]) != 1:
                    out.add("disagrees", [plan_id], f"{plan_id} succeeded and owns {owned[plan_id]}")
                if any(claims.get(ri_id.encode()) != plan_id.encode() for ri_id in owned[plan_id]):
                    out.add("disagrees", [plan_id], f"{plan_id}: the claims of {owned[plan_id]} name another plan")
            if state == "needs_attention":
                check_ri_attention(out, plan_id, mine, owned[plan_id])


def check_ri_attention(out: Checked, plan_id: str, records: dict[str, PlanRecord], owned: list[str]) -> None:
    """An RI plan left to a person: an unknown outcome after a send, or blocked by such a plan for the same
    offering (nothing sent)."""
    record = records[plan_id]
    error = record.error or {}
    if error.get("code") not in ALLOWED_ATTENTION:
        out.add("unexplained", [plan_id], f"{plan_id} needs attention, unexplained: {error}")
    elif error["code"] == "OutcomeUnknown":
        if error["book"]["sends"] < 1:
            out.add("unexplained", [plan_id], f"{plan_id}: an unknown outcome without a send: {error}")
    else:
        holders = re.findall(r"^plan (\S+) made the same call", error["message"])
        holder = records.get(holders[0]) if holders else None
        if holder is None or (holder.error or {}).get("code") != "OutcomeUnknown":
            out.add("unexplained", [plan_id], f"{plan_id} blocked by {holders}: {holder and holder.error}")
            return
        params, offering = (record.plan or {})["params"], (holder.intent or {}).get("offering", {})
        if (params["instance_type"], params["duration_years"] * 31_536_000) != (
                offering.get("instance_type"), offering.get("duration")):
            out.add("unexplained", [plan_id], f"{plan_id} blocked by {holders[0]}, another offering")
        if owned or error["book"]["sends"] != 0:
            out.add("duplicate", [plan_id], f"{plan_id} was blocked, yet owns {owned}: {error}")


def check_families(out: Checked, batch: chaos_plans.Batch, records: dict[str, PlanRecord],
                   sandbox: SandboxControl, aws: Callable[..., Any]) -> None:
    """Every family's plan succeeded (the scheduled-instance purchase, which AWS no longer sells, failed with
    AWS's empty availability), or was left to a person, or gave up after faults, for a reason the fault schedule
    explains; what each made is exactly what the ledger names (chaos_plans.check_ledger_against_ground_truth)."""
    for plan_id, record in records.items():
        spec, state, error = batch.spec_of[plan_id], record.state.value, record.error or {}
        if state == "needs_attention":
            if error.get("code") not in ALLOWED_ATTENTION or (
                    error["code"] == "OutcomeUnknown" and error["book"]["sends"] < 1):
                out.add("unexplained", [plan_id], f"{plan_id} ({spec.action}) needs attention: {error}")
            else:
                out.explained_family_outcomes.append(plan_id)
        elif spec.expect == "failed":
            if state != "failed" or error.get("code") != "NoScheduledInstanceAvailability":
                out.add("unexplained", [plan_id], f"{plan_id} ({spec.action}) is {state}: {error}")
        elif state == "failed" and error.get("code") in GAVE_UP:
            out.explained_family_outcomes.append(plan_id)  # every round of a run met a fault: nothing made
        elif state != "succeeded":
            out.add("unexplained", [plan_id], f"{plan_id} ({spec.action}) is {state}: {error}")
    found = chaos_plans.check_ledger_against_ground_truth(batch, records, sandbox, aws)
    out.problems.extend(found.problems)
    out.kinds.extend(found.reports)


@dataclass(frozen=True)
class Money:
    account_id: str
    committed_usd: Decimal
    plans: int
    cap_per_day_usd: Decimal | None
    cap_per_month_usd: Decimal | None

    @property
    def over_cap(self) -> bool:
        """All of a run's commitments fall in one day and one month: the total is held against both caps."""
        return any(cap is not None and self.committed_usd > cap
                   for cap in (self.cap_per_day_usd, self.cap_per_month_usd))


def money_by_account(records: dict[str, PlanRecord], registry: AccountRegistry, present: set[str]) -> list[Money]:
    """What each account committed: the ``commitment_usd`` of every plan whose resources are in the sandbox's
    ground truth (``present``: the plans the checks above found owning what the sandbox holds), against the
    account's caps where its configuration has them (``limits.commitment_usd_per_day`` / ``_per_month``)."""
    totals: dict[str, tuple[Decimal, int]] = {}
    for plan_id, record in records.items():
        commitment = (record.intent or {}).get("commitment_usd")
        if plan_id not in present or commitment in (None, ""):
            continue
        account = str((record.plan or {})["account_id"])
        total, count = totals.get(account, (Decimal(0), 0))
        totals[account] = (total + Decimal(str(commitment)), count + 1)
    money = []
    for config in registry.accounts:
        total, count = totals.get(config.account_id, (Decimal(0), 0))
        money.append(Money(config.account_id, total, count, _cap(config.limits.commitment_usd_per_day),
                           _cap(config.limits.commitment_usd_per_month)))
    return money


def _cap(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))
