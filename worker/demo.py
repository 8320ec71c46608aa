"""``commitd demo``: the whole path on one machine, with sample plans whose outcome is known in advance.

Pieces: the AWS sandbox in a thread of this process; Redis at ``COMMITD_REDIS_URL`` when it answers (under a key
prefix of this run only, deleted afterwards unless ``--keep``), else a private ``redis-server`` started and stopped
here; one Celery worker as a child process (its log goes to a file); the intake loop in a thread of this process.
Sample plans go in through the Redis stream, as any producer would send them: first EC2 RI purchases (one of them
throttled once by the sandbox), then one plan of every family (``worker/demo_tour.py``). The demo prints each
state change, a table per part, the sandbox's ground truth and the audit verification, and exits 0 only when
everything is as expected. Everything it started is stopped, and its files removed, whatever happens (the logs
stay on failure).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ACCOUNT = "111122223333"
EXTERNAL_ID_ENV = "COMMITD_DEMO_EXTERNAL_ID"
PURCHASE = "ec2:PurchaseReservedInstancesOffering"
TIMEOUT_SECONDS = 90.0  # for every plan of the demo to settle
INSTALL_HINT = "install Redis (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"


class DemoUnavailable(RuntimeError):
    """Something the demo needs is missing on this machine (exit 2)."""


class DemoFailed(RuntimeError):
    """A piece of the demo did not start or stopped (exit 1)."""


# --- the sample plans ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    plan: dict[str, Any]
    expected: str
    error_code: str | None = None
    dry_run: bool = False
    family: str | None = None  # the tour of every family: the family the plan's action belongs to

    @property
    def plan_id(self) -> str:
        return str(self.plan["plan_id"])

    def met(self, record: Any) -> bool:
        if record is None or record.state.value != self.expected:
            return False
        if self.error_code is not None and (record.error or {}).get("code") != self.error_code:
            return False
        if self.expected == "succeeded":
            result = record.result or {}
            if self.dry_run:
                return bool(result.get("dry_run"))
            return bool(result.get("reserved_instances_id" if self.plan["action"] == PURCHASE else "resource_ids"))
        return True


def ri_plan(plan_id: str, dry_run: bool = False, **params: Any) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "plan_id": plan_id,
        "action": PURCHASE,
        "account_id": ACCOUNT,
        "region": "us-east-1",
        "params": {"product_description": "Linux/UNIX", "offering_class": "standard", "duration_years": 1,
                   "scope": "Region", **params},
        "requested_by": "commitd-demo",
        "trigger": "operator",
    }
    if dry_run:
        plan["dry_run"] = True
    return plan


def first_samples() -> list[Sample]:
    return [
        Sample(ri_plan("demo-regional-no-upfront", instance_type="m5.large", offering_type="No Upfront",
                       instance_count=2, max_upfront_usd="0", max_hourly_usd="0.10"), "succeeded"),
        Sample(ri_plan("demo-zonal-all-upfront", instance_type="c5.large", offering_type="All Upfront",
                       scope="Availability Zone", availability_zone="us-east-1a", instance_count=1,
                       max_upfront_usd="500", max_hourly_usd="0"), "succeeded"),
        Sample(ri_plan("demo-above-ceiling", instance_type="r5.large", offering_type="Partial Upfront",
                       instance_count=3, max_upfront_usd="900", max_hourly_usd="0.05"),
               "failed", error_code="PriceAboveCeiling"),
        Sample(ri_plan("demo-dry-run", dry_run=True, instance_type="t3.medium", offering_type="No Upfront",
                       duration_years=3, instance_count=5, max_upfront_usd="0", max_hourly_usd="0.05"),
               "succeeded", dry_run=True),
        Sample(ri_plan("demo-invalid-count", instance_type="m5.large", offering_type="No Upfront",
                       instance_count=0, max_upfront_usd="0", max_hourly_usd="0.10"),
               "rejected", error_code="InvalidPlan"),
    ]


def throttled_sample() -> Sample:
    return Sample(ri_plan("demo-throttled-once", instance_type="t3.medium", offering_type="No Upfront",
                          instance_count=4, max_upfront_usd="0", max_hourly_usd="0.05"), "succeeded")


# --- small helpers -------------------------------------------------------------------------------------------
def say(text: str = "") -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, ValueError, OSError):
        return False


def logs_to_file(path: Path) -> None:
    """This process's own log lines (intake, audit, Celery's producer) go to ``path``, not the terminal."""
    import structlog

    from worker.logs import configure_logging

    configure_logging("json", "INFO")
    handle = path.open("a")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=handle))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.StreamHandler(handle))


@contextmanager
def scoped_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- Redis ---------------------------------------------------------------------------------------------------
def demo_durability(url: str) -> str:
    """The demo's own Redis fsyncs every write; a shared one that offers no durable write is used without it
    (say so: production refuses to send without it, docs/exactly-once.md)."""
    import redis

    from worker.durability import SendRecordDurability

    client = redis.Redis.from_url(url)
    try:
        if SendRecordDurability(client, "auto").method() != "unavailable":
            return "auto"
    finally:
        client.close()
    say("redis    offers no durable write (no WAITAOF, replica or appendfsync always): the demo runs with "
        "COMMITD_SEND_RECORD_DURABILITY=none, which production must not")
    return "none"


@contextmanager
def private_redis(directory: Path) -> Iterator[str]:
    """A redis-server of our own on a free port, fsyncing every write (send records), stopped on exit."""
    directory.mkdir()
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
         "--appendfsync", "always", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not redis_answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise DemoFailed(f"redis-server on port {port} did not start (exit code {process.poll()})")
            time.sleep(0.05)
        yield url
    finally:
        stop_process(process, "redis-server")


@contextmanager
def demo_redis(directory: Path) -> Iterator[tuple[str, bool]]:
    """(url, private): a private redis-server, unless COMMITD_REDIS_URL is set (then that Redis, if it answers,
    under a key prefix of this run only). A Redis that merely happens to listen on the default port is never
    touched unless the user points the demo at it."""
    from config.settings import mask_url

    url = os.environ.get("COMMITD_REDIS_URL")
    if url is None:
        if shutil.which("redis-server") is None:
            raise DemoUnavailable(f"redis-server is not installed: {INSTALL_HINT}, or set COMMITD_REDIS_URL to a "
                                  "Redis that answers")
        with private_redis(directory) as private_url:
            say(f"redis    started a private redis-server at {private_url} (set COMMITD_REDIS_URL to use yours)")
            yield private_url, True
        return
    if redis_answers(url):
        say(f"redis    {mask_url(url)} answers; this demo uses only keys under its own prefix")
        yield url, False
        return
    if shutil.which("redis-server") is None:
        raise DemoUnavailable(f"no Redis answers at {mask_url(url)} and redis-server is not installed: "
                              f"{INSTALL_HINT}, or set COMMITD_REDIS_URL to a Redis that answers")
    with private_redis(directory) as private_url:
        say(f"redis    nothing answers at {mask_url(url)}; started a private redis-server at {private_url}")
        yield private_url, True


def delete_keys(url: str, prefix: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
        return len(keys)
    finally:
        client.close()


# --- the sandbox, the worker, the intake ---------------------------------------------------------------------
@contextmanager
def demo_sandbox(external_id: str) -> Iterator[str]:
    from sandbox.control import SandboxControl
    from sandbox.server import SandboxServer

    server = SandboxServer().start()
    try:
        SandboxControl(server.url).set_iam(enforce=False, policy=None, external_id=external_id)
        say(f"sandbox  AWS sandbox at {server.url} (in this process)")
        yield server.url
    finally:
        server.stop()


def write_accounts(path: Path) -> Path:
    """The demo's account, and those the tour's example plans use (a spot fleet's, two organizations')."""
    from worker.demo_tour import ACCOUNTS

    accounts = [{"account_id": ACCOUNT, "name": "demo",
                 "limits": {"max_upfront_usd_per_plan": "50000", "max_commitment_usd_per_plan": "100000"}},
                *ACCOUNTS]
    path.write_text(json.dumps({"accounts": [
        {**account, "role_arn": f"arn:aws:iam::{account['account_id']}:role/commitd",
         "external_id_env": EXTERNAL_ID_ENV} for account in accounts]}))
    return path


def worker_environ(values: dict[str, str]) -> dict[str, str]:
    """The parent's environment without its AWS credentials or profile, plus the demo's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(values)
    env.update(AWS_ACCESS_KEY_ID="commitd-demo", AWS_SECRET_ACCESS_KEY="commitd-demo",
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    return env


def stop_process(process: subprocess.Popen[bytes], name: str, group: bool = False) -> None:
    if process.poll() is not None:
        return
    try:
        if group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.terminate()
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        say(f"         {name} did not stop in 10 s; killing it")
        if group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait()
    except ProcessLookupError:
        pass


@contextmanager
def celery_worker(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    from tasks.families import FAMILIES

    queues = ",".join(f.queue for f in FAMILIES)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-n", f"demo-{os.getpid()}@%h",
             "-Q", queues, "-c", "2", "-P", "prefork", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-l", "WARNING"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        say(f"worker   Celery worker pid {process.pid}, queues of {len(FAMILIES)} families, log {log_path}")
        try:
            yield process
        finally:
            stop_process(process, "the Celery worker", group=True)


@contextmanager
def intake_thread(runtime: Any) -> Iterator[None]:
    from tasks import ACTIONS
    from worker.celery_app import enqueue
    from worker.intake import Intake

    stop = threading.Event()
    intake = Intake(runtime, ACTIONS, enqueue)
    thread = threading.Thread(target=intake.run_forever, args=(stop, "demo"), name="commitd-intake", daemon=True)
    thread.start()
    say(f"intake   reading the stream {runtime.key('plans')} (in this process)")
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def build_runtime(values: dict[str, str]) -> Any:
    from pydantic import ValidationError

    from config.settings import ConfigurationError, Settings
    from worker.runtime import Runtime, set_runtime

    try:
        from worker.celery_app import app, configure

        settings = Settings(redis_url=values["COMMITD_REDIS_URL"], key_prefix=values["COMMITD_KEY_PREFIX"],
                            aws_endpoint_url=values["COMMITD_AWS_ENDPOINT_URL"],
                            accounts_file=Path(values["COMMITD_ACCOUNTS_FILE"]), log_format="json")
        runtime = Runtime(settings)
        runtime.accounts  # noqa: B018  (fails now if the account file or its ExternalId is wrong)
    except (ConfigurationError, ValidationError) as exc:
        raise DemoFailed(f"configuration (check the COMMITD_* variables of this shell): {exc}") from None
    set_runtime(runtime)
    configure(app, settings)
    return runtime


# --- submitting and watching ---------------------------------------------------------------------------------
def submit(runtime: Any, samples: list[Sample]) -> None:
    for sample in samples:
        runtime.redis.xadd(runtime.key("plans"), {"plan": json.dumps(sample.plan)})
        expect = ", ".join([sample.expected, *([sample.error_code] if sample.error_code else []),
                            *(["dry run"] if sample.dry_run else [])])
        action = f"{sample.plan['action']:48s} " if sample.family else ""
        say(f"  submit {sample.plan_id:28s} {action}(expect {expect})")


class Watcher:
    """Prints every state change of the demo's plans, as the ledger records them."""

    def __init__(self, runtime: Any, worker: subprocess.Popen[bytes]) -> None:
        self.runtime = runtime
        self.worker = worker
        self.seen: dict[str, int] = {}
        self.started = time.monotonic()
        self.deadline = self.started + TIMEOUT_SECONDS

    def poll(self, plan_ids: list[str]) -> dict[str, Any]:
        records = {plan_id: self.runtime.ledger.get(plan_id) for plan_id in plan_ids}
        for plan_id, record in records.items():
            history = record.history if record is not None else []
            # min: a repeated wait folds two steps into one entry (worker.ledger), so the history can get shorter
            for index in range(min(self.seen.get(plan_id, 0), len(history)), len(history)):
                old = history[index - 1].state.value if index else "-"
                step = history[index]
                note = f"  ({step.note[:80]}{'…' if len(step.note) > 80 else ''})" if step.note else ""
                say(f"  {time.monotonic() - self.started:5.1f}s  {plan_id:28s} {old:>10} → {step.state.value}{note}")
            self.seen[plan_id] = len(history)
        return records

    def wait(self, plan_ids: list[str], tick: Callable[[dict[str, Any], float], None] | None = None
             ) -> dict[str, Any]:
        """Until every plan is settled (terminal or needing attention), the worker dies, or the time is up.
        ``tick`` sees the records at each look (the tour moves the sandbox's clock from it)."""
        while True:
            records = self.poll(plan_ids)
            if all(r is not None and (r.terminal or r.state.value == "needs_attention") for r in records.values()):
                return records
            if tick is not None:
                tick(records, time.monotonic() - self.started)
            if self.worker.poll() is not None:
                raise DemoFailed(f"the Celery worker exited with code {self.worker.returncode}")
            if time.monotonic() > self.deadline:
                say(f"  timed out after {TIMEOUT_SECONDS:.0f} s waiting for the plans to settle")
                return records
            time.sleep(0.1)


# --- the report ----------------------------------------------------------------------------------------------
def short_id(resource_id: Any) -> str:
    """An id as the result line shows it: an ARN by its last part."""
    text = str(resource_id)
    return f"…{text.replace('/', ':').rsplit(':', 1)[-1]}" if text.startswith("arn:") else text


def summary(record: Any) -> str:
    """One line for a settled plan, whatever its action: what it did (its resource ids, the commitment, the state
    AWS reports) or why it did not."""
    if record is None:
        return "never recorded"
    result, error = record.result or {}, record.error or {}
    action = str((record.plan or {}).get("action", ""))
    if record.state.value == "succeeded" and result.get("dry_run") and action == PURCHASE:
        would = result.get("would_buy", {})
        return (f"dry run: would buy {would.get('instance_count')} x {would.get('offering_id')} "
                f"(AWS answer: {result.get('aws_answer')}); nothing bought")
    if record.state.value == "succeeded" and result.get("dry_run"):
        answer = f" (AWS answer: {result['aws_answer']})" if result.get("aws_answer") else ""
        return f"dry run{answer}: permitted {result.get('permitted')}; nothing done"
    if record.state.value == "succeeded" and action == PURCHASE:
        return (f"{result.get('reserved_instances_id')}  {result.get('instance_count')} x, "
                f"upfront {result.get('upfront_usd')} USD, {result.get('hourly_usd')} USD/h each")
    if record.state.value == "succeeded":
        from tasks import find_action

        found = find_action(action)
        ids = [short_id(i) for i in result.get("resource_ids") or []]
        parts = [f"{found.nouns.done if found else 'done'}: {', '.join(ids) or 'nothing'}"]
        if result.get("commitment_usd") is not None:
            parts.append(f"commitment {result['commitment_usd']} USD")
        state = result.get("state") or result.get("status")
        if state:
            parts.append(f"state {state}")
        return "; ".join(parts)
    if error:
        message = str(error.get("message", ""))
        return f"{error.get('code')}: {message[:90]}{'…' if len(message) > 90 else ''}"
    return record.state.value


def print_table(samples: list[Sample], records: dict[str, Any]) -> bool:
    say()
    say(f"{'plan id':28s} {'expected':10s} {'actual':16s} ok  result")
    say(f"{'-' * 28} {'-' * 10} {'-' * 16} --  {'-' * 40}")
    all_met = True
    for sample in samples:
        record = records.get(sample.plan_id)
        met = sample.met(record)
        all_met = all_met and met
        actual = record.state.value if record is not None else "-"
        say(f"{sample.plan_id:28s} {sample.expected:10s} {actual:16s} {'✓' if met else '✗':2s}  {summary(record)}")
    return all_met


def recorded_ids(value: Any, key: str = "") -> set[str]:
    """Every id a plan's result names (``resource_ids``, and the ids of what AWS made on the way: a modification,
    a create-account request, an exchange)."""
    if isinstance(value, dict):
        return {i for k, v in value.items() for i in recorded_ids(v, str(k))}
    if isinstance(value, list):
        return {i for v in value for i in recorded_ids(v, key)}
    return {value} if isinstance(value, str) and (key.endswith("_id") or key.endswith("_ids")) else set()


def check_ground_truth(sandbox_url: str, samples: list[Sample], records: dict[str, Any]) -> bool:
    """What the sandbox holds against what the ledger claims: the RI purchases match; every succeeded plan's
    resources exist; and every resource a call made (not seeded) is one a succeeded plan recorded: nothing was
    made twice, or by a plan that did not succeed."""
    from sandbox.control import SandboxControl

    resources = SandboxControl(sandbox_url).resources()
    bought = {r["id"] for r in resources
              if r["type"] == "reserved-instances" and r["created_by"]["operation"] == PURCHASE}
    succeeded = {s.plan_id: r.result for s in samples if (r := records.get(s.plan_id)) is not None
                 and r.state.value == "succeeded" and r.result and not r.result.get("dry_run")}
    claimed = {result.get("reserved_instances_id") for plan_id, result in succeeded.items()
               if records[plan_id].plan["action"] == PURCHASE}
    purchases_ok = bought == claimed
    say()
    say(f"sandbox ground truth: {len(bought)} reserved instances bought; {len(claimed)} successful purchases "
        f"in the ledger {'— they match' if purchases_ok else '— MISMATCH'}")
    if not purchases_ok:
        say(f"  in the sandbox: {sorted(bought)}\n  in the ledger:  {sorted(str(c) for c in claimed)}")

    held = {r["id"] for r in resources}
    claims = {plan_id: [str(i) for i in result.get("resource_ids") or [result.get("reserved_instances_id")]]
              for plan_id, result in succeeded.items()}
    missing = {plan_id: absent for plan_id, ids in claims.items() if (absent := [i for i in ids if i not in held])}
    if missing:
        say(f"sandbox ground truth: {len(claims)} plans succeeded; resources MISSING from the sandbox: {missing}")
    else:
        say(f"sandbox ground truth: {len(claims)} plans succeeded; each of their "
            f"{sum(len(ids) for ids in claims.values())} resources is in the sandbox")

    made = {r["id"]: str(r["type"]) for r in resources if r["created_by"]["operation"] != "seed"}
    recorded = set().union(*(recorded_ids(result) for result in succeeded.values()))
    unrecorded = [f"{kind} {resource_id}" for resource_id, kind in sorted(made.items()) if resource_id not in recorded]
    if unrecorded:
        say(f"sandbox ground truth: {len(made)} resources made by the demo's calls; NOT RECORDED by any plan: "
            f"{', '.join(unrecorded)}")
    else:
        say(f"sandbox ground truth: {len(made)} resources made by the demo's calls, each recorded by the plan that "
            "made it — nothing made twice")
    return purchases_ok and not missing and not unrecorded


def check_audit(runtime: Any) -> bool:
    result = runtime.audit.verify()
    if result.ok:
        say(f"audit trail intact: {result.entries} entries, each chained to the previous one by SHA-256")
    else:
        say(f"audit trail BROKEN at entry {result.broken_entry} (entry {result.entries}): {result.reason}")
    return bool(result.ok)


def aws_calls(runtime: Any, plan_id: str) -> list[str]:
    """The plan's AWS calls as the audit trail has them: "operation outcome"."""
    return [f"{row['operation']} {row.get('outcome')}" for row in runtime.audit.records(plan_id=plan_id)
            if row.get("event") == "aws_call"]


def show_throttled(runtime: Any, plan_id: str) -> bool:
    """The throttled plan's calls: the purchase throttled, a reconciling read, the purchase sent again."""
    calls = aws_calls(runtime, plan_id)
    purchases = [c for c in calls if c.startswith("purchase_")]
    say()
    say(f"{plan_id}, its AWS calls from the audit trail:")
    for call in calls:
        say(f"  {call}")
    shown = purchases == ["purchase_reserved_instances_offering throttled", "purchase_reserved_instances_offering ok"]
    if not shown:
        say("  expected one throttled purchase, then one that succeeded")
    return shown


# --- the run -------------------------------------------------------------------------------------------------
def run_demo(keep: bool = False) -> int:
    """0: every plan as expected, ground truth and audit good; 1: not; 2: Redis unavailable; 130: interrupted."""
    workdir = Path(tempfile.mkdtemp(prefix="commitd-demo-"))
    status = 1
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupt) if in_main_thread else None
    try:
        with ExitStack() as stack:
            status = 0 if run(stack, workdir, keep) else 1
    except DemoUnavailable as exc:
        say(f"commitd demo: {exc}")
        status = 2
    except DemoFailed as exc:
        say(f"commitd demo failed: {exc}")
        status = 1
    except KeyboardInterrupt:
        say("\ninterrupted; everything the demo started is stopped")
        status = 130
    finally:
        remove_workdir(workdir, keep_logs=status == 1)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return status


def interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def remove_workdir(workdir: Path, keep_logs: bool) -> None:
    """Everything goes, except the logs when the demo failed: their paths are printed."""
    logs = sorted(workdir.glob("*.log")) if keep_logs else []
    for path in workdir.iterdir():
        if path not in logs:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    if logs:
        say(f"logs kept: {', '.join(str(p) for p in logs)} (worker.log: the Celery worker; demo.log: the intake)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def run(stack: ExitStack, workdir: Path, keep: bool) -> bool:
    logs_to_file(workdir / "demo.log")
    say("commitd demo: sandbox, Redis, intake and a Celery worker on this machine")
    redis_url, private = stack.enter_context(demo_redis(workdir / "redis"))
    prefix = f"commitd-demo-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}:"
    if not private and not keep:
        stack.callback(lambda: say(f"redis    removed the demo's {delete_keys(redis_url, prefix)} keys ({prefix}*)"))
    elif not private:
        stack.callback(say, f"redis    kept the demo's keys: COMMITD_KEY_PREFIX={prefix} commitd plans list")
    elif keep:
        say("redis    --keep has no effect on a private redis-server: it stops, without persistence, at the end")
    external_id = f"demo-external-id-{os.urandom(6).hex()}"
    sandbox_url = stack.enter_context(demo_sandbox(external_id))
    values = {
        "COMMITD_REDIS_URL": redis_url,
        "COMMITD_KEY_PREFIX": prefix,
        "COMMITD_AWS_ENDPOINT_URL": sandbox_url,
        "COMMITD_ACCOUNTS_FILE": str(write_accounts(workdir / "accounts.json")),
        "COMMITD_LOG_FORMAT": "json",
        # The sandbox answers at once and is consistent at once: shorter windows than AWS needs keep it brisk.
        "COMMITD_LEASE_SECONDS": "15",
        "COMMITD_WRITE_READ_TIMEOUT": "5",
        "COMMITD_SEND_MARGIN_SECONDS": "2",
        "COMMITD_CONSISTENCY_DELAY_SECONDS": "1",
        "COMMITD_RECONCILE_INTERVAL_SECONDS": "0.5",
        "COMMITD_SEND_RECORD_DURABILITY": demo_durability(redis_url),
        EXTERNAL_ID_ENV: external_id,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    stack.enter_context(scoped_environ({EXTERNAL_ID_ENV: external_id, "NO_PROXY": "127.0.0.1,localhost"}))
    runtime = build_runtime(values)
    stack.callback(runtime.redis.close)
    worker = stack.enter_context(celery_worker(worker_environ(values), workdir / "worker.log"))
    stack.enter_context(intake_thread(runtime))
    return exercise(runtime, sandbox_url, Watcher(runtime, worker))


def exercise(runtime: Any, sandbox_url: str, watcher: Watcher) -> bool:
    from sandbox.control import SandboxControl
    from worker.demo_tour import print_tour_table, run_tour

    first, throttled = first_samples(), throttled_sample()
    say()
    say(f"submitting {len(first)} plans through the stream {runtime.key('plans')}:")
    submit(runtime, first)
    records = watcher.wait([s.plan_id for s in first])
    say()
    say(f"the sandbox now throttles the next {PURCHASE} once; submitting one more plan:")
    SandboxControl(sandbox_url).add_fault(PURCHASE, "throttle", count=1)
    submit(runtime, [throttled])
    records.update(watcher.wait([throttled.plan_id]))
    samples = [*first, throttled]
    all_met = print_table(samples, records)
    throttle_shown = show_throttled(runtime, throttled.plan_id)
    tour, tour_records = run_tour(runtime, sandbox_url, watcher)
    tour_met = print_tour_table(tour, tour_records)
    ground_truth = check_ground_truth(sandbox_url, [*samples, *tour], {**records, **tour_records})
    audit_ok = check_audit(runtime)
    ok = all_met and throttle_shown and tour_met and ground_truth and audit_ok
    say()
    say("demo passed: every plan reached the state it should" if ok else "demo FAILED: see the ✗ and checks above")
    return ok
