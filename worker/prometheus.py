"""Prometheus metrics for the whole fleet, computed from Redis: ``commitd metrics serve --port N``.

Every number comes from Redis, so one exporter serves every worker process on every host, and nothing is lost when
a prefork child is replaced (prometheus-client's multiprocess mode would need a shared directory per host, one
scrape target per host, and cleanup of dead processes' files):

- gauges read at each scrape: plans by state (the ledger's state indexes), queue depths, workers alive
  (heartbeats), streams and their consumer groups, switches, budgets (``worker.status.snapshot``);
- task durations, timed in the worker (``worker.heartbeat``) into a Redis histogram: one round trip per task;
- everything else folded from the audit trail, which already records every AWS call (operation, outcome,
  duration) and every transition of every plan (with its result or error) atomically with the change itself.
  The fold keeps its cursor (the last entry id folded) beside the counters and moves both in one MULTI/EXEC
  under WATCH, so each entry is counted exactly once however many exporters run; a stopped exporter catches up
  from its cursor.

Counters live in the hash ``{prefix}obs:counters`` (field: ``[name, labels]`` as JSON, value: a float); a
histogram is its ``_bucket`` (per bucket, cumulated when rendered), ``_count`` and ``_sum`` fields.
docs/observability.md lists every metric.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import click
import redis

from worker.logs import get_logger

# worker.plans, worker.results and prometheus_client are imported where used: `commitd` imports this module for
# every command, and they cost it about 0.2 s.
log = get_logger("commitd.prometheus")

TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
AWS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PLAN_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)
FOLD_BATCH = 1000

# name: (type, help). Histograms are named without their suffixes.
METRICS: dict[str, tuple[str, str]] = {
    "commitd_task_seconds": ("histogram", "Celery task runs by family and outcome (the plan's state after the run, "
                                          "requeued, error)"),
    "commitd_aws_calls_total": ("counter", "AWS calls by service, operation, outcome and whether they mutate"),
    "commitd_aws_call_seconds": ("histogram", "AWS call durations by service and operation"),
    "commitd_plan_transitions_total": ("counter", "plan state changes, by from and to state"),
    "commitd_plan_outcomes_total": ("counter", "plans that reached a result state (terminal, needs_attention, "
                                               "awaiting_approval), by family and state"),
    "commitd_plan_seconds": ("histogram", "from intake to a result state, by family and state"),
    "commitd_plan_retries_total": ("counter", "runs of a plan after its first (a crash, a redelivery, failed reads)"),
    "commitd_reconciliations_total": ("counter", "plans settled by reading AWS: found (a lost answer) or followed "
                                                 "(an asynchronous operation to its end), by family"),
    "commitd_needs_attention_total": ("counter", "plans that needed a person, by family and error code"),
    "commitd_committed_usd_total": ("counter", "money committed by succeeded plans (not dry runs), by family, "
                                               "account and kind: total (upfront plus recurring over the term) or "
                                               "upfront"),
    "commitd_committed_hourly_usd_total": ("counter", "recurring USD per hour added by succeeded plans, by family "
                                                      "and account"),
    "commitd_audit_events_total": ("counter", "audit trail entries by event"),
    "commitd_notifications_total": ("counter", "webhook notifications by event and outcome (sent, retried, "
                                               "rejected, dropped)"),
}


def counters_key(prefix: str) -> str:
    return f"{prefix}obs:counters"


def fold_key(prefix: str) -> str:
    return f"{prefix}obs:fold"


def _field(name: str, labels: dict[str, str]) -> str:
    return json.dumps([name, labels], sort_keys=True, separators=(",", ":"))


def _observe(incs: dict[str, float], name: str, labels: dict[str, str], value: float,
             buckets: Sequence[float]) -> None:
    le = next((str(b) for b in buckets if value <= b), "+Inf")
    incs[_field(f"{name}_bucket", {**labels, "le": le})] += 1
    incs[_field(f"{name}_count", labels)] += 1
    incs[_field(f"{name}_sum", labels)] += value


def _apply(client: redis.Redis, prefix: str, incs: dict[str, float]) -> None:
    pipe = client.pipeline(transaction=False)
    for key, value in incs.items():
        pipe.hincrbyfloat(counters_key(prefix), key, value)
    pipe.execute()


def record_task_run(client: redis.Redis, prefix: str, family: str, outcome: str, seconds: float) -> None:
    """One task run into ``commitd_task_seconds`` (from the worker; never fails the task)."""
    incs: dict[str, float] = defaultdict(float)
    _observe(incs, "commitd_task_seconds", {"family": family, "outcome": outcome}, seconds, TASK_BUCKETS)
    try:
        _apply(client, prefix, incs)
    except redis.RedisError as exc:
        log.warning("task_run_not_counted", family=family, error=str(exc))


def count(client: redis.Redis, prefix: str, name: str, labels: dict[str, str], by: float = 1.0) -> None:
    """Add to a counter of ``METRICS`` (the notifier's); never raises."""
    try:
        client.hincrbyfloat(counters_key(prefix), _field(name, labels), by)
    except redis.RedisError as exc:
        log.warning("metric_not_counted", metric=name, error=str(exc))


# --- the audit fold ----------------------------------------------------------------------------------------------
def _family(action: str | None) -> str:
    from tasks import find_action

    found = find_action(action) if action else None
    return found.family.name if found is not None else "unknown"


def _is_retry(data: dict[str, Any]) -> bool:
    """A run of a plan after its first: the executor counts ``attempts`` up when a run starts (``picked up by a
    worker (attempt N)``, or ``attempt N`` when a plan in flight is resumed); a wait gives its attempt back."""
    from worker.plans import PlanState

    if int(data.get("attempts") or 0) < 2:
        return False
    note = str(data.get("note", ""))
    if data.get("event") == "plan_transition":
        return data.get("to") == PlanState.RUNNING.value and note.startswith("picked up by a worker")
    return data.get("event") == "plan_updated" and note.startswith("attempt ")


class AuditFold:
    """Folds the audit trail into the counters, each entry exactly once (see the module's docstring)."""

    def __init__(self, client: redis.Redis, prefix: str, batch: int = FOLD_BATCH) -> None:
        self.redis = client
        self.prefix = prefix
        self.batch = batch
        self.stream = f"{prefix}audit"

    def fold(self, max_seconds: float = 2.0) -> int:
        """Fold what is new, for at most about ``max_seconds``. Returns the entries folded."""
        folded, deadline = 0, time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            n = self.fold_once()
            folded += n
            if n < self.batch:
                break
        return folded

    def fold_once(self) -> int:
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(fold_key(self.prefix))
                    cursor = pipe.hget(fold_key(self.prefix), "cursor")
                    start = f"({cursor.decode() if isinstance(cursor, bytes) else cursor}" if cursor else "-"
                    rows: list[Any] = pipe.xrange(self.stream, min=start, count=self.batch)  # type: ignore[assignment]
                    if not rows:
                        pipe.unwatch()
                        return 0
                    incs = self._increments(rows)
                    last: bytes | str = rows[-1][0]
                    pipe.multi()
                    for key, value in incs.items():
                        pipe.hincrbyfloat(counters_key(self.prefix), key, value)
                    pipe.hset(fold_key(self.prefix), "cursor", last)
                    pipe.execute()
                    return len(rows)
                except redis.WatchError:
                    continue  # another exporter folded these entries first: go on from its cursor

    def _increments(self, rows: list[Any]) -> dict[str, float]:
        from worker.results import RESULT_STATES

        incs: dict[str, float] = defaultdict(float)
        settled: list[dict[str, Any]] = []
        for _, fields in rows:
            raw = fields.get(b"data", fields.get("data"))
            try:
                data = json.loads(raw) if raw is not None else {}
            except ValueError:
                continue
            event = str(data.get("event", "unknown"))
            incs[_field("commitd_audit_events_total", {"event": event})] += 1
            if event == "aws_call":
                labels = {"service": str(data.get("service")), "operation": str(data.get("operation"))}
                incs[_field("commitd_aws_calls_total", {**labels, "outcome": str(data.get("outcome")),
                                                        "mutating": str(bool(data.get("mutating"))).lower()})] += 1
                if isinstance(data.get("duration_ms"), int | float):
                    _observe(incs, "commitd_aws_call_seconds", labels, data["duration_ms"] / 1000, AWS_BUCKETS)
            elif event in ("plan_transition", "plan_updated"):
                if _is_retry(data):
                    incs[_field("commitd_plan_retries_total", {})] += 1
                if event == "plan_transition":
                    incs[_field("commitd_plan_transitions_total", {"from": str(data.get("from")),
                                                                   "to": str(data.get("to"))})] += 1
                    if data.get("to") in RESULT_STATES:
                        settled.append(data)
        self._settled(incs, settled)
        return incs

    def _settled(self, incs: dict[str, float], entries: list[dict[str, Any]]) -> None:
        """Plans that reached a result state: their family, money and time from intake come from the plan's
        record (read in one round trip; a purged record leaves family ``unknown``)."""
        from pydantic import ValidationError

        from worker.ledger import PlanRecord
        from worker.plans import PlanState
        from worker.results import money

        if not entries:
            return
        pipe = self.redis.pipeline(transaction=False)
        for data in entries:
            pipe.hget(f"{self.prefix}plan:{data.get('plan_id')}", "record")
        for data, raw in zip(entries, pipe.execute(), strict=True):
            try:
                record = PlanRecord.model_validate_json(raw) if raw is not None else None
            except ValidationError:  # a record this build cannot read: counted without what it would add
                record = None
            action = (record.plan or {}).get("action") if record is not None else None
            family, state = _family(action), str(data["to"])
            incs[_field("commitd_plan_outcomes_total", {"family": family, "state": state})] += 1
            if record is not None and isinstance(data.get("at"), str):
                took = (datetime.fromisoformat(data["at"]) - record.received_at).total_seconds()
                _observe(incs, "commitd_plan_seconds", {"family": family, "state": state}, max(took, 0.0),
                         PLAN_BUCKETS)
            if state == PlanState.NEEDS_ATTENTION.value:
                code = str((data.get("error") or {}).get("code", "unknown"))
                incs[_field("commitd_needs_attention_total", {"family": family, "code": code})] += 1
            if state != PlanState.SUCCEEDED.value:
                continue
            result = data.get("result") or (record.result if record is not None else None) or {}
            for how in ("reconciled", "followed"):
                if result.get(how):
                    outcome = "found" if how == "reconciled" else how
                    incs[_field("commitd_reconciliations_total", {"family": family, "outcome": outcome})] += 1
            figures = money(action, (record.intent or {}) if record is not None else {}, result)
            if figures is None:
                continue
            account = str((record.plan or {}).get("account_id")) if record is not None else "unknown"
            labels = {"family": family, "account": account}
            for kind in ("total", "upfront"):
                if figures[f"{kind}_usd"] is not None:
                    incs[_field("commitd_committed_usd_total", {**labels, "kind": kind})] += float(
                        figures[f"{kind}_usd"] or 0)
            if figures["hourly_usd"] is not None:
                incs[_field("commitd_committed_hourly_usd_total", labels)] += float(figures["hourly_usd"])


# --- the collector -----------------------------------------------------------------------------------------------
def _counter_families(raw: dict[Any, Any]) -> Iterator[Any]:
    """The counters hash as metric families: counters as they are, histograms cumulated per label set."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    values: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for key, value in raw.items():
        try:
            name, labels = json.loads(key)
        except ValueError:
            continue
        values[name].append((labels, float(value)))
    for name, (kind, help_text) in METRICS.items():
        if kind == "counter":
            rows = values.get(name, [])
            labelnames = sorted({k for labels, _ in rows for k in labels})
            family = CounterMetricFamily(name, help_text, labels=labelnames)
            for labels, value in rows:
                family.add_metric([labels.get(k, "") for k in labelnames], value)
            yield family
            continue
        sums = {json.dumps(labels, sort_keys=True): v for labels, v in values.get(f"{name}_sum", [])}
        counts = {json.dumps(labels, sort_keys=True): v for labels, v in values.get(f"{name}_count", [])}
        buckets: dict[str, dict[str, float]] = defaultdict(dict)
        for labels, value in values.get(f"{name}_bucket", []):
            le = labels.pop("le")
            buckets[json.dumps(labels, sort_keys=True)][le] = value
        labelnames = sorted({k for key in counts for k in json.loads(key)})
        histogram = HistogramMetricFamily(name, help_text, labels=labelnames)
        bounds = [str(b) for b in {"commitd_task_seconds": TASK_BUCKETS, "commitd_aws_call_seconds": AWS_BUCKETS,
                                   "commitd_plan_seconds": PLAN_BUCKETS}[name]]
        for key, total in counts.items():
            labels = json.loads(key)
            cumulative, series = 0.0, []
            for bound in bounds:
                cumulative += buckets[key].get(bound, 0.0)
                series.append((bound, cumulative))
            series.append(("+Inf", total))
            histogram.add_metric([labels.get(k, "") for k in labelnames], series, sums.get(key, 0.0))
        yield histogram


class CommitdCollector:
    """Reads Redis at each scrape: the snapshot's gauges and the counters hash."""

    def __init__(self, client: redis.Redis, prefix: str, queues: Sequence[str]) -> None:
        self.redis = client
        self.prefix = prefix
        self.queues = list(queues)

    def describe(self) -> list[Any]:
        return []  # nothing to collect at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from worker.status import snapshot

        up = GaugeMetricFamily("commitd_redis_up", "1 when the exporter could read Redis at this scrape")
        try:
            snap = snapshot(self.redis, self.prefix, self.queues)
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(counters_key(self.prefix))
            pipe.hgetall(f"{self.prefix}metrics")
            pipe.hget(fold_key(self.prefix), "cursor")
            counters, alerts, cursor = pipe.execute()
        except redis.RedisError as exc:
            log.warning("metrics_redis_error", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        def gauge(name: str, help_text: str, labelnames: Sequence[str], rows: Sequence[tuple[Sequence[str], float]]
                  ) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, help_text, labels=list(labelnames))
            for labels, value in rows:
                family.add_metric(list(labels), value)
            return family

        yield gauge("commitd_plans", "plans by state (the ledger's state indexes)", ["state"],
                    [([s], n) for s, n in snap.plans.items()])
        yield gauge("commitd_queue_depth", "task messages waiting in each family queue", ["queue"],
                    [([q], n) for q, n in snap.queues.items()])
        yield gauge("commitd_messages_unacked", "task messages delivered to a worker and not yet acknowledged", [],
                    [([], snap.unacked)])
        yield gauge("commitd_worker_up", "1 while a worker node has a process whose heartbeat is fresh", ["node"],
                    [([w.node], int(w.alive)) for w in snap.workers])
        yield gauge("commitd_worker_processes_alive", "worker processes with a fresh heartbeat", ["node"],
                    [([w.node], sum(p.alive for p in w.processes)) for w in snap.workers])
        yield gauge("commitd_worker_tasks_running", "tasks running in a node's live processes", ["node"],
                    [([w.node], w.busy) for w in snap.workers])
        streams = {"plans": snap.intake, "results": snap.results}
        yield gauge("commitd_stream_length", "entries in the plan (intake) and results streams", ["stream"],
                    [([s], v.length) for s, v in streams.items()])
        yield gauge("commitd_stream_group_pending", "entries delivered to a consumer group and not acknowledged",
                    ["stream", "group"], [([s, g["name"]], g["pending"]) for s, v in streams.items() for g in v.groups])
        yield gauge("commitd_stream_group_lag", "entries a consumer group has not read yet", ["stream", "group"],
                    [([s, g["name"]], g["lag"]) for s, v in streams.items() for g in v.groups
                     if isinstance(g["lag"], int)])
        yield gauge("commitd_switch_paused", "1 for each kill switch in force, by scope", ["scope"],
                    [([scope], 1) for scope in snap.switches])
        yield gauge("commitd_budget_usd", "budgets by account, period and measure (used, reserved, cap...)",
                    ["account", "period", "measure"],
                    [([*key.split(":", 1), measure.removesuffix("_usd")], float(value))
                     for key, budget in snap.budgets.items() for measure, value in budget.items()
                     if ":" in key and measure.endswith("_usd")])
        folded_at = int((cursor.decode() if isinstance(cursor, bytes) else str(cursor)).split("-")[0]) / 1000 \
            if cursor else 0.0
        yield gauge("commitd_audit_folded_until_seconds", "time of the last audit entry folded into the counters",
                    [], [([], folded_at)])
        executor = CounterMetricFamily("commitd_executor_events_total", "the executor's alert counters "
                                       "(commitd metrics): needs_attention, duplicates_suspected, "
                                       "sent_after_lease_lost", labels=["event"])
        for name, value in sorted(alerts.items()):
            executor.add_metric([name.decode() if isinstance(name, bytes) else str(name)], float(value))
        yield executor
        yield from _counter_families(counters)


def render(client: redis.Redis, prefix: str, queues: Sequence[str]) -> bytes:
    """The exposition text of one scrape (what the endpoint serves)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(CommitdCollector(client, prefix, queues))  # type: ignore[arg-type]
    return bytes(generate_latest(registry))


# --- the commands ------------------------------------------------------------------------------------------------
@click.group("metrics", invoke_without_command=True)
@click.pass_context
def metrics(ctx: click.Context) -> None:
    """The counters to alert on (duplicates suspected, sends after a lost lease, plans needing attention);
    `commitd metrics serve` exports every metric to Prometheus."""
    if ctx.invoked_subcommand is not None:
        return
    from worker.cli import _runtime

    counts = _runtime().metrics.all()
    for name in ("needs_attention", "duplicates_suspected", "sent_after_lease_lost"):
        counts.setdefault(name, 0)
    for name, value in sorted(counts.items()):
        click.echo(f"{name}\t{value}")


@metrics.command("serve")
@click.option("--port", default=9808, show_default=True, type=click.IntRange(0, 65535))
@click.option("--addr", default="0.0.0.0", show_default=True, help="address to listen on")
@click.option("--fold-interval", default=1.0, show_default=True, type=click.FloatRange(min=0.05),
              help="seconds between folds of the audit trail into the counters")
def serve(port: int, addr: str, fold_interval: float) -> None:
    """Serve /metrics for Prometheus (the whole fleet, from Redis; run one or several)."""
    from prometheus_client import CollectorRegistry, start_http_server

    from worker.cli import _runtime
    from worker.status import family_queues

    runtime = _runtime()
    prefix = runtime.settings.key_prefix
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CommitdCollector(runtime.redis, prefix, family_queues()))  # type: ignore[arg-type]
    try:
        server, _ = start_http_server(port, addr, registry)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {addr}:{port}: {exc.strerror or exc}") from None
    click.echo(f"commitd metrics on http://{addr}:{server.server_port}/metrics", err=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    fold = AuditFold(runtime.redis, prefix)
    try:
        while not stop.is_set():
            try:
                fold.fold()
            except redis.RedisError as exc:
                log.warning("audit_fold_redis_error", error=str(exc))
            stop.wait(fold_interval)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


if __name__ == "__main__":
    metrics()
