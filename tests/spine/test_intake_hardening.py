"""Input that broke the intake when tried (issue 7): each case ends as exactly one record, nothing stalls.

Every test runs against a real private Redis; the stream cases go through ``consume_once`` exactly as the intake
daemon's loop does, with the bad entry claimed in the same batch as good ones."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.spine.conftest import ri_plan
from tests.spine.test_intake import _later, _text, dead_letters, pending, queued_plan_ids
from worker.runtime import Runtime

# What a JavaScript producer's ``slice()`` through an emoji sends: half of a UTF-16 surrogate pair, escaped.
LONE_SURROGATE = "\\ud83d"


def stream_add(runtime: Runtime, fields: dict[str, Any]) -> str:
    return _text(runtime.redis.xadd(runtime.key("plans"), fields))


def test_bad_entries_never_stall_the_entries_claimed_with_them(runtime: Runtime, intake: Any) -> None:
    surrogate_text = json.dumps(ri_plan("surrogate-notes")).replace('"trigger"', f'"notes": "ok {LONE_SURROGATE}", '
                                                                               '"trigger"')
    ids = [
        stream_add(runtime, {"plan": json.dumps(ri_plan("good-before"))}),
        stream_add(runtime, {"plan": surrogate_text}),
        stream_add(runtime, {"not_plan": b"\xff\xfe caf\xe9"}),  # no plan field, and not UTF-8
        stream_add(runtime, {"plan": json.dumps(ri_plan("latin-1")).replace("planner@test", "caf\u00e9")
                             .encode("latin-1")}),
        stream_add(runtime, {"plan": json.dumps(ri_plan("good-after"))}),
    ]
    latin_id = f"rejected-{ids[3].replace('-', '.')}"
    assert intake.consume_once("c1", block_ms=100, count=10) == 5
    assert pending(runtime) == 0, "every entry is acknowledged"
    assert sorted(queued_plan_ids(runtime)) == ["good-after", "good-before"]

    surrogate = runtime.ledger.get("surrogate-notes")
    assert surrogate.state.value == "rejected"
    assert "notes: contains a lone UTF-16 surrogate" in surrogate.error["message"]

    no_plan = runtime.ledger.get(f"rejected-{ids[2].replace('-', '.')}")
    assert no_plan.state.value == "rejected" and "no 'plan' field" in no_plan.error["message"]

    # Not decoded with replacement characters: refused (its text is not trusted for an id either).
    latin = runtime.ledger.get(latin_id)
    assert latin.state.value == "rejected", latin.model_dump()
    assert latin.error["message"].startswith("plan is not valid UTF-8 (byte ")
    letters = {d["plan_id"]: d for d in dead_letters(runtime)}
    assert set(letters) == {"surrogate-notes", f"rejected-{ids[2].replace('-', '.')}", latin_id}
    assert "\\xe9" in letters[latin_id]["plan"], "the dead letter shows the bytes as they came"
    assert "\ufffd" not in json.dumps(letters)


def test_an_entry_that_makes_the_intake_fail_is_rejected_and_the_loop_moves_on(
    runtime: Runtime, intake: Any, monkeypatch: Any
) -> None:
    """Any exception an entry's content causes (here: one the intake did not foresee) ends as a rejection."""
    real_submit_raw = intake.submit_raw

    def failing_on(raw: Any, source: str, entry_id: str | None = None) -> Any:
        if b"explode" in (raw if isinstance(raw, bytes) else raw.encode()):
            raise KeyError("unforeseen")
        return real_submit_raw(raw, source, entry_id)

    monkeypatch.setattr(intake, "submit_raw", failing_on)
    bad = stream_add(runtime, {"plan": json.dumps({**ri_plan("explode"), "notes": "explode"})})
    stream_add(runtime, {"plan": json.dumps(ri_plan("fine"))})
    assert intake.consume_once("c1", block_ms=100, count=10) == 2
    assert pending(runtime) == 0
    record = runtime.ledger.get(f"rejected-{bad.replace('-', '.')}")
    assert record.state.value == "rejected" and "KeyError" in record.error["message"]
    assert queued_plan_ids(runtime) == ["fine"]


def test_a_redis_error_on_one_entry_leaves_it_pending_and_the_rest_go_on(
    runtime: Runtime, intake: Any, monkeypatch: Any
) -> None:
    import redis as redis_lib

    real_submit_raw = intake.submit_raw

    def redis_down_for(raw: Any, source: str, entry_id: str | None = None) -> Any:
        if "flaky" in (raw.decode() if isinstance(raw, bytes) else raw):
            raise redis_lib.ConnectionError("connection reset")
        return real_submit_raw(raw, source, entry_id)

    monkeypatch.setattr(intake, "submit_raw", redis_down_for)
    stream_add(runtime, {"plan": json.dumps(ri_plan("flaky"))})
    stream_add(runtime, {"plan": json.dumps(ri_plan("steady"))})
    assert intake.consume_once("c1", block_ms=100, count=10) == 1
    assert pending(runtime) == 1, "the entry Redis failed on stays pending, to be claimed again"
    assert runtime.ledger.get("flaky") is None
    assert queued_plan_ids(runtime) == ["steady"]
    monkeypatch.setattr(intake, "submit_raw", real_submit_raw)
    assert intake.consume_once("c1", block_ms=100, count=10, claim_idle_ms=0) == 1
    assert pending(runtime) == 0
    assert sorted(queued_plan_ids(runtime)) == ["flaky", "steady"]


def test_a_plan_id_ending_in_a_newline_is_not_used_as_an_id(runtime: Runtime, intake: Any) -> None:
    result = intake.submit_raw(json.dumps(ri_plan("abc\n")), "cli")
    assert result.outcome == "rejected"
    assert result.plan_id.startswith("rejected-") and runtime.ledger.get("abc\n") is None
    assert "plan_id" in result.message


def test_envelope_version(runtime: Runtime, intake: Any) -> None:
    unknown = intake.submit_raw(json.dumps({**ri_plan("v2"), "version": 2}), "cli")
    assert unknown.outcome == "rejected"
    assert "version: Value error, version 2 is not one this build accepts (accepted: 1)" in unknown.message
    assert intake.submit_raw(json.dumps({**ri_plan("v-true"), "version": True}), "cli").outcome == "rejected"
    # A producer that never sends a version and one that sends 1 send the same plan.
    assert intake.submit_raw(json.dumps(ri_plan("v1")), "cli").outcome == "accepted"
    again = intake.submit_raw(json.dumps({**ri_plan("v1"), "version": 1}), "cli")
    assert again.outcome == "existing", again


def test_an_oversized_plan_is_findable_by_its_plan_id(runtime: Runtime, intake: Any) -> None:
    plan = {**ri_plan("too-big-1"), "notes": "x" * 4000}
    plan["params"]["padding"] = "y" * (70 * 1024)
    result = intake.submit_raw(json.dumps(plan), "cli")
    assert result.outcome == "rejected" and result.plan_id == "too-big-1"
    assert "the limit is" in runtime.ledger.get("too-big-1").error["message"]


def test_a_scheduled_plan_whose_schedule_entry_was_lost_is_still_moved_on(runtime: Runtime, intake: Any) -> None:
    plan = {**ri_plan("lost-schedule"), "not_before": _later(0.5)}
    assert intake.submit_raw(json.dumps(plan), "cli").state == "scheduled"
    runtime.redis.zrem(runtime.key("scheduled"), "lost-schedule")  # the write after the transition failed
    deadline = time.monotonic() + 30
    while runtime.ledger.get("lost-schedule").state.value == "scheduled":
        assert time.monotonic() < deadline, "the sweeper never found the scheduled plan"
        intake.sweep()
        time.sleep(0.2)
    assert runtime.ledger.get("lost-schedule").state.value == "queued"
    assert queued_plan_ids(runtime) == ["lost-schedule"]


def test_a_role_action_that_is_a_step_of_another_names_that_action(runtime: Runtime, intake: Any) -> None:
    plan = {**ri_plan("step-only"), "action": "redshift:GetReservedNodeExchangeOfferings", "params": {}}
    result = intake.submit_raw(json.dumps(plan), "cli")
    assert result.outcome == "rejected"
    assert "is a call redshift:AcceptReservedNodeExchange makes: plan that action" in result.message
