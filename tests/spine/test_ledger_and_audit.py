"""The ledger's state machine and compare-and-set, and the chained audit trail, on a real Redis.

Tampering is done the way an attacker with Redis access would: by rebuilding the stream with the same entry ids.
More of the audit trail (processes appending at once, keyed mode, the archive): test_audit_chain.py.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.spine.conftest import ROOT, ri_plan
from worker.ledger import ConcurrentUpdate, InvalidTransition
from worker.plans import TRANSITIONS, PlanState
from worker.runtime import Runtime


def commitd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def submit(intake: Any, plan: dict[str, Any]) -> Any:
    result = intake.submit_raw(json.dumps(plan), "test")
    assert result.ok, result
    return result


def stream_entries(runtime: Runtime) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(eid.decode(), fields) for eid, fields in runtime.redis.xrange(runtime.key("audit"))]


def rebuild_stream(runtime: Runtime, entries: list[tuple[str, dict[bytes, bytes]]]) -> None:
    """Replace the audit stream by ``entries``, keeping their ids (the head key is left alone)."""
    key = runtime.key("audit")
    runtime.redis.delete(key)
    for eid, fields in entries:
        runtime.redis.xadd(key, fields, id=eid)


# --- ledger ----------------------------------------------------------------------------------------------------
def test_invalid_transitions_are_refused(runtime: Runtime, intake: Any) -> None:
    submit(intake, ri_plan("sm-1"))
    record = runtime.ledger.get("sm-1")
    assert record.state == PlanState.QUEUED
    audit_len = runtime.redis.xlen(runtime.key("audit"))
    for target in (PlanState.SUCCEEDED, PlanState.SUBMITTED, PlanState.RECEIVED, PlanState.REJECTED,
                   PlanState.QUEUED):
        with pytest.raises(InvalidTransition, match="queued -> "):
            runtime.ledger.transition(record, target, "not allowed")
    assert runtime.ledger.get("sm-1") == record
    assert runtime.redis.xlen(runtime.key("audit")) == audit_len, "a refused transition leaves no audit entry"

    # Terminal states have no way out.
    cancelled = runtime.ledger.transition(record, PlanState.CANCELLED, "operator cancelled")
    for target in PlanState:
        with pytest.raises(InvalidTransition):
            runtime.ledger.transition(cancelled, target, "no")
    assert all(not TRANSITIONS[s] for s in (PlanState.FAILED, PlanState.REJECTED, PlanState.CANCELLED,
                                            PlanState.EXPIRED))
    # Succeeded has one way out: a duplicate detected after success needs a person.
    assert TRANSITIONS[PlanState.SUCCEEDED] == {PlanState.NEEDS_ATTENTION}


def test_a_stale_record_is_refused(runtime: Runtime, intake: Any) -> None:
    submit(intake, ri_plan("cas-1"))
    mine = runtime.ledger.get("cas-1")
    theirs = runtime.ledger.get("cas-1")
    moved = runtime.ledger.transition(theirs, PlanState.RUNNING, "another worker took it")
    audit_len = runtime.redis.xlen(runtime.key("audit"))
    with pytest.raises(ConcurrentUpdate):
        runtime.ledger.transition(mine, PlanState.CANCELLED, "stale")
    with pytest.raises(ConcurrentUpdate):
        runtime.ledger.update(mine, "stale update", attempts=9)
    assert runtime.ledger.get("cas-1") == moved
    assert runtime.redis.xlen(runtime.key("audit")) == audit_len
    # The state indexes follow the record.
    assert runtime.ledger.ids(PlanState.RUNNING) == ["cas-1"]
    assert runtime.ledger.ids(PlanState.QUEUED) == []


def test_racing_transitions_exactly_one_wins(runtime: Runtime, intake: Any) -> None:
    submit(intake, ri_plan("race-1"))
    record = runtime.ledger.get("race-1")
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            runtime.ledger.transition(record, PlanState.RUNNING, f"worker {i}")
            outcomes.append("won")
        except ConcurrentUpdate:
            outcomes.append("lost")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    final = runtime.ledger.get("race-1")
    assert [h.state.value for h in final.history] == ["received", "queued", "running"]
    assert runtime.audit.verify().ok


def test_a_wait_that_repeats_is_counted_and_a_new_wait_is_a_new_entry(runtime: Runtime, intake: Any) -> None:
    submit(intake, ri_plan("wait-h"))
    record = runtime.ledger.get("wait-h")
    assert record is not None
    for note in ("waiting for budget: 10", "waiting for budget: 10", "waiting for budget: 10", "paused (all)"):
        record = runtime.ledger.transition(record, PlanState.RUNNING, "picked up")
        record = runtime.ledger.transition(record, PlanState.QUEUED, note)
    stored = runtime.ledger.get("wait-h")
    assert stored is not None
    steps = [(h.state.value, h.note, h.repeated) for h in stored.history]
    assert steps == [("received", "received from test", 0), ("queued", "queued for its family's worker", 0),
                     ("running", "picked up", 0),
                     ("queued", "waiting for budget: 10", 2), ("running", "picked up", 0),
                     ("queued", "paused (all)", 0)], steps
    assert stored.history[3].last_at is not None and stored.history[3].last_at > stored.history[3].at
    # The audit trail keeps every step.
    transitions = [r["to"] for r in runtime.audit.records(plan_id="wait-h") if r["event"] == "plan_transition"]
    assert transitions == ["queued"] + ["running", "queued"] * 4


def test_history_has_timestamps_and_records_results(runtime: Runtime, intake: Any) -> None:
    before = datetime.now(UTC)
    submit(intake, ri_plan("hist-1"))
    record = runtime.ledger.get("hist-1")
    record = runtime.ledger.transition(record, PlanState.RUNNING, "started", attempts=1)
    record = runtime.ledger.transition(record, PlanState.FAILED, "price above ceiling",
                                       error={"code": "PriceAboveCeiling", "message": "too dear"})
    after = datetime.now(UTC)
    stored = runtime.ledger.get("hist-1")
    assert stored == record
    assert [h.state.value for h in stored.history] == ["received", "queued", "running", "failed"]
    stamps = [h.at for h in stored.history]
    assert all(s.tzinfo is not None for s in stamps)
    assert stamps == sorted(stamps) and before <= stamps[0] and stamps[-1] <= after
    assert stored.history[-1].note == "price above ceiling"
    assert stored.attempts == 1 and stored.error["code"] == "PriceAboveCeiling"
    assert stored.updated_at == stamps[-1] and stored.received_at == stamps[0]
    assert stored.terminal


def test_plans_list_and_show_cli(runtime: Runtime, intake: Any, env: dict[str, str]) -> None:
    submit(intake, ri_plan("cli-a"))
    submit(intake, ri_plan("cli-b", instance_count=3))
    intake.submit_raw(json.dumps(ri_plan("cli-bad", instance_count=0)), "test")
    record = runtime.ledger.get("cli-b")
    record = runtime.ledger.transition(record, PlanState.RUNNING, "go")
    runtime.ledger.transition(record, PlanState.SUCCEEDED, "done", result={"reserved_instances_id": "ri-123"})

    listed = commitd(env, "plans", "list", "--state", "queued", "--json")
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    rows = listing["plans"]
    assert [r["plan_id"] for r in rows] == ["cli-a"] and listing["next_cursor"] is None
    assert {"plan_id", "state", "history", "result", "error"} <= rows[0].keys()

    every = commitd(env, "plans", "list")
    assert every.returncode == 0, every.stderr
    header, *lines = [line.split("\t") for line in every.stdout.splitlines()]
    assert header == ["PLAN_ID", "STATE", "ACTION", "ACCOUNT", "REGION", "UPDATED"]
    # Newest first.
    assert [(r[0], r[1]) for r in lines] == [("cli-bad", "rejected"), ("cli-b", "succeeded"), ("cli-a", "queued")]

    shown = commitd(env, "plans", "show", "cli-b", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["plan_id"] == "cli-b" and data["state"] == "succeeded"
    assert data["result"] == {"reserved_instances_id": "ri-123"} and data["error"] is None
    assert [h["state"] for h in data["history"]] == ["received", "queued", "running", "succeeded"]
    assert all(datetime.fromisoformat(h["at"]).tzinfo is not None for h in data["history"])
    assert "canonical" not in data and "version" not in data

    bad = json.loads(commitd(env, "plans", "show", "cli-bad", "--json").stdout)
    assert bad["state"] == "rejected" and bad["error"]["message"] == "params.instance_count: must be ≥ 1"

    human = commitd(env, "plans", "show", "cli-bad")
    assert "rejected" in human.stdout and "params.instance_count: must be ≥ 1" in human.stdout

    missing = commitd(env, "plans", "show", "nope")
    assert missing.returncode != 0 and "no plan nope" in missing.stderr
    wrong_state = commitd(env, "plans", "list", "--state", "bogus")
    assert wrong_state.returncode != 0 and "queued" in wrong_state.stderr


# --- audit -----------------------------------------------------------------------------------------------------
def test_every_transition_is_in_the_audit_stream(runtime: Runtime, intake: Any) -> None:
    submit(intake, ri_plan("aud-1"))
    record = runtime.ledger.get("aud-1")
    record = runtime.ledger.transition(record, PlanState.RUNNING, "go")
    record = runtime.ledger.update(record, "attempt counted", attempts=1)
    record = runtime.ledger.transition(record, PlanState.SUCCEEDED, "bought", result={"id": "ri-1"})

    rows = list(runtime.audit.records(plan_id="aud-1"))
    assert [r["event"] for r in rows] == ["plan_recorded", "plan_transition", "plan_transition", "plan_updated",
                                          "plan_transition"]
    transitions = [(r["from"], r["to"]) for r in rows if r["event"] == "plan_transition"]
    assert transitions == [("received", "queued"), ("queued", "running"), ("running", "succeeded")]
    assert rows[0]["state"] == "received" and rows[0]["action"] == "ec2:PurchaseReservedInstancesOffering"
    assert rows[-1]["result"] == {"id": "ri-1"}
    # One audit entry per history step (plus the field update), each with a time.
    history = record.history
    assert len([r for r in rows if r["event"] != "plan_updated"]) == len(history)
    assert all(datetime.fromisoformat(r["at"]).tzinfo is not None for r in rows)
    # The chain: this process's thread wrote them all, each entry linking to the previous one's hash.
    raw = stream_entries(runtime)
    assert len({f[b"w"] for _, f in raw}) == 1
    for (_, prev), (_, cur) in itertools.pairwise(raw):
        assert cur[b"prev"] == prev[b"hash"] and int(cur[b"n"]) == int(prev[b"n"]) + 1
    assert runtime.audit.head() == raw[-1][1][b"hash"].decode()
    assert runtime.audit.verify().ok


def test_secrets_are_removed_from_audit_entries(runtime: Runtime) -> None:
    runtime.audit.append({"event": "aws_call", "plan_id": "s-1", "params": {"ExternalId": "hunter2",
                          "RoleArn": "arn:aws:iam::111122223333:role/x", "nested": [{"SessionToken": "tok"}]},
                          "client_token": "commitd-s-1"})
    [row] = runtime.audit.records(plan_id="s-1")
    assert row["params"]["ExternalId"] == "[redacted]"
    assert row["params"]["nested"][0]["SessionToken"] == "[redacted]"
    assert row["params"]["RoleArn"].endswith(":role/x")
    assert row["client_token"] == "commitd-s-1"
    assert b"hunter2" not in b"".join(f[b"data"] for _, f in stream_entries(runtime))


@pytest.fixture
def trail(runtime: Runtime, intake: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """A few plans' worth of audit entries, verified intact."""
    for i in range(3):
        submit(intake, ri_plan(f"chain-{i}"))
    entries = stream_entries(runtime)
    assert len(entries) == 6
    result = runtime.audit.verify()
    assert (result.ok, result.entries, result.broken_entry) == (True, 6, None)
    return entries


def test_verify_detects_an_altered_entry(runtime: Runtime, env: dict[str, str], trail: list[Any]) -> None:
    victim = trail[2][0]
    altered = []
    for eid, fields in trail:
        if eid == victim:
            data = json.loads(fields[b"data"])
            data["note"] = "nothing to see here"
            fields = {**fields, b"data": json.dumps(data, sort_keys=True, separators=(",", ":")).encode()}
        altered.append((eid, fields))
    rebuild_stream(runtime, altered)
    result = runtime.audit.verify()
    assert not result.ok and result.broken_entry == victim and "altered" in result.reason

    cli = commitd(env, "audit", "verify")
    assert cli.returncode != 0
    assert victim in cli.stderr and "BROKEN" in cli.stderr

    # Re-hashing the altered entry does not help: the next entry's link no longer matches.
    from worker.audit import entry_hash

    rehashed = [(eid, dict(f)) for eid, f in altered]
    fields = {k.decode(): v.decode() for k, v in rehashed[2][1].items()}
    rehashed[2][1][b"hash"] = entry_hash(None, fields["w"], int(fields["n"]), fields["prev"], fields["data"]).encode()
    rebuild_stream(runtime, rehashed)
    result = runtime.audit.verify()
    assert not result.ok and result.broken_entry == trail[3][0] and "removed, inserted or reordered" in result.reason


def test_verify_detects_a_removed_entry(runtime: Runtime, env: dict[str, str], trail: list[Any]) -> None:
    rebuild_stream(runtime, trail[:3] + trail[4:])
    result = runtime.audit.verify()
    assert not result.ok and result.broken_entry == trail[4][0]
    cli = commitd(env, "audit", "verify")
    assert cli.returncode != 0 and trail[4][0] in cli.stderr

    runtime.redis.xdel(runtime.key("audit"), trail[0][0])  # the very first one too
    result = runtime.audit.verify()
    assert result.broken_entry == trail[1][0] and "removed" in result.reason


def test_verify_detects_reordered_entries(runtime: Runtime, trail: list[Any]) -> None:
    swapped = list(trail)
    (id2, f2), (id3, f3) = swapped[2], swapped[3]
    swapped[2], swapped[3] = (id2, f3), (id3, f2)
    rebuild_stream(runtime, swapped)
    result = runtime.audit.verify()
    assert not result.ok and result.broken_entry == id2


def test_verify_detects_a_truncated_end(runtime: Runtime, env: dict[str, str], trail: list[Any]) -> None:
    """The last entry removed: no chain link notices, the stream's count of entries ever added does."""
    runtime.redis.xdel(runtime.key("audit"), trail[-1][0])
    result = runtime.audit.verify()
    assert not result.ok and result.broken_entry == trail[-2][0]
    assert "1 entries were removed from the stream (6 ever added, 5 present, 0 archived)" in result.reason
    cli = commitd(env, "audit", "verify")
    assert cli.returncode == 1 and "removed" in cli.stderr

    runtime.redis.delete(runtime.key("audit"))  # all of it
    result = runtime.audit.verify()
    assert not result.ok and result.entries == 0 and "gone" in result.reason
    # ... and a new trail begun in its place: the trail's recorded origin is not its first entry.
    runtime.audit.append({"event": "after", "plan_id": "x"})
    result = runtime.audit.verify()
    assert not result.ok and f"the trail began at {trail[0][0]}" in result.reason


def test_verify_cli_passes_on_an_intact_trail(runtime: Runtime, env: dict[str, str], trail: list[Any]) -> None:
    cli = commitd(env, "audit", "verify")
    assert cli.returncode == 0, cli.stderr
    assert "intact" in cli.stdout and "6 entries in Redis in 1 chains" in cli.stdout and "unkeyed" in cli.stdout


def test_appends_after_tampering_do_not_hide_it(runtime: Runtime, intake: Any, trail: list[Any]) -> None:
    rebuild_stream(runtime, trail[:2] + trail[3:])
    submit(intake, ri_plan("after-tamper"))
    assert runtime.audit.verify().broken_entry == trail[3][0]


def test_concurrent_appends_each_thread_its_own_chain(runtime: Runtime) -> None:
    from worker.audit import STATS

    restarts = STATS.chain_restarts

    def writer(n: int) -> None:
        for i in range(25):
            runtime.audit.append({"event": "test", "plan_id": f"w{n}", "i": i})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = runtime.audit.verify()
    assert result.ok and result.entries == 100 and result.chains == 4
    assert STATS.chain_restarts == restarts, "no append was made again"
    by_chain: dict[bytes, list[int]] = {}
    for _, fields in stream_entries(runtime):
        by_chain.setdefault(fields[b"w"], []).append(int(fields[b"n"]))
    assert sorted(by_chain.values()) == [list(range(1, 26))] * 4


def test_audit_export_since_and_tail_plan(runtime: Runtime, intake: Any, env: dict[str, str]) -> None:
    submit(intake, ri_plan("early-1"))
    time.sleep(0.05)
    cut = datetime.now(UTC)
    time.sleep(0.05)
    submit(intake, ri_plan("late-1"))
    submit(intake, ri_plan("late-2"))

    everything = commitd(env, "audit", "export")
    assert everything.returncode == 0, everything.stderr
    rows = [json.loads(line) for line in everything.stdout.splitlines()]
    assert [r["plan_id"] for r in rows] == ["early-1"] * 2 + ["late-1"] * 2 + ["late-2"] * 2
    assert all({"id", "hash", "event", "at"} <= r.keys() for r in rows)
    assert [r["id"] for r in rows] == [eid for eid, _ in stream_entries(runtime)]

    since = commitd(env, "audit", "export", "--since", cut.isoformat())
    assert since.returncode == 0, since.stderr
    later = [json.loads(line) for line in since.stdout.splitlines()]
    assert {r["plan_id"] for r in later} == {"late-1", "late-2"} and len(later) == 4
    assert all(datetime.fromisoformat(r["at"]) >= cut for r in later)

    naive = commitd(env, "audit", "export", "--since", cut.replace(tzinfo=None).isoformat())
    assert naive.stdout == since.stdout, "a time without offset is UTC"
    bad = commitd(env, "audit", "export", "--since", "yesterday")
    assert bad.returncode != 0 and "--since" in bad.stderr

    tail = commitd(env, "audit", "tail", "--plan", "late-1")
    assert tail.returncode == 0, tail.stderr
    rows = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [r["plan_id"] for r in rows] == ["late-1", "late-1"]
    assert [r["event"] for r in rows] == ["plan_recorded", "plan_transition"]

    last = commitd(env, "audit", "tail", "-n", "1")
    assert [json.loads(line)["plan_id"] for line in last.stdout.splitlines()] == ["late-2"]


def test_purge_removes_only_old_terminal_plans_and_keeps_the_trail(runtime: Runtime, intake: Any,
                                                                  env: dict[str, str]) -> None:
    submit(intake, ri_plan("purge-live"))
    intake.submit_raw(json.dumps(ri_plan("purge-bad", instance_count=0)), "test")
    record = runtime.ledger.get("purge-live")
    audit_before = runtime.redis.xlen(runtime.key("audit"))

    dry = commitd(env, "plans", "purge", "--older-than-days", "0")
    assert dry.returncode == 0 and dry.stdout.startswith("1 plans would be purged")
    assert runtime.ledger.get("purge-bad") is not None

    recent = commitd(env, "plans", "purge", "--older-than-days", "1", "--yes")
    assert recent.returncode == 0 and recent.stdout.startswith("0 plans purged")

    done = commitd(env, "plans", "purge", "--older-than-days", "0", "--yes")
    assert done.returncode == 0 and done.stdout.startswith("1 plans purged"), done.stderr
    assert runtime.ledger.get("purge-bad") is None
    assert runtime.ledger.ids() == ["purge-live"] and runtime.ledger.ids(PlanState.REJECTED) == []
    assert runtime.ledger.get("purge-live") == record
    purged = [r for r in runtime.audit.records(plan_id="purge-bad")]
    assert [r["event"] for r in purged] == ["plan_recorded", "plan_transition", "plan_purged"]
    assert runtime.redis.xlen(runtime.key("audit")) == audit_before + 1
    assert runtime.audit.verify().ok

    refused = commitd(env, "plans", "purge", "--older-than-days", "0", "--state", "queued", "--yes")
    assert refused.returncode != 0 and "terminal" in refused.stderr
    assert runtime.ledger.get("purge-live") == record
