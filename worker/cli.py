"""The ``commitd`` command line."""

from __future__ import annotations

import json
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from config.settings import ConfigurationError, load_settings


def _runtime(daemon: bool = False) -> Any:
    """The runtime for a command. A one-shot command (submit, plans, audit…) logs warnings and errors only, so its
    output is what it prints, unless COMMITD_LOG_LEVEL asks for more; the daemons log at COMMITD_LOG_LEVEL."""
    import os

    from config.settings import get_settings
    from worker.logs import configure_logging
    from worker.runtime import get_runtime

    try:
        settings = get_settings()
        quiet = not daemon and "COMMITD_LOG_LEVEL" not in os.environ
        configure_logging(settings.log_format, "WARNING" if quiet else settings.log_level)
        runtime = get_runtime()
        runtime.accounts  # noqa: B018  (fail now, naming the setting, if the account file is wrong)
        return runtime
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


def _intake(runtime: Any) -> Any:
    from tasks import ACTIONS
    from worker.celery_app import enqueue
    from worker.intake import Intake

    return Intake(runtime, ACTIONS, enqueue)


@click.group()
def main() -> None:
    """commitd: executes cloud-commitment plans in customers' AWS accounts, exactly once."""


# --- intake --------------------------------------------------------------------------------------------------
def split_input(text: str) -> list[str]:
    """One plan, a JSON array of plans, or JSON lines → one JSON text per plan (bad lines stay as they are)."""
    stripped = text.strip()
    if not stripped:
        return []
    try:
        data = json.loads(stripped)
    except RecursionError:  # nested deeper than Python parses: one plan, which the intake rejects with a reason
        return [stripped]
    except ValueError:
        return [line for line in stripped.splitlines() if line.strip()]
    if isinstance(data, list):
        return [json.dumps(item) for item in data]
    return [stripped]


def read_plans_text(source: Any) -> str:
    """The file's text. Bytes that are not UTF-8 are refused here, naming where (never decoded with replacement
    characters, which would change the plans silently)."""
    raw = source.read()
    try:
        return str(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{source.name} is not valid UTF-8 (byte {exc.start} is "
                                   f"{raw[exc.start:exc.start + 1]!r}); nothing was submitted") from None


@main.command()
@click.argument("source", type=click.File("rb"))
def submit(source: Any) -> None:
    """Record plans from FILE (or - for standard input): one plan, a JSON array, or JSON lines."""
    runtime = _runtime()
    intake = _intake(runtime)
    failures = 0
    for text in split_input(read_plans_text(source)):
        result = intake.submit_raw(text, source="cli")
        line = f"{result.plan_id}\t{result.state}"
        if result.outcome != "accepted":
            line += f"\t{result.outcome}"
        if result.message:
            line += f"\t{result.message}"
        # Printable whatever the plan held (a lone surrogate is shown escaped, never a crash of the command).
        click.echo(line.encode("utf-8", "backslashreplace").decode())
        failures += 0 if result.ok else 1
    if failures:
        sys.exit(1)


@main.command()
def intake() -> None:
    """Run the intake: read plans from the Redis stream, sweep scheduled and stalled plans."""
    runtime = _runtime(daemon=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    click.echo(f"commitd intake reading {runtime.key('plans')}", err=True)
    from worker.notify import start_notifier

    start_notifier(runtime, stop)
    try:
        _intake(runtime).run_forever(stop)
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--queues", default=None, help="comma-separated family queues (default: all)")
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "threads", "solo"]),
              help="prefork: a process per plan in flight; threads: 16-64 plans in flight per process, for work that "
                   "waits on AWS (docs/performance.md)")
def worker(queues: str | None, concurrency: int, pool: str) -> None:
    """Run a Celery worker for the family queues."""
    _runtime(daemon=True)
    from tasks.families import FAMILIES
    from worker.celery_app import app
    from worker.renewals import QUEUE as RENEWALS_QUEUE

    names = queues or ",".join([*(f.queue for f in FAMILIES), RENEWALS_QUEUE])
    app.worker_main(["worker", "-Q", names, "-c", str(concurrency), "-P", pool, "--without-gossip",
                     "--without-mingle", "-l", "INFO"])


# --- plans ---------------------------------------------------------------------------------------------------
@main.group()
def plans() -> None:
    """Inspect and settle plans in the ledger."""


def _state_option(value: str | None) -> Any:
    from worker.plans import PlanState

    if value is None:
        return None
    try:
        return PlanState(value)
    except ValueError:
        raise click.BadParameter(f"one of {', '.join(s.value for s in PlanState)}") from None


@plans.command("list")
@click.option("--state", default=None, help="only plans in this state")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000), help="plans per page")
@click.option("--cursor", default=None, help="continue after the page that printed it")
@click.option("--json", "as_json", is_flag=True)
def plans_list(state: str | None, limit: int, cursor: str | None, as_json: bool) -> None:
    """Plans, newest first (by the time intake received them), one page at a time. Columns: PLAN_ID, STATE,
    ACTION, ACCOUNT, REGION, UPDATED (UTC)."""
    from worker.ledger_views import plans_page

    runtime = _runtime()
    if cursor is not None:
        try:
            float(cursor)
        except ValueError:
            raise click.BadParameter("a cursor printed by a previous page", param_hint="--cursor") from None
    page = plans_page(runtime.ledger, _state_option(state), limit, cursor)
    if as_json:
        click.echo(json.dumps({"plans": [r.public() for r in page.records], "next_cursor": page.cursor}, indent=2))
        return
    click.echo("PLAN_ID\tSTATE\tACTION\tACCOUNT\tREGION\tUPDATED")
    for r in page.records:
        plan = r.plan or {}
        click.echo(f"{r.plan_id}\t{r.state.value}\t{plan.get('action', '-')}\t{plan.get('account_id', '-')}\t"
                   f"{plan.get('region', '-')}\t{r.updated_at.isoformat(timespec='seconds')}")
    if page.cursor is not None:
        click.echo(f"more: commitd plans list{f' --state {state}' if state else ''} --limit {limit} "
                   f"--cursor {page.cursor}", err=True)


@plans.command("show")
@click.argument("plan_id")
@click.option("--json", "as_json", is_flag=True)
def plans_show(plan_id: str, as_json: bool) -> None:
    runtime = _runtime()
    record = runtime.ledger.get(plan_id)
    if record is None:
        raise click.ClickException(f"no plan {plan_id}")
    data = record.public()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"plan {record.plan_id}: {record.state.value} (attempts {record.attempts})")
    for step in record.history:
        again = (f" (again {step.repeated} time(s), the last at {step.last_at.isoformat(timespec='seconds')})"
                 if step.repeated and step.last_at else "")
        click.echo(f"  {step.at.isoformat(timespec='seconds')}  {step.state.value:18s} {step.note}{again}")
    for key in ("idempotency", "result", "error"):
        if data.get(key):
            click.echo(f"{key}: {json.dumps(data[key])}")


@plans.command("resolve")
@click.argument("plan_id")
@click.option("--as", "outcome", required=True, type=click.Choice(["succeeded", "failed", "retry", "cancelled"]))
@click.option("--note", required=True, help="what you checked in AWS")
@click.option("--resource-id", default=None, help="with --as succeeded: the resource AWS shows")
def plans_resolve(plan_id: str, outcome: str, note: str, resource_id: str | None) -> None:
    """Settle a plan that needs attention, after checking AWS yourself."""
    from worker.plans import PlanState

    runtime = _runtime()
    record = runtime.ledger.get(plan_id)
    if record is None:
        raise click.ClickException(f"no plan {plan_id}")
    if record.state != PlanState.NEEDS_ATTENTION:
        raise click.ClickException(f"plan {plan_id} is {record.state.value}; only plans needing attention are settled")
    target = {"succeeded": PlanState.SUCCEEDED, "failed": PlanState.FAILED, "retry": PlanState.QUEUED,
              "cancelled": PlanState.CANCELLED}[outcome]
    from tasks import ACTIONS
    from worker.claims import Claims

    plan = record.plan or {}
    action = ACTIONS[plan["action"]]
    changes: dict[str, Any] = {}
    if target == PlanState.SUCCEEDED:
        resource_ids = [resource_id] if resource_id else list((record.result or {}).get("resource_ids", []))
        claims = Claims(runtime.redis, runtime.key("claimed", action.nouns.claim_kind, plan["account_id"],
                                                   plan["region"]))
        conflicts = claims.claim(plan_id, resource_ids)
        if conflicts:
            raise click.ClickException(f"{', '.join(conflicts)} already belongs to plan(s) "
                                       f"{', '.join(sorted(set(conflicts.values())))}; nothing changed")
        changes["result"] = {**(record.result or {}), "resolved_by_operator": True, "resource_ids": resource_ids}
        changes["verification"] = None
    if target == PlanState.QUEUED:
        # A retry starts over: reads, a new intent, then a send. Only do this once AWS shows nothing was bought.
        changes.update(intent=None, book=None, attempts=0)
    settled = runtime.ledger.transition(record, target, f"operator: {note}", **changes)
    from worker.controls import settle_budget

    settle_budget(runtime, settled)  # succeeded: the reservation is used; failed or cancelled: released
    lock_key = (record.book or {}).get("lock_key")
    if lock_key:
        from worker.lease import SignatureLock

        SignatureLock(runtime.redis, lock_key, plan_id).release()
    if target == PlanState.QUEUED:
        from worker.celery_app import enqueue

        enqueue(action.family, plan_id)
    click.echo(f"{plan_id}\t{target.value}")


@plans.command("purge")
@click.option("--older-than-days", type=float, required=True)
@click.option("--state", "states", multiple=True, default=["succeeded", "failed", "rejected", "cancelled", "expired"])
@click.option("--yes", is_flag=True, help="do it (without: say how many would go)")
def plans_purge(older_than_days: float, states: tuple[str, ...], yes: bool) -> None:
    """Delete terminal plan records; the audit trail keeps their history."""
    runtime = _runtime()
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    chosen = [_state_option(s) for s in states]
    if not yes:
        count = sum(1 for s in chosen for r in runtime.ledger.list(s) if r.updated_at < cutoff)
        click.echo(f"{count} plans would be purged; add --yes")
        return
    from worker.retention import purge_settled_plans

    try:
        purged, busy = purge_settled_plans(runtime.ledger, cutoff, frozenset(chosen))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    runtime.ledger.trim_tombstones(runtime.key("plans"), runtime.settings.visibility_timeout)
    click.echo(f"{purged} plans purged" + (f"; {busy} changed meanwhile or still being checked: run it again later"
                                           if busy else ""))


@main.group()
def retention() -> None:
    """Keep Redis flat: purge settled plans, trim the intake stream, archive dead letters and the audit trail."""


@retention.command("run")
def retention_run() -> None:
    """One retention run now, with the COMMITD_RETENTION_* settings (the intake also runs it on a schedule)."""
    from worker.retention import run_retention

    report = run_retention(_runtime())
    click.echo(json.dumps(report.as_dict(), indent=2, default=str))


# --- organization sub-account transfer -----------------------------------------------------------------------
# Exit codes of start and resume: 0 invited (or, with --no-wait, carried on as far as it goes now), 1 stopped or
# refused, 3 still in progress when --timeout ran out (run resume or status later).
TRANSFER_STILL_RUNNING = 3


@main.group()
def transfer() -> None:
    """Move an account between organizations: create it (optional), remove it from the source organization,
    invite it into the buying one (docs/actions/org-transfer.md)."""


def _print_transfer(view: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(view.model_dump(mode="json"), indent=2))
        return
    where = f" at {view.step}" if view.step else ""
    click.echo(f"transfer {view.transfer_id}: {view.phase}{where}\taccount {view.account_id or '-'}")
    for step in view.steps:
        if step.error and step.state != "succeeded":
            detail = f"{step.error.get('code')}: {step.error.get('message')}"
        elif step.result:
            detail = json.dumps({k: v for k, v in step.result.items()
                                 if k in ("account_id", "handshake_id", "handshake_state", "removed")}, sort_keys=True)
        else:
            detail = "-"
        click.echo(f"{step.name}\t{step.state}\t{step.plan_id or '-'}\t{step.account_id}\t{detail}")
    if view.reason:
        click.echo(f"stopped: {view.reason}")
    click.echo(view.message)


def _finish_transfer(runtime: Any, intake: Any, view: Any, wait: bool, timeout: float, as_json: bool) -> None:
    from worker.transfer import follow

    if wait:
        view = _transfer_call(lambda: follow(runtime, intake, view.transfer_id, timeout, first=view))
    _print_transfer(view, as_json)
    if view.phase == "stopped":
        sys.exit(1)
    if wait and view.phase == "in_progress":
        sys.exit(TRANSFER_STILL_RUNNING)


def _transfer_call(call: Any, *args: Any) -> Any:
    from worker.transfer import TransferError

    try:
        return call(*args)
    except TransferError as exc:
        raise click.ClickException(str(exc)) from None


@transfer.command("start")
@click.argument("transfer_id")
@click.option("--from", "source", required=True, help="management account of the source organization")
@click.option("--to", "buyer", required=True, help="management account of the buying organization")
@click.option("--account-id", default=None, help="move this existing member account of the source organization")
@click.option("--email", default=None, help="create the account to move, with this root email")
@click.option("--account-name", default=None, help="with --email: the new account's name")
@click.option("--role-name", default=None, help="with --email: the role AWS creates in the new account")
@click.option("--iam-user-access-to-billing", type=click.Choice(["ALLOW", "DENY"]), default=None)
@click.option("--notes", default=None, help="sent with the invitation")
@click.option("--requested-by", required=True, help="who asked for the transfer (kept in every step's plan)")
@click.option("--wait/--no-wait", default=True, show_default=True, help="follow the transfer until it stops")
@click.option("--timeout", default=3600.0, show_default=True, type=float, help="seconds to follow it, with --wait")
@click.option("--json", "as_json", is_flag=True)
def transfer_start(transfer_id: str, source: str, buyer: str, account_id: str | None, email: str | None,
                   account_name: str | None, role_name: str | None, iam_user_access_to_billing: str | None,
                   notes: str | None, requested_by: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Start transfer TRANSFER_ID (the same command again carries the same transfer on)."""
    from pydantic import ValidationError

    from worker.plans import describe_validation_error
    from worker.transfer import TransferSpec, start

    new_account = None
    if email is not None or account_name is not None:
        new_account = {"email": email, "account_name": account_name, "role_name": role_name,
                       "iam_user_access_to_billing": iam_user_access_to_billing}
        new_account = {k: v for k, v in new_account.items() if v is not None}
    try:
        spec = TransferSpec.model_validate({
            "transfer_id": transfer_id, "source_account_id": source, "buyer_account_id": buyer,
            "account_id": account_id, "new_account": new_account, "notes": notes, "requested_by": requested_by})
    except ValidationError as exc:
        raise click.ClickException(describe_validation_error(exc)) from None
    runtime = _runtime()
    intake = _intake(runtime)
    view = _transfer_call(start, runtime, intake, spec)
    _finish_transfer(runtime, intake, view, wait, timeout, as_json)


@transfer.command("status")
@click.argument("transfer_id")
@click.option("--json", "as_json", is_flag=True)
def transfer_status(transfer_id: str, as_json: bool) -> None:
    """Where transfer TRANSFER_ID is, step by step (changes nothing)."""
    from worker.transfer import status

    runtime = _runtime()
    _print_transfer(_transfer_call(status, runtime, transfer_id), as_json)


@transfer.command("resume")
@click.argument("transfer_id")
@click.option("--wait/--no-wait", default=True, show_default=True, help="follow the transfer until it stops")
@click.option("--timeout", default=3600.0, show_default=True, type=float, help="seconds to follow it, with --wait")
@click.option("--json", "as_json", is_flag=True)
def transfer_resume(transfer_id: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Carry transfer TRANSFER_ID on from where it stopped (a failed step is tried again as a new plan; finished
    steps are never repeated)."""
    from worker.transfer import resume

    runtime = _runtime()
    intake = _intake(runtime)
    view = _transfer_call(resume, runtime, intake, transfer_id)
    _finish_transfer(runtime, intake, view, wait, timeout, as_json)


# --- audit ---------------------------------------------------------------------------------------------------
@main.group()
def audit() -> None:
    """The chained audit trail (docs/audit.md)."""


@audit.command("tail")
@click.option("--plan", "plan_id", default=None)
@click.option("-n", "count", default=20, show_default=True, type=click.IntRange(min=1))
def audit_tail(plan_id: str | None, count: int) -> None:
    """The last N entries, oldest first (read backwards from the end, only as far as needed)."""
    runtime = _runtime()
    for row in runtime.audit.tail(count, plan_id):
        click.echo(json.dumps(row, sort_keys=True))


@audit.command("verify")
@click.option("--archive", "archive_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="the archive directory to check against Redis [default: COMMITD_AUDIT_ARCHIVE_DIR]")
@click.option("--full", is_flag=True, help="also check every entry of every archive file (slow), not only their "
              "checkpoints")
def audit_verify(archive_dir: Path | None, full: bool) -> None:
    """Check the trail in Redis from its checkpoint, and the archive's checkpoints. Exit 0: intact; 1: broken
    (altered, removed, inserted or reordered entries, or a checkpoint that does not match); 3: not verifiable
    here (keyed entries without the key, or another key)."""
    from worker.archive import verify_archive

    runtime = _runtime()
    result = runtime.audit.verify()
    mode = f"keyed (HMAC-SHA256, key id {runtime.audit.key.id})" if runtime.audit.key else "unkeyed (SHA-256)"
    if result.unverifiable:
        click.echo(f"audit trail NOT VERIFIED: {result.reason}", err=True)
        sys.exit(3)
    if not result.ok:
        where = f" at entry {result.broken_entry} (entry {result.entries})" if result.broken_entry else ""
        click.echo(f"audit trail BROKEN{where}: {result.reason}", err=True)
        sys.exit(1)
    since = (f", from checkpoint #{result.checkpoint.seq} ({result.checkpoint.entries} entries archived)"
             if result.checkpoint else "")
    click.echo(f"audit trail intact: {result.entries} entries in Redis in {result.chains} chains{since}; {mode}")
    if result.lost:
        click.echo(f"warning: {result.lost} chains lost their last entry (audit_chain_lost: a Redis failover or a "
                   "restart without fsync, or a removal): `commitd audit tail` shows the events", err=True)
    directory = archive_dir or runtime.settings.audit_archive_dir
    if directory is None:
        return
    check = verify_archive(directory, runtime.audit.key, result.checkpoint, full)
    if check.unverifiable:
        click.echo(f"audit archive NOT VERIFIED: {check.file or directory}: {check.reason}", err=True)
        sys.exit(3)
    if not check.ok:
        click.echo(f"audit archive BROKEN: {check.file or directory}: {check.reason}", err=True)
        sys.exit(1)
    if not check.files:
        click.echo(f"audit archive: no files in {directory} yet (nothing archived)")
        return
    scope = f"{check.entries} entries checked" if full else "checkpoints checked"
    first = f" from checkpoint #{check.first_seq}" if check.first_seq and check.first_seq > 1 else ""
    click.echo(f"audit archive intact: {check.files} files{first} ({scope}), the newest is Redis's checkpoint")


@audit.command("export")
@click.option("--since", default=None, help="RFC 3339 time; only entries Redis added at or after it")
def audit_export(since: str | None) -> None:
    """Entries as JSON Lines (read from the time given, not filtered after reading everything)."""
    runtime = _runtime()
    start = None
    if since:
        try:
            start = datetime.fromisoformat(since)
        except ValueError:
            raise click.BadParameter("an RFC 3339 time, e.g. 2026-11-01T00:00:00+00:00", param_hint="--since") from None
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
    for row in runtime.audit.records(since=start):
        click.echo(json.dumps(row, sort_keys=True))


@audit.command("archive")
@click.option("--older-than-days", type=click.FloatRange(min=0), default=None,
              help="archive entries older than this [default: COMMITD_AUDIT_RETENTION_DAYS]")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="[default: COMMITD_AUDIT_ARCHIVE_DIR]")
@click.option("--adopt-unkeyed", is_flag=True, help="keyed mode: seal entries written before the key was set "
              "under a keyed checkpoint (once, after every process has the key)")
def audit_archive(older_than_days: float | None, directory: Path | None, adopt_unkeyed: bool) -> None:
    """Export the entries older than the retention to the archive directory, then trim them from Redis (what the
    intake's retention run does every COMMITD_RETENTION_INTERVAL). Exit 1 if the entries do not verify: they are
    then left in Redis."""
    from worker.archive import ArchiveBusy, run_archive

    runtime = _runtime()
    try:
        run = run_archive(runtime, older_than_days, directory, seconds=None, adopt_unkeyed=adopt_unkeyed)
    except (ValueError, ArchiveBusy) as exc:
        raise click.ClickException(str(exc)) from None
    for done in run.files:
        if done.path is not None and done.checkpoint is not None:
            click.echo(f"{done.path}\t{done.entries} entries\tcheckpoint #{done.checkpoint.seq} "
                       f"{done.checkpoint.digest}")
    if run.refused is not None:
        click.echo(f"audit trail BROKEN, nothing more archived: {run.refused}", err=True)
        sys.exit(1)
    click.echo(f"{run.entries} entries archived" if run.entries else "nothing to archive")


# --- schema and configuration --------------------------------------------------------------------------------
@main.command()
@click.argument("action", required=False)
@click.option("--version", "version", type=int, default=None,
              help="the envelope's contract version (default: the newest this build accepts)")
def schema(action: str | None, version: int | None) -> None:
    """Print the JSON Schema of the plan envelope, or of ACTION's params."""
    from worker.plans import ACCEPTED_VERSIONS

    if version is not None and version not in ACCEPTED_VERSIONS:
        raise click.ClickException(f"version {version} is not one this build accepts (accepted: "
                                   f"{', '.join(str(v) for v in ACCEPTED_VERSIONS)})")
    try:
        load_settings()  # a bad setting stops every command, this one included
        from tasks import ACTIONS, find_action
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    from worker.plans import PlanEnvelope

    if action is None:
        out = {"envelope": PlanEnvelope.model_json_schema(),
               "actions": {name: a.params_model.model_json_schema() for name, a in ACTIONS.items()}}
    else:
        found = find_action(action)
        if found is None:
            raise click.ClickException(f"unknown action {action}; known: {', '.join(ACTIONS)}")
        out = found.params_model.model_json_schema()
    click.echo(json.dumps(out, indent=2))


@main.group()
def config() -> None:
    """Configuration."""


def configuration_problems() -> list[str]:
    """What the daemon's commands will need at start, checked now: the settings, the account registry, every
    account's ExternalId source, Redis. Each problem names what to fix (never a secret)."""
    from config.accounts import AccountRegistry
    from worker.runtime import Runtime

    try:
        settings = load_settings()
    except ConfigurationError as exc:
        return [f"settings: {exc}"]
    problems: list[str] = []
    try:
        registry = AccountRegistry.load(settings.accounts_file)
    except ConfigurationError as exc:
        problems.append(f"account registry: {exc}")
    else:
        if not registry.accounts:
            problems.append("account registry: no accounts (COMMITD_ACCOUNTS_FILE)")
        for account in registry.accounts:
            try:
                if account.external_id() is None:
                    problems.append(f"account {account.account_id}: no ExternalId source (external_id_env or "
                                    "external_id_file)")
            except ConfigurationError as exc:
                problems.append(str(exc))
    try:
        Runtime(settings).redis.ping()
    except Exception as exc:  # any failure to reach Redis is reported, whatever its kind
        problems.append(f"redis: cannot reach it ({type(exc).__name__}: {exc})")
    return problems


@config.command("check")
def config_check() -> None:
    """Check now what intake, workers and the CLI will need at start; exit 1 naming each problem."""
    problems = configuration_problems()
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    if problems:
        sys.exit(1)
    click.echo("configuration ok: settings, account registry, every account's ExternalId source, Redis")


@config.command("show")
@click.option("--check", "check", is_flag=True, help="also run `commitd config check` (exit 1 on a problem)")
def config_show(check: bool) -> None:
    from config.accounts import AccountRegistry
    from config.settings import load_settings

    try:
        settings = load_settings()
        registry = AccountRegistry.load(settings.accounts_file)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    accounts = [
        {**a.model_dump(mode="json", exclude={"external_id_env", "external_id_file"}),
         "external_id": "***" if (a.external_id_env or a.external_id_file) else None}
        for a in registry.accounts
    ]
    click.echo(json.dumps({"settings": settings.masked(), "accounts": accounts}, indent=2))
    if check:
        problems = configuration_problems()
        for problem in problems:
            click.echo(f"problem: {problem}", err=True)
        if problems:
            sys.exit(1)


# --- sandbox and demo ----------------------------------------------------------------------------------------
@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.pass_context
def sandbox(ctx: click.Context) -> None:
    """Run the AWS commitment sandbox (see `commitd sandbox --help`)."""
    from sandbox.__main__ import main as sandbox_main

    sys.exit(sandbox_main(list(ctx.args)))


@main.command()
@click.option("--keep", is_flag=True, help="leave the demo's Redis data in place")
def demo(keep: bool) -> None:
    """Run the whole path on this machine: sandbox, Redis, intake, a worker, sample plans."""
    from worker.demo import run_demo

    sys.exit(run_demo(keep=keep))


# Command groups that live in their own modules (each imports this module only when a command runs).
from worker.operator_cli import exchange, resale  # noqa: E402
from worker.renewals_cli import beat, renewals  # noqa: E402

main.add_command(resale)
main.add_command(exchange)
main.add_command(renewals)
main.add_command(beat)
from worker.prometheus import metrics  # noqa: E402  (commitd metrics, commitd metrics serve)
from worker.status import status  # noqa: E402

main.add_command(metrics)
main.add_command(status)

from worker.controls_cli import approve, cancel, deny, pause, resume  # noqa: E402
from worker.health import health  # noqa: E402
from worker.policy import policy  # noqa: E402

main.add_command(policy)
main.add_command(health)
for command in (approve, deny, pause, resume):
    main.add_command(command)
plans.add_command(cancel)


if __name__ == "__main__":
    main()
