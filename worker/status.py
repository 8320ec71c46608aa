"""``commitd status``: what the daemon is doing now, read from Redis in one round trip.

Queues and their depth (kombu's Redis lists under ``{prefix}celery:``, one per priority step), messages delivered
to a worker and not yet acknowledged, plans by state (the ledger's state indexes: counts, no record is read),
workers alive (``worker.heartbeat``), the intake stream and the results stream with their consumer groups, kill
switches and budgets. ``snapshot`` is also what ``worker.prometheus`` exports as gauges.

Switches and budgets are read from keys their owners write (docs/observability.md):
``{prefix}switches``, a hash of scope (``all``, ``family:<name>``, ``account:<id>``) → JSON ``{"reason", "by",
"at"}`` for each pause in force; ``{prefix}budgets``, a hash of ``<account>:<period>`` → JSON of ``<measure>_usd``
decimal strings (``used_usd``, ``reserved_usd``, ``cap_usd``...).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import click
import redis

# worker.heartbeat (celery), worker.plans (botocore) and worker.results are imported where used: `commitd` imports
# this module for every command.

# kombu's priority steps (kombu.transport.redis.PRIORITY_STEPS) and the separator of a step's list name.
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class ProcessView:
    id: str
    pid: int | None
    role: str
    alive: bool
    last_beat_s: float
    tasks: list[dict[str, Any]]
    done: int


@dataclass
class WorkerView:
    node: str
    host: str
    alive: bool
    processes: list[ProcessView]
    queues: list[str]
    pool: str | None
    concurrency: int | None

    @property
    def busy(self) -> int:
        return sum(len(p.tasks) for p in self.processes if p.alive)


@dataclass
class StreamView:
    length: int
    groups: list[dict[str, Any]] = field(default_factory=list)  # name, consumers, pending, lag


@dataclass
class Snapshot:
    redis_time: float
    queues: dict[str, int]
    unacked: int
    plans: dict[str, int]
    workers: list[WorkerView]
    intake: StreamView
    results: StreamView
    switches: dict[str, dict[str, Any]]
    budgets: dict[str, dict[str, str]]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for worker, view in zip(data["workers"], self.workers, strict=True):
            worker["busy"] = view.busy
        return data


def queue_keys(prefix: str, queue: str) -> list[str]:
    """The Redis lists kombu keeps for ``queue`` (one per priority step; unprioritised messages use the first)."""
    base = f"{prefix}celery:{queue}"
    return [base if step == 0 else f"{base}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def _groups(reply: Any) -> list[dict[str, Any]]:
    if not isinstance(reply, list):  # the stream does not exist yet
        return []
    return [{"name": _text(g.get("name")), "consumers": int(g.get("consumers") or 0),
             "pending": int(g.get("pending") or 0), "lag": g.get("lag")} for g in reply]


def snapshot(client: redis.Redis, prefix: str, queues: Sequence[str], alive_within_s: float = 15.0) -> Snapshot:
    """Everything ``commitd status`` shows, read in one pipeline (no plan record is read)."""
    from worker.heartbeat import workers_info_key, workers_key
    from worker.plans import PlanState
    from worker.results import results_stream

    states = [s.value for s in PlanState]
    pipe = client.pipeline(transaction=False)
    pipe.time()
    for queue in queues:
        for key in queue_keys(prefix, queue):
            pipe.llen(key)
    pipe.hlen(f"{prefix}celery:unacked")
    for state in states:
        pipe.scard(f"{prefix}index:state:{state}")
    pipe.zrange(workers_key(prefix), 0, -1, withscores=True)
    pipe.hgetall(workers_info_key(prefix))
    for stream in (f"{prefix}plans", results_stream(prefix)):
        pipe.xlen(stream)
        pipe.xinfo_groups(stream)
    pipe.hgetall(f"{prefix}switches")
    pipe.hgetall(f"{prefix}budgets")
    replies = iter(pipe.execute(raise_on_error=False))

    seconds, micros = next(replies)
    now = float(seconds) + float(micros) / 1e6
    depth = {queue: sum(int(next(replies)) for _ in PRIORITY_STEPS) for queue in queues}
    unacked = int(next(replies))
    plans = {state: int(next(replies)) for state in states}
    beats = {_text(member): float(score) / 1000 for member, score in next(replies)}
    infos = {_text(k): json.loads(v) for k, v in next(replies).items()}
    intake = StreamView(int(next(replies)), _groups(next(replies)))
    results = StreamView(int(next(replies)), _groups(next(replies)))
    switches = {_text(k): json.loads(v) for k, v in next(replies).items()}
    budgets = {_text(k): json.loads(v) for k, v in next(replies).items()}
    return Snapshot(now, depth, unacked, plans, _workers(beats, infos, now, alive_within_s), intake, results,
                    switches, budgets)


def _workers(beats: dict[str, float], infos: dict[str, dict[str, Any]], now: float,
             alive_within_s: float) -> list[WorkerView]:
    from worker.heartbeat import ALIVE_BEATS

    nodes: dict[str, WorkerView] = {}
    for process_id, beat_at in sorted(beats.items()):
        info = infos.get(process_id, {})
        age = max(now - beat_at, 0.0)
        # Each process says how often it beats; three missed beats and it is no longer counted.
        window = ALIVE_BEATS * float(info.get("interval_s") or alive_within_s / ALIVE_BEATS)
        node_name = str(info.get("node") or process_id.rsplit(":", 1)[0])
        view = ProcessView(process_id, info.get("pid"), str(info.get("role", "?")), age <= window, round(age, 1),
                           list(info.get("tasks", [])), int(info.get("done", 0)))
        node = nodes.setdefault(node_name, WorkerView(node_name, str(info.get("host", "")), False, [],
                                                      list(info.get("queues", [])), info.get("pool"),
                                                      info.get("concurrency")))
        node.processes.append(view)
        node.alive = node.alive or view.alive
    return list(nodes.values())


def family_queues() -> list[str]:
    from tasks.families import FAMILIES

    return [f.queue for f in FAMILIES]


# --- the command -------------------------------------------------------------------------------------------------
def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A rich table on a terminal, or plain aligned columns without rich (it is not a dependency of the daemon)."""
    cells = [[str(c) for c in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
        click.echo(title)
        for row in [list(columns), *cells]:
            click.echo("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        click.echo()
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in cells:
        table.add_row(*row)
    Console(width=max(shutil.get_terminal_size().columns, 100), file=sys.stdout).print(table)


def _groups_text(view: StreamView) -> str:
    return ", ".join(f"{g['name']} (pending {g['pending']}, lag {g['lag'] if g['lag'] is not None else '?'})"
                     for g in view.groups) or "no consumer group"


def print_snapshot(snap: Snapshot) -> None:
    _table("Queues", ["QUEUE", "WAITING"], sorted(snap.queues.items()))
    click.echo(f"delivered to workers, not yet acknowledged (running or waiting for a countdown): {snap.unacked}\n")
    _table("Plans", ["STATE", "PLANS"], [(s, n) for s, n in snap.plans.items() if n] or [("(none)", 0)])
    workers: list[tuple[Any, ...]] = [
        (w.node, "yes" if w.alive else "NO", f"{sum(p.alive for p in w.processes)}/{len(w.processes)}", w.busy,
         min((p.last_beat_s for p in w.processes), default="-"), w.pool or "-",
         ",".join(q.removeprefix("commitd.") for q in w.queues) or "-") for w in snap.workers]
    _table("Workers", ["NODE", "ALIVE", "PROCESSES ALIVE", "BUSY", "LAST BEAT (s)", "POOL", "QUEUES"],
           workers or [("(no heartbeat)", "-", "-", "-", "-", "-", "-")])
    _table("Streams", ["STREAM", "ENTRIES", "CONSUMER GROUPS"],
           [("plans (intake)", snap.intake.length, _groups_text(snap.intake)),
            ("results", snap.results.length, _groups_text(snap.results))])
    switches = [(scope, s.get("reason", ""), s.get("by", ""), s.get("at", ""))
                for scope, s in sorted(snap.switches.items())]
    _table("Switches", ["SCOPE", "REASON", "BY", "SINCE"], switches or [("(none paused)", "", "", "")])
    if snap.budgets:
        _table("Budgets", ["ACCOUNT:PERIOD", "USD"],
               [(k, ", ".join(f"{m.removesuffix('_usd')} {v}" for m, v in sorted(b.items())))
                for k, b in sorted(snap.budgets.items())])


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for scripts")
def status(as_json: bool) -> None:
    """Queues and their depth, plans by state, workers alive, streams, switches and budgets."""
    from worker.cli import _runtime

    runtime = _runtime()
    try:
        snap = snapshot(runtime.redis, runtime.settings.key_prefix, family_queues())
    except redis.RedisError as exc:
        raise click.ClickException(f"cannot read Redis ({type(exc).__name__}: {exc})") from None
    if as_json:
        click.echo(json.dumps(snap.as_dict(), indent=2, sort_keys=True, default=str))
        return
    print_snapshot(snap)


if __name__ == "__main__":
    status()
