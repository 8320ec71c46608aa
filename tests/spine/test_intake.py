"""Intake, both paths (``Intake.submit_raw`` as ``commitd submit`` uses it, and the Redis stream), on a real Redis.

Every input ends as a plan record: accepted plans are ``queued`` (or ``scheduled``/``expired``) with a Celery
message sent; everything else is ``rejected`` with a reason a person can act on and a copy in the dead-letter
stream. Stream entries are acknowledged only after their plan is recorded.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.spine.conftest import ACCOUNT, ri_plan
from worker.runtime import Runtime

QUEUE = "commitd.ec2_reserved_instances"


# --- helpers -------------------------------------------------------------------------------------------------
def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def celery_messages(runtime: Runtime) -> list[dict[str, Any]]:
    """The task messages waiting in the family's Celery queue (kombu keeps a Redis list per queue)."""
    key = runtime.key("celery", QUEUE)
    return [json.loads(raw) for raw in runtime.redis.lrange(key, 0, -1)]


def queued_plan_ids(runtime: Runtime) -> list[str]:
    """The plan ids of the task messages waiting in the family's queue (each message carries one plan id)."""
    from tasks.families import EC2_RESERVED_INSTANCES

    ids = []
    for message in celery_messages(runtime):
        assert message["headers"]["task"] == EC2_RESERVED_INSTANCES.task_name
        assert message["content-type"] == "application/json"
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert kwargs == {} and len(args) == 1
        ids.append(args[0])
    return ids


def dead_letters(runtime: Runtime) -> list[dict[str, str]]:
    rows = runtime.redis.xrange(runtime.key("rejected"))
    return [{_text(k): _text(v) for k, v in fields.items()} for _, fields in rows]


def xadd_plan(runtime: Runtime, payload: str | dict[str, Any]) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return _text(runtime.redis.xadd(runtime.key("plans"), {"plan": text}))


def pending(runtime: Runtime) -> int:
    from worker.intake import GROUP

    return int(runtime.redis.xpending(runtime.key("plans"), GROUP)["pending"])


def assert_rejected(runtime: Runtime, result: Any, *fragments: str) -> None:
    """The plan is recorded ``rejected`` with the reason, and a copy of it is in the dead-letter stream."""
    assert result.outcome == "rejected", result
    assert result.state == "rejected"
    for fragment in fragments:
        assert fragment in result.message, (fragment, result.message)
    record = runtime.ledger.get(result.plan_id)
    assert record is not None, f"rejected plan {result.plan_id} was not recorded"
    assert record.state.value == "rejected"
    assert record.error == {"code": "InvalidPlan", "message": result.message}
    assert [h.state.value for h in record.history] == ["received", "rejected"]
    assert record.history[-1].note == result.message
    letters = [d for d in dead_letters(runtime) if d["plan_id"] == result.plan_id]
    assert len(letters) == 1, letters
    assert letters[0]["reason"] == result.message
    assert letters[0]["plan"], "the dead letter keeps the submitted text"


def _later(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


# --- valid plans ---------------------------------------------------------------------------------------------
def test_submit_raw_records_queued_and_sends_one_task(runtime: Runtime, intake: Any) -> None:
    result = intake.submit_raw(json.dumps(ri_plan("ok-1")), "test")
    assert (result.plan_id, result.state, result.outcome, result.ok) == ("ok-1", "queued", "accepted", True)
    record = runtime.ledger.get("ok-1")
    assert record is not None and record.state.value == "queued"
    assert [h.state.value for h in record.history] == ["received", "queued"]
    assert record.history[0].note == "received from test"
    assert record.plan is not None and record.plan["account_id"] == ACCOUNT
    assert queued_plan_ids(runtime) == ["ok-1"]
    assert dead_letters(runtime) == []


def test_action_name_is_case_insensitive_and_stored_canonically(runtime: Runtime, intake: Any) -> None:
    plan = ri_plan("ok-case")
    plan["action"] = "EC2:purchasereservedinstancesoffering"
    result = intake.submit_raw(json.dumps(plan), "test")
    assert result.outcome == "accepted", result
    record = runtime.ledger.get("ok-case")
    assert record is not None and record.plan is not None
    assert record.plan["action"] == "ec2:PurchaseReservedInstancesOffering"


def test_stream_entry_recorded_then_acknowledged(runtime: Runtime, intake: Any) -> None:
    entry = xadd_plan(runtime, ri_plan("stream-1"))
    assert intake.consume_once("c1", block_ms=100) == 1
    record = runtime.ledger.get("stream-1")
    assert record is not None and record.state.value == "queued"
    assert record.history[0].note == f"received from stream {entry}"
    assert queued_plan_ids(runtime) == ["stream-1"]
    assert pending(runtime) == 0
    # Nothing more to read: a second pass handles nothing and records nothing new.
    assert intake.consume_once("c1", block_ms=50) == 0
    assert runtime.ledger.ids() == ["stream-1"]


def test_stream_entry_is_not_acknowledged_when_recording_fails(runtime: Runtime, intake: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """If the ledger write fails, the entry stays pending (and is recorded by the next claim)."""
    xadd_plan(runtime, ri_plan("stream-fail"))

    def broken_create(*_: Any, **__: Any) -> Any:
        raise RuntimeError("ledger unavailable")

    monkeypatch.setattr(intake.ledger, "create", broken_create)
    with pytest.raises(RuntimeError, match="ledger unavailable"):
        intake.consume_once("c1", block_ms=100)
    assert pending(runtime) == 1
    assert runtime.ledger.get("stream-fail") is None
    monkeypatch.undo()
    assert intake.consume_once("c2", block_ms=50, claim_idle_ms=0) == 1
    assert pending(runtime) == 0
    record = runtime.ledger.get("stream-fail")
    assert record is not None and record.state.value == "queued"


def test_entries_of_a_dead_consumer_are_claimed_again(runtime: Runtime, intake: Any) -> None:
    from worker.intake import GROUP

    intake.ensure_group()
    ids = [xadd_plan(runtime, ri_plan(f"orphan-{i}")) for i in range(3)]
    # A consumer reads the entries and dies before recording or acknowledging them.
    read = runtime.redis.xreadgroup(GROUP, "dead", {runtime.key("plans"): ">"}, count=10)
    assert [_text(eid) for eid, _ in read[0][1]] == ids
    assert pending(runtime) == 3
    assert runtime.ledger.ids() == []

    # A live consumer that only claims long-idle entries leaves them alone for now ...
    assert intake.consume_once("alive", block_ms=50) == 0
    assert pending(runtime) == 3
    # ... and claims them once they are idle long enough.
    assert intake.consume_once("alive", block_ms=50, claim_idle_ms=0) == 3
    assert pending(runtime) == 0
    for i in range(3):
        record = runtime.ledger.get(f"orphan-{i}")
        assert record is not None and record.state.value == "queued"
    assert sorted(queued_plan_ids(runtime)) == [f"orphan-{i}" for i in range(3)]


def test_stream_plans_with_a_custom_prefix(env: dict[str, str], redis_server: Any, sandbox: Any) -> None:
    """The ``commitd:`` prefix is configurable: the stream and every key move with it."""
    import redis as redis_lib

    from config.settings import Settings
    from tasks import ACTIONS
    from worker.intake import Intake

    redis_lib.Redis.from_url(redis_server.url).flushall()
    runtime = Runtime(Settings(key_prefix="tenant7:"))
    intake = Intake(runtime, ACTIONS, lambda family, plan_id: None)
    runtime.redis.xadd("tenant7:plans", {"plan": json.dumps(ri_plan("px-1"))})
    assert intake.consume_once("c", block_ms=100) == 1
    record = runtime.ledger.get("px-1")
    assert record is not None and record.state.value == "queued"
    assert runtime.redis.exists("tenant7:plan:px-1") and not runtime.redis.exists("commitd:plan:px-1")
    assert runtime.redis.xlen("tenant7:audit") == 2
    runtime.redis.close()


# --- invalid plans -------------------------------------------------------------------------------------------
def _with(pid: str, /, **changes: Any) -> dict[str, Any]:
    plan = ri_plan(pid)
    for key, value in changes.items():
        if value is ...:
            plan.pop(key)
        else:
            plan[key] = value
    return plan


def _params(pid: str, /, **params: Any) -> dict[str, Any]:
    plan = ri_plan(pid)
    for key, value in params.items():
        if value is ...:
            plan["params"].pop(key)
        else:
            plan["params"][key] = value
    return plan


INVALID: list[tuple[str, Any, tuple[str, ...]]] = [
    ("broken-json", '{"plan_id": "bj-1", "action": ', ("not valid JSON",)),
    ("json-array", json.dumps([ri_plan("arr-1")]), ("a plan is a JSON object", "array")),
    ("json-number", "42", ("a plan is a JSON object", "number")),
    ("json-string", '"hello"', ("a plan is a JSON object", "string")),
    ("json-null", "null", ("a plan is a JSON object", "null")),
    ("wrong-type-requested-by", _with("wt-1", requested_by=5), ("requested_by:", "string")),
    ("wrong-type-params", _with("wt-2", params=["m5.large"]), ("params:", "dictionary")),
    ("wrong-type-dry-run", _with("wt-3", dry_run="perhaps"), ("dry_run:", "boolean")),
    ("wrong-trigger", _with("wt-4", trigger="cron"), ("trigger:", "queued", "operator")),
    ("missing-trigger", _with("mf-1", trigger=...), ("trigger: is required",)),
    ("missing-params", _with("mf-2", params=...), ("params: is required",)),
    ("missing-plan-id", _with("x", plan_id=...), ("plan_id: is required",)),
    ("blank-requested-by", _with("mf-3", requested_by="  "), ("requested_by:", "must not be blank")),
    ("unknown-envelope-field", _with("uf-1", role_arn="arn:aws:iam::999999999999:role/x"),
     ("role_arn: unknown field",)),
    ("plan-id-bad-chars", _with("bad id/with spaces"), ("plan_id:", "pattern")),
    ("plan-id-too-long", _with("p" * 129), ("plan_id:",)),
    ("plan-id-empty", _with(""), ("plan_id:",)),
    ("unknown-action", _with("ua-1", action="ec2:BuyEverything"),
     ("action:", "ec2:BuyEverything", "not one of the IAM write actions")),
    ("account-not-12-digits", _with("acc-1", account_id="1234"), ("account_id:",)),
    ("unknown-account", _with("acc-2", account_id="999999999999"),
     ("account_id: 999999999999 is not a configured account",)),
    ("bad-region", _with("reg-1", region="mars-north-1"), ("region:", "mars-north-1", "ec2")),
    ("instance-count-zero", _params("ic-0", instance_count=0), ("params.instance_count: must be ≥ 1",)),
    ("unknown-params-key", _params("pk-1", colour="blue"), ("params.colour: unknown field",)),
    ("float-upfront", _params("fl-1", max_upfront_usd=100.5), ("params.max_upfront_usd:", "decimal string")),
    ("missing-ceiling", _params("mc-1", max_hourly_usd=...), ("params.max_hourly_usd: is required",)),
    ("az-scope-without-az", _params("az-1", scope="Availability Zone"),
     ("params:", "availability_zone is required")),
    ("above-account-limit", _params("lim-1", max_upfront_usd="250000.01", offering_type="All Upfront"),
     ("params:", "250000.01", "250000", ACCOUNT)),
    ("window-reversed", _with("win-1", not_before=_later(3600), expires_at=_later(60)),
     ("expires_at must be after not_before",)),
    ("naive-timestamp", _with("ts-1", not_before="2030-01-01T00:00:00"), ("not_before:", "timezone")),
]


@pytest.mark.parametrize(("payload", "fragments"), [(p, f) for _, p, f in INVALID], ids=[n for n, _, _ in INVALID])
def test_invalid_plan_via_submit_raw(runtime: Runtime, intake: Any, payload: Any, fragments: tuple[str, ...]) -> None:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    result = intake.submit_raw(text, "cli")
    assert_rejected(runtime, result, *fragments)
    assert celery_messages(runtime) == []
    if isinstance(payload, dict) and isinstance(payload.get("plan_id"), str) and result.plan_id == payload["plan_id"]:
        # A plan with a usable id is recorded under that id, with its content kept for the operator.
        record = runtime.ledger.get(result.plan_id)
        assert record is not None and record.plan == payload
    else:
        assert result.plan_id.startswith("rejected-")


def test_a_plan_sent_as_flat_stream_fields_is_rejected_under_its_entry_id_so_a_corrected_resend_is_accepted(
    runtime: Runtime, intake: Any
) -> None:
    """A producer that XADDs a plan's fields one by one (no 'plan' field) names its plan_id in the entry: the
    rejection is recorded under the entry's id, not that plan_id, so when the producer sends the plan correctly
    it is accepted rather than refused as a conflict with the rejected record. (A surviving mutant of `make
    mutants` looked for a plan_id in such an entry's text.)"""
    stream = runtime.key("plans")
    plan = ri_plan("flat-1")
    flat = _text(runtime.redis.xadd(stream, {"plan_id": plan["plan_id"], "action": plan["action"],
                                             "account_id": plan["account_id"]}))
    assert intake.consume_once("c1", block_ms=100, count=10) == 1
    rejected = runtime.ledger.get(f"rejected-{flat.replace('-', '.')}")
    assert rejected is not None and rejected.state.value == "rejected"
    assert rejected.error["message"] == "stream entry has no 'plan' field"
    assert runtime.ledger.get("flat-1") is None

    xadd_plan(runtime, plan)
    assert intake.consume_once("c1", block_ms=100, count=10) == 1
    assert runtime.ledger.get("flat-1").state.value == "queued"  # type: ignore[union-attr]
    assert pending(runtime) == 0


def test_every_invalid_stream_entry_is_recorded_and_acknowledged(runtime: Runtime, intake: Any) -> None:
    """All the invalid inputs above, and a few more, through the stream: none dropped, all acknowledged."""
    stream = runtime.key("plans")
    ids = [xadd_plan(runtime, payload) for _, payload, _ in INVALID]
    no_plan_field = _text(runtime.redis.xadd(stream, {"data": json.dumps(ri_plan("np-1"))}))
    huge = _with("huge-1", notes="x" * 70_000)
    huge_id = xadd_plan(runtime, huge)
    xadd_plan(runtime, ri_plan("valid-among-invalid"))

    handled = 0
    while (n := intake.consume_once("c1", block_ms=100, count=10)) > 0:
        handled += n
    assert handled == len(ids) + 3
    assert pending(runtime) == 0
    assert runtime.redis.xlen(stream) == len(ids) + 3

    records = {r.plan_id: r for r in runtime.ledger.list()}
    assert len(records) == len(ids) + 3, "every entry becomes exactly one plan record"
    assert records.pop("valid-among-invalid").state.value == "queued"
    assert all(r.state.value == "rejected" for r in records.values())
    assert len(dead_letters(runtime)) == len(ids) + 2
    assert queued_plan_ids(runtime) == ["valid-among-invalid"]

    sources = {r.history[0].note.removeprefix("received from stream "): r for r in records.values()}
    for entry_id, (name, _, fragments) in zip(ids, INVALID, strict=True):
        record = sources[entry_id]
        for fragment in fragments:
            assert fragment in record.error["message"], (name, record.error)
    assert sources[no_plan_field].error["message"] == "stream entry has no 'plan' field"
    # Bad input without a usable plan id gets one derived from the stream entry id.
    assert sources[no_plan_field].plan_id == f"rejected-{no_plan_field.replace('-', '.')}"
    assert "COMMITD_MAX_PLAN_BYTES" in sources[huge_id].error["message"]
    # The dead letter of the entry without a plan field keeps the fields it had.
    [letter] = [d for d in dead_letters(runtime) if d["plan_id"] == sources[no_plan_field].plan_id]
    assert json.loads(json.loads(letter["plan"])["data"])["plan_id"] == "np-1"


def test_huge_plan_is_rejected_and_the_dead_letter_is_bounded(runtime: Runtime, intake: Any) -> None:
    limit = runtime.settings.max_plan_bytes
    assert limit == 64 * 1024
    # 80 000 bytes in UTF-8 but 40 000 characters: the limit counts bytes.
    text = json.dumps(_with("huge-2", notes="é" * 40_000), ensure_ascii=False)
    assert len(text) < limit < len(text.encode())
    result = intake.submit_raw(text, "cli")
    assert_rejected(runtime, result, f"is {len(text.encode())} bytes", f"the limit is {limit}",
                    "COMMITD_MAX_PLAN_BYTES")
    [letter] = dead_letters(runtime)
    assert len(letter["plan"].encode()) <= limit
    record = runtime.ledger.get(result.plan_id)
    assert record is not None and record.plan is None
    assert len(runtime.redis.hget(runtime.key("plan", result.plan_id), "record")) < 4096

    # A plan just under the limit is accepted.
    ok = _with("big-but-fine", notes="n" * 4000)
    assert len(json.dumps(ok).encode()) < limit
    assert intake.submit_raw(json.dumps(ok), "cli").outcome == "accepted"


def test_the_same_broken_input_twice_is_one_record(runtime: Runtime, intake: Any) -> None:
    first = intake.submit_raw("{oops", "cli")
    second = intake.submit_raw("{oops", "cli")
    assert first.outcome == "rejected"
    assert second.outcome == "existing" and second.plan_id == first.plan_id and second.state == "rejected"
    assert "not valid JSON" in second.message
    other = intake.submit_raw("{oops!", "cli")
    assert other.outcome == "rejected" and other.plan_id != first.plan_id
    assert len(runtime.ledger.ids("rejected")) == 2


# --- resubmission, scheduling, expiry -------------------------------------------------------------------------
def test_identical_resubmission_changes_nothing(runtime: Runtime, intake: Any) -> None:
    plan = ri_plan("again-1")
    assert intake.submit_raw(json.dumps(plan), "cli").outcome == "accepted"
    before = runtime.ledger.get("again-1")
    audit_before = runtime.redis.xlen(runtime.key("audit"))

    # Same content, different key order and an explicit default: still identical.
    same = {"dry_run": False, **{k: plan[k] for k in reversed(list(plan))}}
    for source, raw in (("cli", json.dumps(plan)), ("cli", json.dumps(same))):
        result = intake.submit_raw(raw, source)
        assert (result.outcome, result.state, result.ok) == ("existing", "queued", True)
    xadd_plan(runtime, plan)
    assert intake.consume_once("c1", block_ms=100) == 1

    after = runtime.ledger.get("again-1")
    assert after == before, "identical resubmission must not touch the record"
    assert len(after.history) == 2
    assert runtime.redis.xlen(runtime.key("audit")) == audit_before
    assert queued_plan_ids(runtime) == ["again-1"], "no second task message"
    assert dead_letters(runtime) == []
    assert pending(runtime) == 0


def test_different_content_is_a_conflict(runtime: Runtime, intake: Any) -> None:
    assert intake.submit_raw(json.dumps(ri_plan("conf-1")), "cli").outcome == "accepted"
    before = runtime.ledger.get("conf-1")

    result = intake.submit_raw(json.dumps(ri_plan("conf-1", instance_count=5)), "cli")
    assert (result.outcome, result.state, result.ok) == ("conflict", "queued", False)
    assert "conf-1" in result.message and "different content" in result.message
    assert runtime.ledger.get("conf-1") == before, "the original is untouched"
    [letter] = dead_letters(runtime)
    assert letter["plan_id"] == "conf-1" and "conflict" in letter["reason"]
    assert json.loads(letter["plan"])["params"]["instance_count"] == 5
    assert queued_plan_ids(runtime) == ["conf-1"]
    conflicts = [r for r in runtime.audit.records(plan_id="conf-1") if r["event"] == "plan_conflict"]
    assert len(conflicts) == 1

    # Through the stream too.
    xadd_plan(runtime, ri_plan("conf-1", instance_count=6))
    assert intake.consume_once("c1", block_ms=100) == 1
    assert runtime.ledger.get("conf-1") == before
    assert len(dead_letters(runtime)) == 2
    assert pending(runtime) == 0


def test_invalid_content_under_an_existing_id_does_not_touch_it(runtime: Runtime, intake: Any) -> None:
    assert intake.submit_raw(json.dumps(ri_plan("keep-1")), "cli").outcome == "accepted"
    before = runtime.ledger.get("keep-1")
    result = intake.submit_raw(json.dumps(ri_plan("keep-1", instance_count=0)), "cli")
    assert result.outcome == "conflict" and not result.ok
    assert "params.instance_count: must be ≥ 1" in result.message
    assert runtime.ledger.get("keep-1") == before
    [letter] = dead_letters(runtime)
    assert letter["plan_id"] == "keep-1"


def test_not_before_in_the_future_is_scheduled_then_swept_to_queued(runtime: Runtime, intake: Any) -> None:
    plan = ri_plan("later-1")
    plan["not_before"] = _later(1.0)
    result = intake.submit_raw(json.dumps(plan), "cli")
    assert (result.outcome, result.state) == ("accepted", "scheduled")
    assert celery_messages(runtime) == []
    assert intake.sweep()["due"] == 0
    assert runtime.ledger.get("later-1").state.value == "scheduled"

    time.sleep(1.2)
    assert intake.sweep()["due"] == 1
    record = runtime.ledger.get("later-1")
    assert [h.state.value for h in record.history] == ["received", "scheduled", "queued"]
    assert queued_plan_ids(runtime) == ["later-1"]
    assert runtime.redis.zcard(runtime.key("scheduled")) == 0
    assert intake.sweep()["due"] == 0, "a plan is moved once"
    assert queued_plan_ids(runtime) == ["later-1"]


def test_scheduled_plan_that_expires_before_it_is_due(
    runtime: Runtime, intake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Due an hour from now, expired an hour after that; each sweep runs at an instant this test sets on the intake's
    clock, so no machine is too slow for it: not moved before it is due, expired (never queued) by a sweep after
    expires_at."""
    import worker.intake

    submitted = datetime.now(UTC)
    plan = {**ri_plan("later-2"), "not_before": (submitted + timedelta(hours=1)).isoformat(),
            "expires_at": (submitted + timedelta(hours=2)).isoformat()}
    assert intake.submit_raw(json.dumps(plan), "cli").state == "scheduled"
    monkeypatch.setattr(worker.intake, "_now", lambda: submitted + timedelta(minutes=59))
    assert intake.sweep()["due"] == 0
    assert runtime.ledger.get("later-2").state.value == "scheduled"
    monkeypatch.setattr(worker.intake, "_now", lambda: submitted + timedelta(hours=3))
    assert intake.sweep()["due"] == 1
    record = runtime.ledger.get("later-2")
    assert [h.state.value for h in record.history] == ["received", "scheduled", "expired"]
    assert record.history[-1].note == "expired while scheduled"
    assert celery_messages(runtime) == []
    assert runtime.redis.zcard(runtime.key("scheduled")) == 0
    assert intake.sweep()["due"] == 0


def test_expires_at_in_the_past_is_expired_at_intake(runtime: Runtime, intake: Any) -> None:
    plan = ri_plan("old-1")
    plan["expires_at"] = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    result = intake.submit_raw(json.dumps(plan), "cli")
    assert (result.outcome, result.state) == ("accepted", "expired")
    record = runtime.ledger.get("old-1")
    assert [h.state.value for h in record.history] == ["received", "expired"]
    assert celery_messages(runtime) == []
    assert runtime.ledger.ids("expired") == ["old-1"]


# --- hostile input ---------------------------------------------------------------------------------------------
def test_deeply_nested_json_is_rejected_not_fatal(runtime: Runtime, intake: Any) -> None:
    """JSON nested deeper than the parser's recursion limit, well under the size limit: a rejection, and the
    stream reader survives it (an exception would leave the entry pending and stop the intake loop)."""
    deep = "[" * 30_000 + "]" * 30_000
    result = intake.submit_raw(deep, "cli")
    assert_rejected(runtime, result, "not valid JSON", "nested too deeply")

    entry = xadd_plan(runtime, "{" + '"a":{' * 20_000 + "}" * 20_001)
    xadd_plan(runtime, ri_plan("after-deep"))
    assert intake.consume_once("c1", block_ms=100) == 2
    assert pending(runtime) == 0
    assert runtime.ledger.get(f"rejected-{entry.replace('-', '.')}").state.value == "rejected"
    assert runtime.ledger.get("after-deep").state.value == "queued"


def test_nested_params_value_is_rejected_and_the_record_stays_readable(runtime: Runtime, intake: Any) -> None:
    """Unknown params may nest deeper than the ledger's JSON parser reads back (200): the plan is still recorded
    and stays readable (a record that cannot be read would break ``plans list`` for every plan)."""
    for depth in (150, 220, 900):
        plan = ri_plan(f"nested-{depth}")
        plan["params"]["extra"] = "NESTED"
        text = json.dumps(plan).replace('"NESTED"', "[" * depth + "]" * depth)
        result = intake.submit_raw(text, "cli")
        assert_rejected(runtime, result, "params.extra: unknown field")
        record = runtime.ledger.get(result.plan_id)
        assert record is not None and record.plan_id == f"nested-{depth}"
    assert len(runtime.ledger.list()) == 3


def test_the_same_huge_input_twice_is_one_record(runtime: Runtime, intake: Any) -> None:
    text = json.dumps(_with("huge-3", notes="x" * 70_000))
    first = intake.submit_raw(text, "cli")
    second = intake.submit_raw(text, "cli")
    assert first.outcome == "rejected"
    assert (second.outcome, second.plan_id, second.state) == ("existing", first.plan_id, "rejected")
    assert len(dead_letters(runtime)) == 1


def test_binary_garbage_in_the_stream_is_rejected(runtime: Runtime, intake: Any) -> None:
    entry = _text(runtime.redis.xadd(runtime.key("plans"), {"plan": b"\xff\xfe\x00garbage"}))
    assert intake.consume_once("c1", block_ms=100) == 1
    assert pending(runtime) == 0
    record = runtime.ledger.get(f"rejected-{entry.replace('-', '.')}")
    assert record is not None and record.state.value == "rejected"
    assert record.error["message"] == "plan is not valid UTF-8 (byte 0 is b'\\xff'); send UTF-8 text"


def race(runtime: Runtime, text: str, n: int = 6) -> list[Any]:
    """``n`` intake processes (say, stream readers and ``commitd submit``) get the same input at once."""
    import threading

    from tasks import ACTIONS
    from worker.celery_app import enqueue
    from worker.intake import Intake

    intakes = [Intake(Runtime(runtime.settings), ACTIONS, enqueue) for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list[Any] = []

    def run(i: Intake) -> None:
        barrier.wait()
        results.append(i.submit_raw(text, "race"))

    threads = [threading.Thread(target=run, args=(i,)) for i in intakes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == n, "an intake raised"
    return results


def test_two_intakes_racing_on_one_plan_record_it_once(runtime: Runtime) -> None:
    results = race(runtime, json.dumps(ri_plan("race-intake")))
    assert sorted(r.outcome for r in results) == ["accepted"] + ["existing"] * 5
    assert all(r.ok for r in results)
    record = runtime.ledger.get("race-intake")
    assert [h.state.value for h in record.history] == ["received", "queued"]
    assert queued_plan_ids(runtime) == ["race-intake"]
    assert runtime.audit.verify().ok


def test_a_plan_recorded_but_not_routed_is_finished_when_its_entry_is_claimed_again(
    runtime: Runtime, intake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The intake dies between recording a plan (``received``) and queueing it: the entry is still pending, and
    whoever claims it again must finish the job, not report ``existing`` and leave the plan in ``received``."""
    xadd_plan(runtime, ri_plan("half-1"))
    xadd_plan(runtime, ri_plan("half-2", instance_count=0))

    def crash(*_: Any, **__: Any) -> Any:
        raise RuntimeError("intake process died")

    monkeypatch.setattr(intake, "route", crash)
    monkeypatch.setattr(intake.ledger, "transition", crash)
    with pytest.raises(RuntimeError):
        intake.consume_once("dying", block_ms=100, count=1)
    with pytest.raises(RuntimeError):
        intake.consume_once("dying", block_ms=100, count=1)
    assert runtime.ledger.get("half-1").state.value == "received"
    assert runtime.ledger.get("half-2").state.value == "received"
    assert pending(runtime) == 2
    monkeypatch.undo()

    assert intake.consume_once("alive", block_ms=50, claim_idle_ms=0) == 2
    assert pending(runtime) == 0
    assert runtime.ledger.get("half-1").state.value == "queued"
    assert queued_plan_ids(runtime) == ["half-1"]
    rejected = runtime.ledger.get("half-2")
    assert rejected.state.value == "rejected"
    assert rejected.error["message"] == "params.instance_count: must be ≥ 1"
    assert [d["plan_id"] for d in dead_letters(runtime)] == ["half-2"]


def test_intakes_racing_on_one_invalid_plan_reject_it_once(runtime: Runtime) -> None:
    results = race(runtime, json.dumps(ri_plan("race-bad", instance_count=0)))
    assert sorted(r.outcome for r in results) == ["existing"] * 5 + ["rejected"]
    assert {r.message for r in results} == {"params.instance_count: must be ≥ 1"}
    record = runtime.ledger.get("race-bad")
    assert [h.state.value for h in record.history] == ["received", "rejected"]
    assert [d["plan_id"] for d in dead_letters(runtime)] == ["race-bad"]
    assert runtime.audit.verify().ok


def test_a_sweep_looks_at_a_bounded_batch_of_stalled_plans(runtime: Runtime, intake: Any) -> None:
    """Workers down and a backlog: each sweep re-sends at most SWEEP_BATCH plans (longest idle first), so the intake
    goes back to reading the stream between sweeps; the next sweep takes the next ones."""
    from worker.intake import SWEEP_BATCH

    total = SWEEP_BATCH + 30
    pipe = runtime.redis.pipeline(transaction=False)
    for i in range(total):
        pipe.xadd(runtime.key("plans"), {"plan": json.dumps(ri_plan(f"stalled-{i:03d}"))})
    pipe.execute()
    while intake.consume_once("c1", block_ms=100):
        pass
    assert len(runtime.ledger.ids()) == total
    time.sleep(runtime.settings.stalled_after + 0.2)  # the plans must sit idle past the threshold: that is the point
    first, second = intake.sweep(), intake.sweep()
    assert (first["resent"], second["resent"]) == (SWEEP_BATCH, 30)
    assert intake.sweep()["resent"] == 0  # each re-sent plan's idle clock restarted


@pytest.mark.parametrize("money", ["٠.١٠", "0.10\n", "０.10"])
def test_money_is_ascii_digits_only(runtime: Runtime, intake: Any, money: str) -> None:
    """``\\d`` matches Arabic-Indic and full-width digits, and ``$`` matches before a final newline: a ceiling is
    plain ASCII digits or it is refused, naming the field."""
    result = intake.submit_raw(json.dumps(ri_plan(f"money-{len(money)}-{ord(money[0])}", max_hourly_usd=money)), "t")
    assert result.outcome == "rejected" and "max_hourly_usd" in result.message, result
