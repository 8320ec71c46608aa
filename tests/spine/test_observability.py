"""Seeing it: the results stream, Prometheus metrics, `commitd status`, heartbeats and webhook notifications, after
real plans through a real Celery worker, the intake and the sandbox.

Until worker/ledger.py publishes results in its write script (``worker.results.lua_publish``), these tests
publish right after each successful compare-and-set, in this process and in the worker (which imports this module
through ``celery worker --include``): ``wire_results_publishing`` below. Once the ledger does, they use its.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from sandbox.control import SandboxControl
from tests.spine.conftest import ROOT, free_port, ri_plan, wait_for_state
from worker.ledger import Ledger, PlanRecord
from worker.notify import GROUP as NOTIFY_GROUP
from worker.notify import Notifier
from worker.prometheus import AuditFold, counters_key
from worker.results import ObservabilitySettings, lua_publish, publish_args, publish_result, publishes, results_stream
from worker.runtime import Runtime

WIRE_ENV = "OBS_TEST_WIRE_RESULTS"


# --- publishing results until the ledger does it itself ---------------------------------------------------------
def ledger_publishes() -> bool:
    import worker.ledger

    return "worker.results" in getattr(worker.ledger, "_WRITE", "")


def _publishing_commit(original: Callable[..., PlanRecord]) -> Callable[..., PlanRecord]:
    def _commit(self: Ledger, old: PlanRecord | None, new: PlanRecord, audit: dict[str, Any]) -> PlanRecord:
        committed = original(self, old, new, audit)
        if publishes(old.state if old else None, committed):
            publish_result(self.redis, self.prefix, committed)
        return committed

    return _commit


def wire_results_publishing() -> None:
    if not ledger_publishes():
        Ledger._commit = _publishing_commit(Ledger._commit)  # type: ignore[method-assign]


if os.environ.get(WIRE_ENV) == "1":  # this module imported by a Celery worker of these tests
    wire_results_publishing()


@pytest.fixture
def publishing(monkeypatch: pytest.MonkeyPatch) -> None:
    if not ledger_publishes():
        monkeypatch.setattr(Ledger, "_commit", _publishing_commit(Ledger._commit))


# --- helpers -------------------------------------------------------------------------------------------------------
def wait_until(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s; last: {value!r}")


class Webhook:
    """A local webhook receiver: answers 500 while ``failing`` is set, records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, dict[str, Any]]] = []
        self.failing = threading.Event()
        self.status_when_failing = 500
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = hook.status_when_failing if hook.failing.is_set() else 200
                hook.requests.append((status, body))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=s3cret"

    def delivered(self) -> Counter[tuple[str, str]]:
        return Counter((b["commitd"]["plan_id"], b["commitd"]["event"]) for status, b in self.requests if status == 200)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()


def notifier_settings(url: str, **changes: Any) -> ObservabilitySettings:
    values: dict[str, Any] = {"notify_webhook_url": url, "notify_attempts": 3, "notify_backoff_seconds": 0.02,
                              "notify_reclaim_seconds": 0.3, "notify_timeout_seconds": 2.0, **changes}
    return ObservabilitySettings(**values)


@pytest.fixture
def run_notifier(runtime: Runtime) -> Iterator[Callable[[ObservabilitySettings], Notifier]]:
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(settings: ObservabilitySettings) -> Notifier:
        notifier = Notifier(runtime.redis, runtime.settings.key_prefix, settings)
        notifier.ensure_group()
        thread = threading.Thread(target=notifier.run_forever, args=(stop, "test-notify"), daemon=True)
        thread.start()
        threads.append(thread)
        return notifier

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=5)


@pytest.fixture
def metrics_server(env: dict[str, str], runtime: Runtime) -> Iterator[str]:
    """`commitd metrics serve` as its own process (the click group, as cli.py registers it)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "worker.prometheus", "serve", "--port", str(port),
                                "--addr", "127.0.0.1", "--fold-interval", "0.2"],
                               cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/metrics"

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            return False

    wait_until("metrics server listening", up)
    yield url
    process.terminate()
    process.wait(timeout=10)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None:
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def read_results(runtime: Runtime, group: str) -> list[dict[str, Any]]:
    """Everything new on the results stream for consumer group ``group``, acknowledged as read."""
    stream = results_stream(runtime.settings.key_prefix)
    try:
        runtime.redis.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        assert "BUSYGROUP" in str(exc)
    out: list[dict[str, Any]] = []
    while True:
        reply = runtime.redis.xreadgroup(group, "planner-1", {stream: ">"}, count=100)
        if not reply:
            return out
        for entry_id, fields in reply[0][1]:
            out.append({k.decode(): v.decode() for k, v in fields.items()})
            runtime.redis.xack(stream, group, entry_id)


def status_json(env: dict[str, str]) -> dict[str, Any]:
    from worker.status import status

    result = CliRunner().invoke(status, ["--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def submit(intake: Any, plan: dict[str, Any] | str) -> None:
    result = intake.submit_raw(plan if isinstance(plan, str) else json.dumps(plan), "test")
    assert result.outcome in ("accepted", "rejected"), result


def live_nodes(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["node"]: w for w in snapshot["workers"] if w["alive"]}


# --- the whole path ------------------------------------------------------------------------------------------------
def test_outcomes_reach_the_results_stream_metrics_status_and_webhook(
    runtime: Runtime, env: dict[str, str], sandbox: SandboxControl, intake_loop: Any, start_worker: Any,
    publishing: None, webhook: Webhook, run_notifier: Any, metrics_server: str,
) -> None:
    webhook.failing.set()  # the webhook is down while the plans run: they must not wait for it
    # Down for the whole run: entries are tried again each second, never dropped.
    run_notifier(notifier_settings(webhook.url, notify_attempts=2, notify_reclaim_seconds=1.0,
                                   notify_max_deliveries=10_000))
    # The worker imports the heartbeat (as worker/celery_app.py will) and this module (publishing, above).
    include = "worker.heartbeat,tests.spine.test_observability"
    worker = start_worker("obs1", concurrency=2, CELERY_WORKER_INCLUDE=include, **{WIRE_ENV: "1"})
    node = wait_until("the worker's heartbeat", lambda: [n for n in live_nodes(status_json(env)) if "obs1" in n])[0]

    # Phase 1, concurrently: two purchases, one over its ceiling, a dry run, an invalid plan.
    submit(intake_loop, ri_plan("obs-ok"))  # No Upfront, 2 instances
    submit(intake_loop, ri_plan("obs-upfront", offering_type="All Upfront", instance_count=1,
                                max_upfront_usd="500", max_hourly_usd="0"))
    submit(intake_loop, ri_plan("obs-dear", offering_type="All Upfront", max_upfront_usd="100.00", max_hourly_usd="0"))
    submit(intake_loop, {**ri_plan("obs-dry", instance_count=3), "dry_run": True})
    submit(intake_loop, {**ri_plan("obs-invalid"), "account_id": "12"})
    finals = {"obs-ok": "succeeded", "obs-upfront": "succeeded", "obs-dear": "failed", "obs-dry": "succeeded",
              "obs-invalid": "rejected"}
    for plan_id, state in finals.items():
        assert wait_for_state(runtime, plan_id, set(finals.values()) | {"needs_attention"}).state.value == state
    # Phase 2: the purchase's answer is lost; reconciliation finds it.
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "commit_then_drop", count=1)
    submit(intake_loop, ri_plan("obs-dropped", instance_count=4))
    dropped = wait_for_state(runtime, "obs-dropped", {"succeeded", "failed", "needs_attention"})
    assert dropped.state.value == "succeeded" and dropped.result and dropped.result["reconciled"] is True
    # Phase 3: the purchase is lost and every reconciling read fails: a person must look.
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "reset", count=1)
    sandbox.add_fault("ec2:DescribeReservedInstances", "error", probability=1.0)
    submit(intake_loop, ri_plan("obs-unknown", instance_count=5))
    unknown = wait_for_state(runtime, "obs-unknown", {"succeeded", "failed", "needs_attention"}, timeout=60)
    assert unknown.state.value == "needs_attention"
    sandbox.clear_faults()
    finals.update({"obs-dropped": "succeeded", "obs-unknown": "needs_attention"})

    # The look-alike checks of the purchases change settled plans once more: that publishes nothing.
    wait_until("look-alike checks done", lambda: all(
        runtime.ledger.get(p).verification != "due"  # type: ignore[union-attr]
        for p, s in finals.items() if s == "succeeded"))
    # The results stream: each plan's outcome exactly once, with its result or error, for the planner's group.
    entries = read_results(runtime, "planner")
    assert Counter(e["plan_id"] for e in entries) == Counter(finals.keys()), entries
    by_plan = {e["plan_id"]: e for e in entries}
    for plan_id, state in finals.items():
        entry = by_plan[plan_id]
        data = json.loads(entry["data"])
        assert entry["state"] == data["state"] == state
        assert entry["final"] == ("false" if state == "needs_attention" else "true")
        record = runtime.ledger.get(plan_id)
        assert record is not None  # the version of the transition: the look-alike check's update came after
        assert int(entry["version"]) == record.version - (1 if record.verification else 0)
        assert (data["result"] is not None) == (state == "succeeded"), data
        assert (data["error"] is not None) == (state != "succeeded"), data
    assert json.loads(by_plan["obs-dear"]["data"])["error"]["code"] == "PriceAboveCeiling"
    assert json.loads(by_plan["obs-unknown"]["data"])["error"]["code"] == "OutcomeUnknown"
    assert "book" not in json.loads(by_plan["obs-unknown"]["data"])["error"]  # executor bookkeeping stays inside
    assert json.loads(by_plan["obs-upfront"]["data"])["commitment"]["upfront_usd"] == "487.76"
    assert json.loads(by_plan["obs-dry"]["data"])["commitment"] is None  # a dry run commits nothing
    assert read_results(runtime, "planner") == []  # nothing new: read once, acknowledged

    # `commitd status --json`: the states seen, the worker alive with its processes.
    snap = status_json(env)
    assert {s: n for s, n in snap["plans"].items() if n} == dict(Counter(finals.values()))
    assert snap["results"]["length"] == len(finals)
    assert {g["name"]: g["pending"] for g in snap["results"]["groups"]}["planner"] == 0
    obs1 = live_nodes(snap)[node]
    assert sorted(p["role"] for p in obs1["processes"] if p["alive"]) == ["main", "pool", "pool"]
    assert "commitd.ec2_reserved_instances" in obs1["queues"]

    # The metrics endpoint: the same states, and what the plans did.
    def scraped() -> Any:
        samples = scrape(metrics_server)
        folded = value(samples, "commitd_plan_outcomes_total") == len(finals)
        return samples if folded else None

    samples = wait_until("the audit trail folded into the counters", scraped)
    for state, n in Counter(finals.values()).items():
        assert value(samples, "commitd_plans", state=state) == n
        assert value(samples, "commitd_plan_outcomes_total", state=state) == n
    assert value(samples, "commitd_plans") == len(finals)
    assert value(samples, "commitd_worker_up", node=node) == 1
    assert value(samples, "commitd_worker_processes_alive", node=node) == 3
    assert value(samples, "commitd_aws_calls_total", operation="purchase_reserved_instances_offering",
                 outcome="ok") == 2  # obs-ok and obs-upfront: the dropped and the reset calls had no answer
    assert value(samples, "commitd_aws_calls_total", operation="purchase_reserved_instances_offering",
                 outcome="unknown") == 2
    assert value(samples, "commitd_aws_calls_total", operation="describe_reserved_instances", outcome="ok") >= 1
    assert value(samples, "commitd_reconciliations_total", family="ec2_reserved_instances", outcome="found") == 1
    assert value(samples, "commitd_needs_attention_total", code="OutcomeUnknown") == 1
    assert value(samples, "commitd_committed_usd_total", kind="upfront") == pytest.approx(487.76)
    totals = [json.loads(by_plan[p]["data"])["commitment"] for p in ("obs-ok", "obs-upfront", "obs-dropped")]
    assert value(samples, "commitd_committed_usd_total", kind="total") == pytest.approx(
        sum(float(t["total_usd"]) for t in totals))
    assert value(samples, "commitd_committed_hourly_usd_total") == pytest.approx(
        sum(float(t["hourly_usd"]) for t in totals))
    runs = value(samples, "commitd_task_seconds_count", family="ec2_reserved_instances")
    assert runs >= 6 and value(samples, "commitd_task_seconds_bucket", le="+Inf") == runs
    assert value(samples, "commitd_stream_group_pending", stream="results", group="planner") == 0

    # The webhook: every expected event, delivered once the receiver is back, though it failed all along.
    expected = Counter({("obs-ok", "succeeded"): 1, ("obs-upfront", "succeeded"): 1, ("obs-dear", "failed"): 1,
                        ("obs-dropped", "succeeded"): 1, ("obs-unknown", "needs_attention"): 1})
    assert wait_until("failed deliveries", lambda: len(webhook.requests) >= len(expected))
    webhook.failing.clear()
    wait_until("every notification delivered", lambda: webhook.delivered() == expected)
    bodies = {(b["commitd"]["plan_id"]): b for status, b in webhook.requests if status == 200}
    assert "NEEDS ATTENTION" in bodies["obs-unknown"]["text"] and "OutcomeUnknown" in bodies["obs-unknown"]["text"]
    assert "committed" in bodies["obs-upfront"]["text"] and "upfront 487.76" in bodies["obs-upfront"]["text"]
    assert any(status == 500 for status, _ in webhook.requests)  # retried, not lost
    assert read_results(runtime, "planner") == []  # nor later
    wait_until("notifications acknowledged", lambda: runtime.redis.xpending(
        results_stream(runtime.settings.key_prefix), NOTIFY_GROUP)["pending"] == 0)
    assert webhook.delivered() == expected  # and never twice

    # A worker that stops says so: no longer alive in status, nor in the metrics; what it leaves queued shows.
    worker.stop()
    from tasks.families import EC2_RESERVED_INSTANCES
    from worker.celery_app import enqueue

    runtime.redis.delete(runtime.key("celery", EC2_RESERVED_INSTANCES.queue))  # look-alike checks left queued
    for _ in range(3):
        enqueue(EC2_RESERVED_INSTANCES, "obs-ok")
    snap = status_json(env)
    assert node not in live_nodes(snap)
    assert snap["queues"] == {**{q: 0 for q in snap["queues"]}, EC2_RESERVED_INSTANCES.queue: 3}
    samples = scrape(metrics_server)
    assert value(samples, "commitd_worker_up", node=node) == 0
    assert value(samples, "commitd_queue_depth", queue=EC2_RESERVED_INSTANCES.queue) == 3


# --- the pieces ----------------------------------------------------------------------------------------------------
def test_the_write_script_publishes_only_a_transition_that_happened(runtime: Runtime) -> None:
    """``lua_publish`` as the ledger's write script uses it: after the compare-and-set, in the same script."""
    script = runtime.redis.register_script("""
local v = redis.call('HGET', KEYS[1], 'version')
if (v or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[2])
""" + lua_publish(2, 3, 4) + "return 1\n")
    prefix = runtime.settings.key_prefix
    stream = results_stream(prefix)
    record = PlanRecord.model_validate({
        "plan_id": "p1", "state": "failed", "received_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:01Z",
        "error": {"code": "X", "message": "no", "book": {"sends": 1}}, "version": 2})
    keys = [f"{prefix}plan:p1", stream]
    assert script(keys=keys, args=["", "1", *publish_args(None, record.model_copy(update={"state": "queued"}))]) == 1
    assert runtime.redis.xlen(stream) == 0  # queued is not an outcome
    assert script(keys=keys, args=["7", "2", *publish_args(None, record)]) == 0  # refused compare-and-set
    assert runtime.redis.xlen(stream) == 0
    assert script(keys=keys, args=["1", "2", *publish_args(None, record)]) == 1
    [(_, fields)] = runtime.redis.xrange(stream)
    data = json.loads(fields[b"data"])
    assert fields[b"state"] == b"failed" and fields[b"final"] == b"true" and data["error"] == {"code": "X",
                                                                                                "message": "no"}
    # Approximate trimming: the stream stays near its MAXLEN however many outcomes are published.
    for version in range(3, 1200):
        script(keys=keys, args=[str(version - 1), str(version), *publish_args(None, record, maxlen=100)])
    assert 100 <= runtime.redis.xlen(stream) < 300


def test_two_exporters_fold_each_audit_entry_once(runtime: Runtime) -> None:
    prefix = runtime.settings.key_prefix
    for i in range(1000):
        runtime.audit.append({"event": "aws_call", "service": "ec2", "operation": "DescribeX", "outcome": "ok",
                              "mutating": False, "duration_ms": i % 50})
    folds = [AuditFold(runtime.redis, prefix, batch=100) for _ in range(3)]
    threads = [threading.Thread(target=fold.fold, args=(30.0,)) for fold in folds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counters = {json.loads(k)[0]: float(v) for k, v in runtime.redis.hgetall(counters_key(prefix)).items()
                if not json.loads(k)[1].get("le")}
    assert counters["commitd_aws_calls_total"] == 1000
    assert counters["commitd_aws_call_seconds_count"] == 1000
    assert counters["commitd_audit_events_total"] == 1000
    assert folds[0].fold() == 0  # nothing left


def test_a_webhook_that_refuses_is_not_retried_and_one_that_stays_down_is_dropped(
    runtime: Runtime, webhook: Webhook, run_notifier: Any,
) -> None:
    from worker.prometheus import render

    prefix = runtime.settings.key_prefix
    notifier = run_notifier(notifier_settings(webhook.url, notify_max_deliveries=3))
    base = {"state": "failed", "received_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:01Z",
            "error": {"code": "X", "message": "no"}, "version": 3}
    webhook.failing.set()
    webhook.status_when_failing = 400
    publish_result(runtime.redis, prefix, PlanRecord.model_validate({**base, "plan_id": "refused"}))
    wait_until("refused once", lambda: len(webhook.requests) == 1)
    webhook.status_when_failing = 503
    publish_result(runtime.redis, prefix, PlanRecord.model_validate({**base, "plan_id": "down"}))
    # 3 deliveries of 3 tries each, then dropped (acknowledged, counted): the notifier goes on with the others.
    wait_until("dropped", lambda: runtime.redis.xpending(notifier.stream, NOTIFY_GROUP)["pending"] == 0
               and len(webhook.requests) == 10)
    assert [b["commitd"]["plan_id"] for _, b in webhook.requests] == ["refused"] + ["down"] * 9
    text = render(runtime.redis, prefix, []).decode()
    assert 'commitd_notifications_total{event="failed",outcome="rejected"} 1.0' in text
    assert 'commitd_notifications_total{event="failed",outcome="dropped"} 1.0' in text
    assert "s3cret" not in text


def test_the_dashboard_uses_only_metrics_the_exporter_serves(runtime: Runtime) -> None:
    from tasks.families import FAMILIES
    from worker.prometheus import render

    served = set(re.findall(r"^# TYPE (\w+) ", render(runtime.redis, runtime.settings.key_prefix,
                                                       [f.queue for f in FAMILIES]).decode(), re.M))

    def base(name: str) -> str:
        return re.sub(r"_(total|bucket|count|sum)$", "", name)

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "commitd.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bcommitd_\w+", expr)}
    assert len(exprs) > 30 and used
    assert {base(n) for n in used} <= {base(n) for n in served}, {base(n) for n in used} - {base(n) for n in served}
