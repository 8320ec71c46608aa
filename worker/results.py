"""Results for the planner: every plan's outcome on the stream ``{prefix}results``.

An entry is written when a plan reaches a terminal state (``succeeded``, ``failed``, ``rejected``, ``cancelled``,
``expired``), needs attention, or waits for an approval: once per such transition, with the plan's result or
error, and what a succeeded plan committed. A producer reads the stream with its own consumer group, so a planner
in any language learns outcomes without polling the ledger (docs/plans.md, "Learning outcomes: the results
stream"). The stream is trimmed with ``MAXLEN ~`` (approximate: whole radix-tree nodes, cheap).

The write belongs with the transition itself: ``lua_publish`` is the piece of the ledger's write script that adds
the entry in the same script call as the compare-and-set (so a transition is never without its entry, and a
refused compare-and-set never writes one); ``publish_result`` is the same entry written from Python.

This module also holds the settings of the observability parts (results, heartbeats, notifications): each is read
from ``config.settings.Settings`` when it has the field, else from its ``COMMITD_*`` environment variable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import redis

from config.settings import ConfigurationError, Settings
from worker.logs import redact
from worker.plans import TERMINAL_STATES, PlanState

if TYPE_CHECKING:  # worker.ledger imports this module (its write script publishes results)
    from worker.ledger import PlanRecord

# The states a planner is told about: the terminal ones, and the two where a person must act.
RESULT_STATES = TERMINAL_STATES | {PlanState.NEEDS_ATTENTION, PlanState.AWAITING_APPROVAL}
RESULTS_MAXLEN = 10_000  # about 0.9 KB an entry: ~9 MB
# Actions whose intent's ``hourly_usd`` is already the rate of the whole commitment; for every other action it is
# per unit (instance, node, reservation), multiplied by the intent's unit count. Lower case, as compared.
HOURLY_IS_TOTAL = frozenset({"ec2:acceptreservedinstancesexchangequote", "ec2:purchasehostreservation"})
UNIT_FIELDS = ("instance_count", "count", "node_count")


def results_stream(prefix: str) -> str:
    return f"{prefix}results"


def publishes(old_state: PlanState | None, new: PlanRecord) -> bool:
    """Whether this change of the plan is an outcome to publish: it entered one of ``RESULT_STATES``."""
    return new.state in RESULT_STATES and new.state != old_state


def _usd(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def hourly_rate(action: str | None, intent: dict[str, Any]) -> Decimal | None:
    """The recurring USD per hour of the whole commitment, from the action's intent (None when it has none)."""
    if "commitment_usd_per_hour" in intent:  # Savings Plans: the plan's hourly commitment
        return _usd(intent["commitment_usd_per_hour"])
    cost = intent.get("cost")
    if isinstance(cost, dict) and "hourly_usd" in cost:  # capacity reservations: all instances
        return _usd(cost["hourly_usd"])
    hourly = _usd(intent.get("hourly_usd"))
    if hourly is None or (action or "").lower() in HOURLY_IS_TOTAL:  # IAM action names are case-insensitive
        return hourly
    units = next((intent[f] for f in UNIT_FIELDS if isinstance(intent.get(f), int)), 1)
    return hourly * units


def money(action: str | None, intent: dict[str, Any], result: dict[str, Any]) -> dict[str, str | None] | None:
    """What a successful change committed (decimal strings, USD): ``total_usd`` (upfront plus recurring over the
    term: the intent's ``commitment_usd``), ``upfront_usd``, ``hourly_usd`` (recurring, whole commitment). None
    for a dry run or an action that commits no money."""
    if result.get("dry_run"):
        return None
    figures = {
        "total_usd": _usd(result.get("commitment_usd", intent.get("commitment_usd"))),
        "upfront_usd": _usd(intent.get("upfront_usd")),
        "hourly_usd": hourly_rate(action, intent),
    }
    if all(v is None for v in figures.values()):
        return None
    return {k: (str(v) if v is not None else None) for k, v in figures.items()}


def commitment_figures(record: PlanRecord) -> dict[str, str | None] | None:
    """``money`` of a succeeded plan; None in any other state."""
    if record.state != PlanState.SUCCEEDED:
        return None
    return money((record.plan or {}).get("action"), record.intent or {}, record.result or {})


def result_data(record: PlanRecord) -> dict[str, Any]:
    """The entry's ``data``: the plan's outcome as a planner needs it (secrets removed, executor bookkeeping left
    out)."""
    plan = record.plan or {}
    error = {k: v for k, v in record.error.items() if k != "book"} if record.error else None
    return redact({
        "plan_id": record.plan_id,
        "state": record.state.value,
        "final": record.state in TERMINAL_STATES,
        "version": record.version,
        "action": plan.get("action"),
        "account_id": plan.get("account_id"),
        "region": plan.get("region"),
        "trigger": plan.get("trigger"),
        "requested_by": plan.get("requested_by"),
        "dry_run": bool(plan.get("dry_run")) or bool((record.result or {}).get("dry_run")),
        "note": record.history[-1].note if record.history else "",
        "result": record.result,
        "error": error,
        "commitment": commitment_figures(record),
        "received_at": record.received_at.isoformat(),
        "at": record.updated_at.isoformat(),
    })


def result_fields(record: PlanRecord) -> dict[str, str]:
    """The stream entry: flat fields to filter on without parsing, and ``data`` (JSON) with everything."""
    return {
        "plan_id": record.plan_id,
        "state": record.state.value,
        "final": "true" if record.state in TERMINAL_STATES else "false",
        "version": str(record.version),
        "data": json.dumps(result_data(record), sort_keys=True, separators=(",", ":"), default=str),
    }


def publish_result(client: redis.Redis, prefix: str, record: PlanRecord, maxlen: int = RESULTS_MAXLEN) -> str | None:
    """Add ``record``'s outcome to the results stream (if its state is one to publish). Returns the entry id."""
    if record.state not in RESULT_STATES:
        return None
    entry_id = client.xadd(results_stream(prefix), result_fields(record), maxlen=maxlen,  # type: ignore[arg-type]
                           approximate=True)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


# --- inside the ledger's write script ------------------------------------------------------------------------
def publish_args(old_state: PlanState | None, new: PlanRecord, maxlen: int = RESULTS_MAXLEN) -> list[str]:
    """The two ARGV values ``lua_publish`` reads: the entry's fields as a JSON array ('' when this change publishes
    nothing) and the stream's MAXLEN."""
    if not publishes(old_state, new):
        return ["", str(maxlen)]
    flat = [item for pair in result_fields(new).items() for item in pair]
    return [json.dumps(flat), str(maxlen)]


def lua_publish(stream: int, entry: int, maxlen: int) -> str:
    """Lua: add the result entry ``ARGV[entry]`` (from ``publish_args``) to the stream ``KEYS[stream]``, trimmed to
    about ``ARGV[maxlen]`` entries. Placed after the compare-and-set succeeded, so only a transition that happened
    publishes, and in the same script, so none that happened is left unpublished."""
    return f"""
if ARGV[{entry}] ~= '' then  -- worker.results: the plan's outcome for the planner
  redis.call('XADD', KEYS[{stream}], 'MAXLEN', '~', ARGV[{maxlen}], '*', unpack(cjson.decode(ARGV[{entry}])))
end
"""


# --- settings of the observability parts ---------------------------------------------------------------------
NOTIFY_EVENTS = ("needs_attention", "failed", "awaiting_approval", "succeeded")


def _events(text: str) -> frozenset[str]:
    events = frozenset(e.strip() for e in text.split(",") if e.strip())
    unknown = events - set(NOTIFY_EVENTS)
    if unknown:
        raise ValueError(f"unknown events {sorted(unknown)}; known: {', '.join(NOTIFY_EVENTS)}")
    return events


@dataclass(frozen=True)
class ObservabilitySettings:
    results_maxlen: int = RESULTS_MAXLEN
    heartbeat_seconds: float = 5.0
    notify_webhook_url: str | None = field(default=None, repr=False)  # may hold a token (Slack's do): never logged
    notify_events: frozenset[str] = frozenset(NOTIFY_EVENTS)
    notify_timeout_seconds: float = 5.0
    notify_attempts: int = 5
    notify_backoff_seconds: float = 1.0
    notify_reclaim_seconds: float = 60.0
    notify_max_deliveries: int = 10

    @classmethod
    def load(cls, settings: Settings | None = None) -> ObservabilitySettings:
        """Each value from ``settings`` when it has the field, else ``COMMITD_<NAME>``, else the default. A bad
        value raises ConfigurationError naming the variable (never repeating a URL)."""
        parsers: dict[str, Callable[[str], Any]] = {
            "results_maxlen": int, "heartbeat_seconds": float, "notify_webhook_url": str, "notify_events": _events,
            "notify_timeout_seconds": float, "notify_attempts": int, "notify_backoff_seconds": float,
            "notify_reclaim_seconds": float, "notify_max_deliveries": int,
        }
        values: dict[str, Any] = {}
        for name, parse in parsers.items():
            given = getattr(settings, name, None) if settings is not None else None
            if given is not None:
                secret = getattr(given, "get_secret_value", None)
                values[name] = secret() if callable(secret) else given
                continue
            raw = os.environ.get(f"COMMITD_{name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                value = parse(raw)
            except ValueError as exc:
                detail = "" if name == "notify_webhook_url" else f": {exc}"
                raise ConfigurationError(f"COMMITD_{name.upper()}: invalid value{detail}") from None
            if isinstance(value, int | float) and value <= 0:
                raise ConfigurationError(f"COMMITD_{name.upper()}: must be greater than 0")
            values[name] = value
        if isinstance(values.get("notify_events"), str):  # from Settings as text
            values["notify_events"] = _events(values["notify_events"])
        return cls(**values)
