"""Retention: settled plans become tombstones (and are never run again), the intake stream is trimmed only past
what the intake recorded, dead letters are exported before they are trimmed."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.spine.conftest import ri_plan
from tests.spine.test_intake import _text, pending
from worker.intake import GROUP
from worker.plans import PlanState
from worker.retention import run_retention
from worker.runtime import Runtime


def with_settings(runtime: Runtime, **changes: Any) -> Runtime:
    return Runtime(runtime.settings.model_copy(update=changes))


def settle(runtime: Runtime, plan_id: str, to: PlanState, **changes: Any) -> None:
    record = runtime.ledger.get(plan_id)
    record = runtime.ledger.transition(record, PlanState.RUNNING, "go")
    if to == PlanState.NEEDS_ATTENTION:
        record = runtime.ledger.transition(record, PlanState.SUBMITTED, "sent")
    runtime.ledger.transition(record, to, "done", **changes)


def test_settled_plans_become_tombstones_and_their_claims_go(runtime: Runtime, intake: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.retention

    # As if the plans settled long ago (the claims of a plan settled minutes ago stay: the next test).
    monkeypatch.setattr(worker.retention, "CLAIM_RELEASE_AFTER", timedelta(0))
    for plan_id in ("old-ok", "old-checking", "old-attention", "old-running"):
        assert intake.submit_raw(json.dumps(ri_plan(plan_id)), "test").outcome == "accepted"
    claims = runtime.key("claimed", "ec2-ri", "111122223333", "us-east-1")
    runtime.redis.hset(claims, mapping={"ri-ok": "old-ok", "ri-other": "someone-else"})
    settle(runtime, "old-ok", PlanState.SUCCEEDED, result={"resource_ids": ["ri-ok", "ri-other"]})
    settle(runtime, "old-checking", PlanState.SUCCEEDED, result={"resource_ids": []}, verification="due")
    settle(runtime, "old-attention", PlanState.NEEDS_ATTENTION, error={"code": "OutcomeUnknown", "message": "?"})
    runtime.ledger.transition(runtime.ledger.get("old-running"), PlanState.RUNNING, "go")

    report = run_retention(with_settings(runtime, retention_plans_days=0))
    assert (report.plans_purged, report.plans_kept_busy) == (1, 1)
    assert runtime.ledger.get("old-ok") is None and runtime.ledger.tombstone("old-ok")["state"] == "succeeded"
    for kept in ("old-checking", "old-attention", "old-running"):
        assert runtime.ledger.get(kept) is not None, kept
    # Its own claim went; another plan's claim on a resource it also named stays.
    assert runtime.redis.hgetall(claims) == {b"ri-other": b"someone-else"}
    # Purged is never run again: the same plan is "existing", a changed one a conflict.
    again = intake.submit_raw(json.dumps(ri_plan("old-ok")), "test")
    assert (again.outcome, again.state) == ("existing", "succeeded")
    assert intake.submit_raw(json.dumps(ri_plan("old-ok", instance_count=9)), "test").outcome == "conflict"
    assert runtime.audit.verify().ok


def test_a_plan_purged_minutes_after_it_settled_keeps_its_claims(runtime: Runtime, intake: Any) -> None:
    """A later plan's look-alike check matches unclaimed resources that started up to the clock tolerance before its
    intent: the claims of a plan that settled that recently must not go with it, or its RI looks like a duplicate."""
    assert intake.submit_raw(json.dumps(ri_plan("recent")), "test").outcome == "accepted"
    claims = runtime.key("claimed", "ec2-ri", "111122223333", "us-east-1")
    runtime.redis.hset(claims, "ri-recent", "recent")
    runtime.redis.set(runtime.key("budget_hold", "recent"), "held")
    settle(runtime, "recent", PlanState.SUCCEEDED, result={"resource_ids": ["ri-recent"]})
    report = run_retention(with_settings(runtime, retention_plans_days=0))
    assert report.plans_purged == 1 and runtime.ledger.get("recent") is None
    assert runtime.redis.hgetall(claims) == {b"ri-recent": b"recent"}
    assert not runtime.redis.exists(runtime.key("budget_hold", "recent"))  # nothing of the plan's own is left


def test_the_intake_stream_is_trimmed_only_past_what_the_intake_recorded(runtime: Runtime, intake: Any) -> None:
    stream = runtime.key("plans")
    for i in range(3):
        runtime.redis.xadd(stream, {"plan": json.dumps(ri_plan(f"s-{i}"))})
    assert intake.consume_once("c1", block_ms=100) == 3
    # One entry read by a consumer that died before acknowledging it, one never read.
    runtime.redis.xadd(stream, {"plan": json.dumps(ri_plan("s-pending"))})
    [[_, [(pending_id, _)]]] = runtime.redis.xreadgroup(GROUP, "dead", {stream: ">"}, count=1)
    runtime.redis.xadd(stream, {"plan": json.dumps(ri_plan("s-new"))})
    assert pending(runtime) == 1

    report = run_retention(with_settings(runtime, retention_stream_days=0))
    assert report.stream_trimmed == 3
    left = [_text(i) for i, _ in runtime.redis.xrange(stream)]
    assert left[0] == _text(pending_id) and len(left) == 2
    # The intake still records both.
    assert intake.consume_once("c1", block_ms=100, claim_idle_ms=0) == 2
    assert {runtime.ledger.get(p).state.value for p in ("s-pending", "s-new")} == {"queued"}


def test_dead_letters_are_exported_before_they_are_trimmed(runtime: Runtime, intake: Any, tmp_path: Path) -> None:
    for i in range(3):
        intake.submit_raw(json.dumps(ri_plan(f"bad-{i}", instance_count=0)), "test")
    kept = run_retention(with_settings(runtime, retention_stream_days=0))
    assert kept.dead_letters_archived == 0 and runtime.redis.xlen(runtime.key("rejected")) == 3, \
        "without an archive directory nothing is trimmed"
    report = run_retention(with_settings(runtime, retention_stream_days=0, audit_archive_dir=tmp_path))
    assert report.dead_letters_archived == 3 and runtime.redis.xlen(runtime.key("rejected")) == 0
    [archive] = list(tmp_path.glob("dead-letters-*.jsonl"))
    rows = [json.loads(line) for line in archive.read_text().splitlines()]
    assert [r["plan_id"] for r in rows] == ["bad-0", "bad-1", "bad-2"]
    assert all("params.instance_count" in r["reason"] for r in rows)


def test_one_retention_run_at_a_time(runtime: Runtime) -> None:
    runtime.redis.set(runtime.key("retention", "lock"), "another-intake", px=10_000)
    assert run_retention(with_settings(runtime, retention_plans_days=0)).skipped is True
