"""``commitd pause|resume|approve|deny`` and ``commitd plans cancel``: a person's controls (docs/controls.md).

Thin: each command checks its input, calls ``worker.controls`` or ``worker.switches``, and prints one line (or JSON
with ``--json``). A refusal exits 1 with the reason, naming the plan's state."""

from __future__ import annotations

import json
from typing import Any

import click

from worker.controls import ControlRefused


def _runtime() -> Any:
    from worker import cli

    return cli._runtime()


def _print(record: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(record.public(), indent=2))
    else:
        click.echo(f"{record.plan_id}\t{record.state.value}\t{record.history[-1].note if record.history else ''}")


def _run(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except ControlRefused as exc:
        raise click.ClickException(str(exc)) from None


def _names_required(by: str, text: str, what: str) -> None:
    if not by.strip():
        raise click.UsageError("--by must name a person")
    if not text.strip():
        raise click.UsageError(f"{what} must not be empty")


@click.command("approve")
@click.argument("plan_id")
@click.option("--by", required=True, help="who approves (audited)")
@click.option("--note", default="", help="why, for the audit trail")
@click.option("--json", "as_json", is_flag=True)
def approve(plan_id: str, by: str, note: str, as_json: bool) -> None:
    """Approve a plan awaiting approval, for the amounts it shows (commitd plans show PLAN_ID)."""
    from worker.controls import approve_plan

    _names_required(by, "-", "--by")
    _print(_run(approve_plan, _runtime(), plan_id, by, note), as_json)


@click.command("deny")
@click.argument("plan_id")
@click.option("--by", required=True, help="who denies (audited)")
@click.option("--reason", required=True)
@click.option("--json", "as_json", is_flag=True)
def deny(plan_id: str, by: str, reason: str, as_json: bool) -> None:
    """Deny a plan awaiting approval: it is cancelled and never runs."""
    from worker.controls import deny_plan

    _names_required(by, reason, "--reason")
    _print(_run(deny_plan, _runtime(), plan_id, by, reason), as_json)


@click.command("cancel")
@click.argument("plan_id")
@click.option("--by", required=True, help="who cancels (audited)")
@click.option("--reason", required=True)
@click.option("--json", "as_json", is_flag=True)
def cancel(plan_id: str, by: str, reason: str, as_json: bool) -> None:
    """Cancel a plan not yet sent (scheduled, awaiting approval, queued, or reading AWS before its call): it never
    runs afterwards. A plan whose call may have gone out is refused, with its state."""
    from worker.controls import cancel_plan

    _names_required(by, reason, "--reason")
    _print(_run(cancel_plan, _runtime(), plan_id, by, reason), as_json)


def _scope(family: str | None, account: str | None) -> str:
    from tasks.families import FAMILIES
    from worker.switches import SwitchError, check_scope, scope_of

    try:
        check_scope(family, account, list(FAMILIES))
    except SwitchError as exc:
        raise click.UsageError(str(exc)) from None
    return scope_of(family, account)


@click.command("pause")
@click.option("--family", default=None, help="only this family (default: every family)")
@click.option("--account", default=None, help="only this account (default: every account)")
@click.option("--reason", required=True)
@click.option("--by", default=None, help="who pauses (default: the OS user)")
def pause(family: str | None, account: str | None, reason: str, by: str | None) -> None:
    """Stop every mutating call in a scope, right before it is made; paused plans wait and go on after resume."""
    from worker.operator_cli import _operator

    scope = _scope(family, account)
    if not reason.strip():
        raise click.UsageError("--reason must not be empty")
    runtime = _runtime()
    new = runtime.switches.pause(scope, reason, _operator(by), runtime.audit)
    click.echo(f"paused\t{scope}" + ("" if new else "\t(was already paused; reason replaced)"))


@click.command("resume")
@click.option("--family", default=None)
@click.option("--account", default=None)
@click.option("--reason", default="", help="for the audit trail")
@click.option("--by", default=None, help="who resumes (default: the OS user)")
def resume(family: str | None, account: str | None, reason: str, by: str | None) -> None:
    """Lift the pause of exactly this scope (commitd status lists the pauses in force)."""
    from worker.operator_cli import _operator

    scope = _scope(family, account)
    runtime = _runtime()
    if not runtime.switches.resume(scope, _operator(by), reason, runtime.audit):
        in_force = ", ".join(sorted(runtime.switches.in_force())) or "none"
        raise click.ClickException(f"{scope} is not paused (pauses in force: {in_force})")
    click.echo(f"resumed\t{scope}")
