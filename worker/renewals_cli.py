"""``commitd renewals preview`` and ``commitd beat`` (worker.cli registers both)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import click

from config.settings import ConfigurationError

COLUMNS = ("ACCOUNT", "REGION", "KIND", "COMMITMENT", "COUNT", "ENDS", "MODE", "INTO", "UPFRONT_USD",
           "RECURRING_USD_H", "TOTAL_USD", "SCHEDULING", "STATUS", "PLAN_ID")


def _settings() -> Any:
    from config.settings import get_settings
    from worker.logs import configure_logging

    try:
        settings = get_settings()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_format, settings.log_level)
    return settings


def _amount(value: str | None, places: str) -> str:
    return "-" if value is None else str(Decimal(value).quantize(Decimal(places)))


def _status(row: dict[str, Any]) -> str:
    if row["status"] == "planned":
        return f"planned ({row['state']})"
    if row["status"] == "unavailable":
        return f"unavailable: {row['reason']}"
    return {"submit": "would submit", "report": "report only"}[str(row["status"])]


@click.group()
def renewals() -> None:
    """Scheduled renewals of commitments that end soon (docs/renewals.md)."""


@renewals.command("preview")
@click.option("--account", "account_ids", multiple=True, help="only this account (repeatable)")
@click.option("--days", type=click.IntRange(1, 3660), default=None,
              help="commitments ending within this many days [default: each account's renewal window]")
@click.option("--json", "as_json", is_flag=True)
def preview(account_ids: tuple[str, ...], days: int | None, as_json: bool) -> None:
    """What the next scan would renew, into what, for how much; reads AWS and the ledger, submits nothing.
    Exit 1 when an account could not be read."""
    from worker.renewals import renewal_accounts, scan_account
    from worker.runtime import get_runtime

    settings = _settings()
    try:
        accounts = renewal_accounts(settings.accounts_file)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    unknown = sorted(set(account_ids) - {account.account_id for account, _ in accounts})
    if unknown:
        raise click.ClickException(f"no renewal policy for account(s) {', '.join(unknown)} in the account registry")
    runtime = get_runtime()
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for account, policy in accounts:
        if account_ids and account.account_id not in account_ids:
            continue
        report = scan_account(runtime.sessions, runtime.ledger, account, policy, now, days)
        rows += [r.as_dict() for r in report.renewals]
        errors += report.errors
    if as_json:
        click.echo(json.dumps({"at": now.isoformat(), "renewals": rows, "errors": errors}, indent=2))
    else:
        click.echo("\t".join(COLUMNS))
        for r in rows:
            click.echo("\t".join(str(v) for v in (
                r["account_id"], r["region"], r["kind"], r["commitment_id"], r["count"], r["ends_at"], r["mode"],
                r["into"] or "-", _amount(r["upfront_usd"], "0.01"), _amount(r["recurring_usd_per_hour"], "0.0001"),
                _amount(r["total_usd"], "0.01"), r["scheduling"] or "-", _status(r), r["plan_id"])))
        new = [r for r in rows if r["status"] == "submit"]
        total = sum((Decimal(r["total_usd"]) for r in new), Decimal(0))
        upfront = sum((Decimal(r["upfront_usd"]) for r in new), Decimal(0))
        click.echo(f"{len(new)} renewals would be submitted: {upfront:.2f} USD upfront, {total:.2f} USD committed "
                   "in total", err=True)
    for error in errors:
        click.echo(f"error: account {error['account_id']} {error['region']} {error['kind']}: {error['code']}: "
                   f"{error['message']}", err=True)
    if errors:
        sys.exit(1)


@click.command()
@click.option("--interval", type=click.FloatRange(min=1), default=None,
              help="seconds between renewal scans [default: 3600]")
@click.option("--loop-interval", type=click.FloatRange(min=0.1), default=None,
              help="longest sleep between ticks; a standby polls the lock this often [default: 5]")
@click.option("--lock-timeout", type=click.FloatRange(min=0.2), default=None,
              help="how long the lock outlives a beat that died [default: 5 × loop interval]")
def beat(interval: float | None, loop_interval: float | None, lock_timeout: float | None) -> None:
    """Run the schedule (celery beat with redbeat: several may run, one fires; the others stand by)."""
    from worker.beat import LOOP_INTERVAL, SCAN_INTERVAL, run_beat

    settings = _settings()
    try:
        run_beat(settings, interval or SCAN_INTERVAL, loop_interval or LOOP_INTERVAL, lock_timeout)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def _standalone() -> None:
    """The same commands without commitd's CLI (python -m worker.renewals_cli)."""


_standalone.add_command(renewals)
_standalone.add_command(beat)

if __name__ == "__main__":
    _standalone()
