"""``commitd resale`` and ``commitd exchange``: an operator's resales (Reserved Instance Marketplace listings) and
convertible RI exchanges (docs/operator.md).

A writing command (``resale list``, ``resale cancel``, ``exchange accept``) builds one plan of an existing action
(tasks/ec2_ri_marketplace.py, tasks/ec2_ri_exchange.py) and submits it through the normal intake
(``Intake.submit_raw``, as ``commitd submit`` does): the same validation, account limits, executor protocol and
audit as a planner's plan. ``requested_by`` is the operator (``--as``, default the OS user); ``trigger`` is
``resale`` for listings and cancels, ``operator`` for exchanges. The command shows the plan and asks before
submitting (``--yes`` skips the question), then follows it until it settles.

Plan ids come from the command's content (action, account, region, params, dry run) and the UTC day, so the same
command again answers with the plan it already made, whoever runs it, instead of making a second one; a plan of
the previous day still in flight counts too (a command repeated across midnight). ``--again`` makes a new attempt
(``<id>.2``, ...) once that plan has settled; the actions' own checks (an open listing, a listing no longer active,
retired sources, AWS's refusals) keep a new attempt from doing anything twice. A plan no worker has taken by the
end of the next UTC day expires: an operator's price is never carried out days later.

The reads (``resale status``, ``exchange quote``) go through the account's role, in the family's read session
(``PlanHandle.read``: audited like a plan's reads, under the plan id ``operator.<command>``).
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import click

from worker.logs import get_logger

if TYPE_CHECKING:
    from config.accounts import AccountConfig
    from worker.handle import PlanHandle
    from worker.ledger import PlanRecord
    from worker.runtime import Runtime

log = get_logger("commitd.operator")

LIST = "ec2:CreateReservedInstancesListing"
CANCEL = "ec2:CancelReservedInstancesListing"
EXCHANGE = "ec2:AcceptReservedInstancesExchangeQuote"
STILL_RUNNING = 3  # exit code: the plan had not settled when --timeout ran out
AWS_FEE = Decimal("0.12")  # AWS keeps 12 % of each Marketplace sale's upfront price
MONTH = timedelta(days=30)  # AWS counts a listing's months left in 30-day months, rounded down
CENTS = Decimal("0.01")
POLL_SECONDS = 0.25


def _cli() -> Any:
    """worker.cli, imported when a command runs: it imports this module to register the groups."""
    from worker import cli

    return cli


# --- parameters ------------------------------------------------------------------------------------------------
def _usd(text: str) -> str:
    """One spelling per amount: '450', '450.00' and '450.0' make one plan, not three."""
    return format(Decimal(text).normalize(), "f")


class UsdType(click.ParamType):
    name = "USD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from worker.plans import DECIMAL

        text = str(value).strip()
        if not DECIMAL.match(text):
            self.fail(f"{value!r} is not an amount of US dollars such as 450 or 450.00 (at most 4 decimals)",
                      param, ctx)
        return _usd(text)


class PriceType(click.ParamType):
    """``MONTHS=USD``: the upfront price per instance from MONTHS months left in the RI's term."""

    name = "MONTHS=USD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, str]:
        if isinstance(value, tuple):
            return value
        months, sep, usd = str(value).partition("=")
        if not sep or not months.strip().isdigit():
            self.fail(f"{value!r}: give MONTHS=USD, e.g. 10=450.00", param, ctx)
        return int(months), USD.convert(usd, param, ctx)


USD = UsdType()
PRICE = PriceType()


@dataclass(frozen=True)
class SubmitOptions:
    requested_by: str
    yes: bool
    wait: bool
    timeout: float
    dry_run: bool
    again: bool
    as_json: bool


def _operator(name: str | None) -> str:
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        raise click.ClickException("cannot tell who you are: give --as NAME") from None


def _submit_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options every writing command shares, handed to it as one ``opts``."""

    @functools.wraps(command)
    def run(requested_by: str | None, yes: bool, wait: bool, timeout: float, dry_run: bool, again: bool,
            as_json: bool, **kwargs: Any) -> None:
        opts = SubmitOptions(_operator(requested_by), yes, wait, timeout, dry_run, again, as_json)
        command(opts=opts, **kwargs)

    options = [
        click.option("--as", "requested_by", default=None, help="who asks (the plan's requested_by) "
                     "[default: the OS user]"),
        click.option("--yes", is_flag=True, help="do not ask for confirmation"),
        click.option("--wait/--no-wait", default=True, show_default=True, help="follow the plan until it settles"),
        click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(min=0),
                     help="seconds to follow it, with --wait (exit 3 if still running)"),
        click.option("--dry-run", is_flag=True, help="check everything, change nothing in AWS"),
        click.option("--again", is_flag=True, help="a new plan even though this command's plan of today has settled"),
        click.option("--json", "as_json", is_flag=True, help="print the plan's record as JSON"),
    ]
    for option in reversed(options):
        run = option(run)
    return run


def _where(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option("--region", required=True, help="e.g. us-east-1")(command)
    return click.option("--account", required=True, help="a registered account id")(command)


# --- the plan an operator command submits ------------------------------------------------------------------------
@dataclass(frozen=True)
class OperatorPlan:
    command: str  # "resale-list", "resale-cancel", "exchange-accept": the plan id's first part
    action: str
    account_id: str
    region: str
    params: dict[str, Any]
    requested_by: str
    trigger: str
    dry_run: bool
    ceilings: str  # what the confirmation says the plan will not go beyond

    def content(self) -> dict[str, Any]:
        """What makes two commands the same operation (not who asked)."""
        return {"action": self.action, "account_id": self.account_id, "region": self.region,
                "params": self.params, "dry_run": self.dry_run}

    def first_id(self, day: date) -> str:
        text = json.dumps({**self.content(), "day": day.isoformat()}, sort_keys=True, separators=(",", ":"))
        return f"{self.command}.{day:%Y%m%d}.{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    def envelope(self, plan_id: str, day: date) -> dict[str, Any]:
        expires = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=2)
        return {"plan_id": plan_id, **self.content(), "requested_by": self.requested_by, "trigger": self.trigger,
                "expires_at": expires.isoformat().replace("+00:00", "Z"),
                "notes": f"operator command: commitd {self.command.replace('-', ' ', 1)}"}


def _attempt_id(first: str, attempt: int) -> str:
    return first if attempt == 1 else f"{first}.{attempt}"


def _state(runtime: Runtime, plan_id: str) -> str | None:
    record = runtime.ledger.get(plan_id)
    if record is not None:
        return record.state.value
    stone = runtime.ledger.tombstone(plan_id)  # purged: it still answers for its id
    return str(stone["state"]) if stone is not None else None


def _latest(runtime: Runtime, first: str) -> tuple[int, str | None]:
    """The latest attempt recorded under ``first`` (attempt number, state); (0, None) for none."""
    attempt, state = 0, None
    while (found := _state(runtime, _attempt_id(first, attempt + 1))) is not None:
        attempt, state = attempt + 1, found
    return attempt, state


def _settled(state: str | None) -> bool:
    from worker.plans import TERMINAL_STATES

    return state in {s.value for s in TERMINAL_STATES}


def _choose_id(runtime: Runtime, plan: OperatorPlan, today: date, again: bool) -> str:
    """This command's plan id: the plan it already made (today's, or yesterday's still in flight), or a new one."""
    current: str | None = None
    first = plan.first_id(today)
    attempt, state = _latest(runtime, first)
    if attempt:
        current = _attempt_id(first, attempt)
    else:
        before, before_state = _latest(runtime, plan.first_id(today - timedelta(days=1)))
        if before and not _settled(before_state):
            current, state = _attempt_id(plan.first_id(today - timedelta(days=1)), before), before_state
    if current is None:
        return first
    if not again:
        return current
    if state == "needs_attention":
        raise click.ClickException(f"plan {current} needs a person (its outcome is not known): settle it with "
                                   f"commitd plans resolve {current} first; nothing was submitted")
    if not _settled(state):
        raise click.ClickException(f"plan {current} is still {state}: wait for it (commitd plans show {current}); "
                                   "nothing was submitted")
    return _attempt_id(first, attempt + 1)


def _account(runtime: Runtime, account_id: str, action: str | None = None) -> AccountConfig:
    """The account (and that it allows ``action``), checked before anything is shown or asked; intake checks it
    all again."""
    account = runtime.accounts.get(account_id)
    if account is None:
        raise click.ClickException(f"account {account_id} is not a configured account (COMMITD_ACCOUNTS_FILE)")
    if action is not None and not account.allows(action):
        raise click.ClickException(f"{action} is not allowed for account {account_id} (allowed_actions)")
    return account


def _check_region(action: str, region: str) -> None:
    from tasks import ACTIONS
    from worker.plans import regions_for

    service = ACTIONS[action].service
    if region not in regions_for(service):
        raise click.ClickException(f"--region {region!r} is not a region where {service} exists")


def _check_params(plan: OperatorPlan) -> None:
    from pydantic import ValidationError

    from tasks import ACTIONS
    from worker.plans import describe_validation_error

    try:
        ACTIONS[plan.action].params_model.model_validate(plan.params)
    except ValidationError as exc:
        raise click.ClickException(f"{describe_validation_error(exc, 'params')}; nothing was submitted") from None


def _show(plan: OperatorPlan, plan_id: str, account: AccountConfig, envelope: dict[str, Any]) -> None:
    rows = [("action", plan.action),
            ("account", f"{plan.account_id} ({account.name})" if account.name else plan.account_id),
            ("region", plan.region),
            ("requested by", f"{plan.requested_by} (trigger {plan.trigger})"),
            ("ceilings", plan.ceilings),
            ("expires", f"{envelope['expires_at']} if no worker has taken it by then")]
    if plan.dry_run or account.read_only:
        why = " (the account's role is read-only)" if account.read_only and not plan.dry_run else ""
        rows.append(("dry run", f"yes{why}: nothing is changed in AWS"))
    click.echo(f"commitd will submit plan {plan_id}:")
    for name, value in rows:
        click.echo(f"  {name:<14}{value}")
    click.echo(f"  {'params':<14}" + json.dumps(plan.params, indent=2).replace("\n", "\n" + " " * 16))


def _confirmed() -> bool:
    try:
        return click.confirm("Proceed?", default=False)
    except click.Abort:  # end of input: no answer is a no
        click.echo()
        return False


def _carry_out(plan: OperatorPlan, opts: SubmitOptions, on_submit: Callable[[Runtime], None] | None = None) -> None:
    """Show, confirm, submit through the intake, follow, print; exit 0 succeeded, 1 failed or refused, 3 still
    running at --timeout."""
    cli = _cli()
    runtime: Runtime = cli._runtime()
    account = _account(runtime, plan.account_id, plan.action)
    _check_region(plan.action, plan.region)
    _check_params(plan)
    today = datetime.now(UTC).date()
    plan_id = _choose_id(runtime, plan, today, opts.again)
    existing = runtime.ledger.get(plan_id)
    if existing is None and runtime.ledger.tombstone(plan_id) is None:
        envelope = plan.envelope(plan_id, today)
        _show(plan, plan_id, account, envelope)
        if not opts.yes and not _confirmed():
            click.echo("not confirmed; nothing was submitted")
            sys.exit(1)
        if on_submit is not None:
            on_submit(runtime)
        text = json.dumps(envelope)
    elif existing is not None and existing.plan is not None:
        # The same operation was asked for already: its own text again, so intake answers "existing" whoever
        # asked first (and finishes routing a plan an intake left received).
        text = json.dumps(existing.plan)
    else:
        text = json.dumps(plan.envelope(plan_id, today))
    result = cli._intake(runtime).submit_raw(text, source=f"operator {plan.requested_by}: commitd {plan.command}")
    log.info("operator_plan", command=plan.command, plan_id=plan_id, account_id=plan.account_id,
             region=plan.region, requested_by=plan.requested_by, outcome=result.outcome, state=result.state)
    if not result.ok:
        _fail(opts, plan_id, result.state, f"{result.outcome}: {result.message}")
    if result.outcome == "existing":
        asked_by = (existing.plan or {}).get("requested_by") if existing is not None else None
        click.echo(f"plan {plan_id} exists already{f' (requested by {asked_by})' if asked_by else ''}: "
                   "nothing new was submitted")
    record = _follow(runtime, plan_id, opts.timeout) if opts.wait else runtime.ledger.get(plan_id)
    _report(plan_id, record, result.state, opts)


def _fail(opts: SubmitOptions, plan_id: str, state: str, message: str) -> None:
    if opts.as_json:
        click.echo(json.dumps({"plan_id": plan_id, "state": state, "error": message}, indent=2))
    else:
        click.echo(f"plan {plan_id}: {state}\n{message}")
    sys.exit(1)


def _follow(runtime: Runtime, plan_id: str, timeout: float) -> PlanRecord | None:
    deadline = time.monotonic() + timeout
    try:
        while True:
            record = runtime.ledger.get(plan_id)
            if record is None or _settled(record.state.value) or record.state.value == "needs_attention" \
                    or time.monotonic() >= deadline:
                return record
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; the plan goes on: commitd plans show {plan_id}", err=True)
        sys.exit(STILL_RUNNING)


def _report(plan_id: str, record: PlanRecord | None, state_at_intake: str, opts: SubmitOptions) -> None:
    state = record.state.value if record is not None else state_at_intake
    if opts.as_json:
        click.echo(json.dumps(record.public() if record is not None else {"plan_id": plan_id, "state": state},
                              indent=2))
    else:
        click.echo(f"plan {plan_id}: {state}")
        if record is not None:
            click.echo(_outcome_line(record))
    if state == "succeeded":
        return
    if _settled(state) or state == "needs_attention":
        sys.exit(1)
    if opts.wait:
        sys.exit(STILL_RUNNING)


def _outcome_line(record: PlanRecord) -> str:
    plan_id, state, result = record.plan_id, record.state.value, record.result or {}
    if state == "needs_attention":
        return (f"{(record.error or {}).get('code')}: {(record.error or {}).get('message')}\nit needs a person: "
                f"check AWS, then commitd plans resolve {plan_id}")
    if record.error and state != "succeeded":
        return f"{record.error.get('code')}: {record.error.get('message')}"
    if state != "succeeded":
        return f"still {state}: commitd plans show {plan_id}"
    if result.get("dry_run"):
        return "dry run, nothing was changed: " + json.dumps({k: v for k, v in result.items() if k != "dry_run"})
    if "exchange_id" in result:
        return (f"exchanged {', '.join(result['source_reserved_instance_ids'])} for {result['reserved_instances_id']}"
                f" ({result['instance_count']} x {result['instance_type']}, {result['state']}); paid now "
                f"{result['payment_due_usd']} USD")
    counts = result.get("instance_counts") or {}
    return (f"listing {result.get('reserved_instances_listing_id')} of {result.get('reserved_instances_id')}: "
            f"{result.get('status')}; available {counts.get('available', 0)}, sold {counts.get('sold', 0)}, "
            f"cancelled {counts.get('cancelled', 0)}")


# --- commitd resale ----------------------------------------------------------------------------------------------
@click.group()
def resale() -> None:
    """Sell standard Reserved Instances in the Reserved Instance Marketplace (docs/operator.md)."""


def _places_key(runtime: Runtime) -> str:
    return runtime.key("resale", "places")


@resale.command("list")
@_where
@click.option("--ri", "ri_id", required=True, help="the standard Reserved Instances to sell")
@click.option("--count", type=click.IntRange(min=1), required=True, help="how many of its instances to list")
@click.option("--price", "prices", type=PRICE, multiple=True, required=True,
              help="MONTHS=USD: upfront price per instance from MONTHS months left (repeat for each step)")
@click.option("--min-price", type=USD, default=None,
              help="floor: refuse a schedule with any lower price [default: the lowest --price]")
@_submit_options
def resale_list(account: str, region: str, ri_id: str, count: int, prices: tuple[tuple[int, str], ...],
                min_price: str | None, opts: SubmitOptions) -> None:
    """List COUNT instances of RI for sale at the --price schedule."""
    terms = [term for term, _ in prices]
    if len(set(terms)) != len(terms):
        raise click.BadParameter("each MONTHS once", param_hint="--price")
    floor = min_price if min_price is not None else _usd(str(min(Decimal(p) for _, p in prices)))
    schedule = [{"term": term, "price": price} for term, price in sorted(prices, reverse=True)]
    plan = OperatorPlan(
        "resale-list", LIST, account, region,
        {"reserved_instances_id": ri_id, "instance_count": count, "price_schedules": schedule,
         "min_price_usd": floor},
        opts.requested_by, "resale", opts.dry_run,
        f"every price at least {floor} USD per instance (a listing spends nothing; a sale earns its price less "
        "AWS's 12 % fee)")

    def remember(runtime: Runtime) -> None:  # where `resale status` looks by default
        runtime.redis.sadd(_places_key(runtime), f"{account}:{region}")

    _carry_out(plan, opts, remember)


@resale.command("cancel")
@_where
@click.option("--listing", "listing_id", default=None, help="the listing to cancel")
@click.option("--ri", "ri_id", default=None, help="or: the RI whose active listing to cancel")
@_submit_options
def resale_cancel(account: str, region: str, listing_id: str | None, ri_id: str | None,
                  opts: SubmitOptions) -> None:
    """Cancel an active listing (units already sold stay sold)."""
    if (listing_id is None) == (ri_id is None):
        raise click.UsageError("give --listing or --ri (one of them)")
    params: dict[str, Any] = ({"reserved_instances_listing_id": listing_id} if listing_id is not None
                              else {"reserved_instances_id": ri_id})
    plan = OperatorPlan("resale-cancel", CANCEL, account, region, params, opts.requested_by, "resale",
                        opts.dry_run, "none: a cancel commits no money (units already sold stay sold)")
    _carry_out(plan, opts)


def _status_places(runtime: Runtime, accounts: tuple[str, ...], regions: tuple[str, ...]) -> list[tuple[str, str]]:
    """Where to look: the accounts and regions given, else wherever `resale list` has listed."""
    members = runtime.redis.smembers(_places_key(runtime))
    recorded = sorted({tuple((m.decode() if isinstance(m, bytes) else str(m)).split(":", 1)) for m in members})
    if accounts and regions:
        return [(a, r) for a in accounts for r in regions]
    if regions:
        sellers = [a.account_id for a in runtime.accounts.accounts if a.allows(LIST)]
        return [(a, r) for a in sellers for r in regions]
    return [(a, r) for a, r in recorded if not accounts or a in accounts]


def _reader(runtime: Runtime, action_name: str, account_id: str, region: str, what: str) -> PlanHandle:
    """Reads through the account's role, in the action's family read session (with its session policy)."""
    from tasks import ACTIONS
    from worker.actions import family_permissions
    from worker.handle import PlanHandle

    account = _account(runtime, account_id)
    _check_region(action_name, region)
    action = ACTIONS[action_name]
    return PlanHandle(runtime.sessions, action, account, region, f"operator.{what}",
                      family_permissions(action.family, account.extra_permissions))


def _price_at(schedules: list[tuple[int, Decimal]], months_left: int) -> Decimal:
    """The schedule's price with ``months_left`` months left: a term's price holds down to the next term."""
    covering = [(term, price) for term, price in schedules if term >= months_left]
    return min(covering)[1] if covering else max(schedules)[1]


def _listing_row(account_id: str, region: str, listing: dict[str, Any], ri_end: datetime | None) -> dict[str, Any]:
    """One listing, with what its sales brought: AWS reports units sold, not the price of each sale, so the sales
    are valued at the schedule's price when the listing last changed (a sale changes it)."""
    from tasks.ec2_ri_marketplace import _counts

    counts = _counts(listing)
    schedules = [(int(s["Term"]), Decimal(str(s["Price"]))) for s in listing.get("PriceSchedules", [])]
    active = [Decimal(str(s["Price"])) for s in listing.get("PriceSchedules", []) if s.get("Active")]
    updated: datetime | None = listing.get("UpdateDate")
    received: Decimal | None = Decimal(0)
    if counts["sold"]:
        if ri_end is not None and updated is not None and schedules:
            received = _price_at(schedules, int((ri_end - updated) / MONTH)) * counts["sold"]
        else:
            received = active[0] * counts["sold"] if active else None
    return {
        "account_id": account_id, "region": region,
        "reserved_instances_listing_id": listing["ReservedInstancesListingId"],
        "reserved_instances_id": listing["ReservedInstancesId"], "status": listing.get("Status"),
        "instance_counts": counts, "units_sold": counts["sold"],
        "price_now_usd": str(active[0]) if active else None,
        "price_schedules": [{"term": term, "price_usd": str(price)} for term, price in schedules],
        "received_usd": str(received.quantize(CENTS)) if received is not None else None,
        "net_usd": str((received * (1 - AWS_FEE)).quantize(CENTS)) if received is not None else None,
        "updated_at": updated.isoformat() if updated is not None else None,
    }


def _place_rows(runtime: Runtime, account_id: str, region: str) -> list[dict[str, Any]]:
    reader = _reader(runtime, LIST, account_id, region, "resale-status")
    listings = reader.read("describe_reserved_instances_listings").get("ReservedInstancesListings", [])
    sold_ris = sorted({lst["ReservedInstancesId"] for lst in listings if any(
        c["State"] == "sold" and c["InstanceCount"] for c in lst.get("InstanceCounts", []))})
    ends: dict[str, datetime] = {}
    if sold_ris:
        found = reader.read("describe_reserved_instances", ReservedInstancesIds=sold_ris)["ReservedInstances"]
        ends = {ri["ReservedInstancesId"]: ri["End"] for ri in found}
    rows = [_listing_row(account_id, region, lst, ends.get(lst["ReservedInstancesId"])) for lst in listings]
    return sorted(rows, key=lambda r: (r["updated_at"] or "", r["reserved_instances_listing_id"]))


def _aws_problem(exc: Exception) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"AWS answered {error.get('Code')}: {error.get('Message')}"
    return f"{type(exc).__name__}: {exc}"


def _total(rows: Iterable[dict[str, Any]], key: str) -> Decimal:
    return sum((Decimal(r[key]) for r in rows if r[key] is not None), Decimal(0))


@resale.command("status")
@click.option("--account", "accounts", multiple=True, help="[default: every account `resale list` listed in]")
@click.option("--region", "regions", multiple=True, help="[default: every region `resale list` listed in]")
@click.option("--json", "as_json", is_flag=True)
def resale_status(accounts: tuple[str, ...], regions: tuple[str, ...], as_json: bool) -> None:
    """Listings as AWS shows them: units available, sold and cancelled, and the money the sales brought."""
    from botocore.exceptions import BotoCoreError, ClientError

    runtime: Runtime = _cli()._runtime()
    places = _status_places(runtime, accounts, regions)
    if not places:
        raise click.ClickException("no listings made through commitd to look at: name --account and --region")
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for account_id, region in places:
        try:
            rows.extend(_place_rows(runtime, account_id, region))
        except (ClientError, BotoCoreError) as exc:  # one account's refusal does not hide the others
            errors.append({"account_id": account_id, "region": region, "error": _aws_problem(exc)})
    received, net = _total(rows, "received_usd"), _total(rows, "net_usd")
    totals = {"listings": len(rows), "units_sold": sum(r["units_sold"] for r in rows),
              "received_usd": str(received.quantize(CENTS)), "net_usd": str(net.quantize(CENTS))}
    if as_json:
        click.echo(json.dumps({"listings": rows, "totals": totals, "errors": errors}, indent=2))
    else:
        click.echo("ACCOUNT\tREGION\tLISTING\tRI\tSTATUS\tAVAILABLE\tSOLD\tCANCELLED\tPRICE_NOW\tRECEIVED_USD\t"
                   "NET_USD\tUPDATED")
        for r in rows:
            c = r["instance_counts"]
            click.echo(f"{r['account_id']}\t{r['region']}\t{r['reserved_instances_listing_id']}\t"
                       f"{r['reserved_instances_id']}\t{r['status']}\t{c['available']}\t{c['sold']}\t"
                       f"{c['cancelled']}\t{r['price_now_usd'] or '-'}\t{r['received_usd'] or '-'}\t"
                       f"{r['net_usd'] or '-'}\t{r['updated_at'] or '-'}")
        click.echo(f"{totals['listings']} listings, {totals['units_sold']} units sold: {totals['received_usd']} USD "
                   f"received, {totals['net_usd']} after AWS's 12 % fee (sales valued at the listing's price "
                   "schedule)")
        for error in errors:
            click.echo(f"{error['account_id']} {error['region']}: {error['error']}", err=True)
    if errors:
        sys.exit(1)


# --- commitd exchange --------------------------------------------------------------------------------------------
@click.group()
def exchange() -> None:
    """Exchange convertible Reserved Instances for another configuration (docs/operator.md)."""


def _target_options(command: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.option("--ri", "ris", multiple=True, required=True, help="a convertible RI to give (repeat for more)"),
        click.option("--offering-id", default=None,
                     help="the target offering (or --instance-type, --offering-type and --years)"),
        click.option("--instance-type", default=None, help="e.g. m5.xlarge"),
        click.option("--offering-type", type=click.Choice(["No Upfront", "Partial Upfront", "All Upfront"]),
                     default=None),
        click.option("--years", type=click.Choice(["1", "3"]), default=None, help="the target's term"),
        click.option("--product-description", default="Linux/UNIX", show_default=True),
        click.option("--tenancy", type=click.Choice(["default", "dedicated"]), default="default", show_default=True),
        click.option("--count", type=click.IntRange(1, 10_000), default=None,
                     help="target instances [default: the fewest AWS allows]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _target(offering_id: str | None, instance_type: str | None, offering_type: str | None, years: str | None,
            product_description: str, tenancy: str, count: int | None) -> dict[str, Any]:
    """The target configuration as the action's params hold it (validated there)."""
    target: dict[str, Any] = {"offering_id": offering_id, "instance_type": instance_type,
                              "offering_type": offering_type, "duration_years": int(years) if years else None,
                              "product_description": product_description, "tenancy": tenancy,
                              "instance_count": count}
    return {k: v for k, v in target.items() if v is not None}


@exchange.command("quote")
@_where
@_target_options
@click.option("--json", "as_json", is_flag=True)
def exchange_quote(account: str, region: str, ris: tuple[str, ...], as_json: bool, **target_options: Any) -> None:
    """AWS's quote for exchanging RIs into the target: whether it is valid, the payment due now, the new RIs."""
    from botocore.exceptions import BotoCoreError, ClientError
    from pydantic import ValidationError

    from tasks import ACTIONS
    from tasks.ec2_ri_exchange import AcceptReservedInstancesExchangeQuote, ExchangeTargetConfiguration
    from worker.actions import YEAR_SECONDS, PlanFailed
    from worker.plans import describe_validation_error

    runtime: Runtime = _cli()._runtime()
    try:
        target = ExchangeTargetConfiguration.model_validate(_target(**target_options))
    except ValidationError as exc:
        raise click.ClickException(describe_validation_error(exc)) from None
    reader = _reader(runtime, EXCHANGE, account, region, "exchange-quote")
    action = ACTIONS[EXCHANGE]
    assert isinstance(action, AcceptReservedInstancesExchangeQuote)
    sources = sorted(set(ris))
    try:
        offering = action._one_offering(reader, target)  # the same resolution the plan will make
        request: dict[str, Any] = {"OfferingId": offering["ReservedInstancesOfferingId"]}
        if target.instance_count is not None:
            request["InstanceCount"] = target.instance_count
        quote = reader.read("get_reserved_instances_exchange_quote", ReservedInstanceIds=sources,
                            TargetConfigurations=[request])
    except PlanFailed as exc:
        raise click.ClickException(f"{exc.code}: {exc.message.removesuffix('; nothing was exchanged')}") from None
    except (ClientError, BotoCoreError) as exc:
        raise click.ClickException(_aws_problem(exc)) from None
    given = quote.get("ReservedInstanceValueRollup") or {}
    new = quote.get("TargetConfigurationValueRollup") or {}
    quoted = (quote.get("TargetConfigurationValueSet") or [{}])[0].get("TargetConfiguration") or {}
    expires = quote.get("OutputReservedInstancesWillExpireAt")
    view = {
        "account_id": account, "region": region, "valid": bool(quote.get("IsValidExchange")),
        "validation_failure_reason": quote.get("ValidationFailureReason"),
        "reserved_instance_ids": sources, "currency": quote.get("CurrencyCode", "USD"),
        "source_value_usd": given.get("RemainingTotalValue"), "source_upfront_usd": given.get("RemainingUpfrontValue"),
        "target": {"offering_id": offering["ReservedInstancesOfferingId"], "instance_type": offering["InstanceType"],
                   "offering_type": offering["OfferingType"], "product_description": offering["ProductDescription"],
                   "tenancy": offering.get("InstanceTenancy", "default"),
                   "duration_years": int(offering["Duration"]) // YEAR_SECONDS,
                   "instance_count": quoted.get("InstanceCount")},
        "payment_due_usd": quote.get("PaymentDue"), "target_value_usd": new.get("RemainingTotalValue"),
        "target_hourly_usd": new.get("HourlyPrice"),
        "expires_at": expires.isoformat() if isinstance(expires, datetime) else expires,
    }
    _print_quote(view, as_json)
    if not view["valid"]:
        sys.exit(1)


def _print_quote(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    t = view["target"]
    click.echo(f"quote for {', '.join(view['reserved_instance_ids'])} in {view['account_id']} {view['region']}: "
               + ("valid" if view["valid"] else f"NOT VALID: {view['validation_failure_reason']}"))
    rows = [("given", f"remaining value {view['source_value_usd']} {view['currency']} (upfront "
                      f"{view['source_upfront_usd']})"),
            ("target", f"{t['instance_count']} x {t['instance_type']} {t['product_description']} "
                       f"{t['offering_type']} {t['duration_years']}y {t['tenancy']} (offering {t['offering_id']})"),
            ("payment due", f"{view['payment_due_usd']} {view['currency']} now"),
            ("new value", f"{view['target_value_usd']} {view['currency']} (hourly {view['target_hourly_usd']}), "
                          f"until {view['expires_at']}")]
    for name, value in rows:
        click.echo(f"  {name:<13}{value}")
    if view["valid"]:
        sources = " ".join(f"--ri {ri}" for ri in view["reserved_instance_ids"])
        click.echo(f"accept: commitd exchange accept --account {view['account_id']} --region {view['region']} "
                   f"{sources} --offering-id {t['offering_id']} --count {t['instance_count']} "
                   f"--max-payment-due {view['payment_due_usd']} --max-total {view['target_value_usd']}")


@exchange.command("accept")
@_where
@_target_options
@click.option("--max-payment-due", type=USD, required=True, help="ceiling on the upfront difference paid now")
@click.option("--max-total", type=USD, required=True, help="ceiling on the new RIs' total value")
@_submit_options
def exchange_accept(account: str, region: str, ris: tuple[str, ...], max_payment_due: str, max_total: str,
                    opts: SubmitOptions, **target_options: Any) -> None:
    """Exchange the RIs for the target, within the ceilings (checked against a fresh quote right before the call)."""
    params = {"reserved_instance_ids": sorted(set(ris)), "target_configurations": [_target(**target_options)],
              "max_payment_due_usd": max_payment_due, "max_total_usd": max_total}
    plan = OperatorPlan(
        "exchange-accept", EXCHANGE, account, region, params, opts.requested_by, "operator", opts.dry_run,
        f"payment due now at most {max_payment_due} USD; the new RIs' total value at most {max_total} USD "
        "(against AWS's quote right before the call)")
    _carry_out(plan, opts)
