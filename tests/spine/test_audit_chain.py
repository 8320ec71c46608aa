"""The audit trail's chains per writer, keyed mode and the archive, through real processes (docs/audit.md).

Processes append at once and none ever appends again; tampering the way someone with Redis write access would
(edit, delete, reorder, a consistent rewrite of every hash) is detected, except the consistent rewrite in unkeyed
mode, which only the key can catch; the archive exports and trims, and verification goes on from its checkpoint;
an archive file whose checkpoint was altered is detected.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from tasks import ACTIONS
from tests.spine.conftest import ROOT, WorkerProcess, ri_plan, wait_for_state
from tests.spine.test_ledger_and_audit import commitd, rebuild_stream, stream_entries
from worker.archive import ArchiveCheck, run_archive, verify_archive
from worker.audit import GENESIS, STATS, AuditKey, AuditLog, Checkpoint, entry_hash
from worker.celery_app import enqueue
from worker.intake import Intake
from worker.ledger import PlanRecord
from worker.plans import PlanState
from worker.runtime import Runtime, set_runtime


def make_key(path: Path) -> Path:
    path.write_text(secrets.token_urlsafe(32) + "\n")
    return path


@pytest.fixture(params=["unkeyed", "keyed"])
def trail_runtime(request: pytest.FixtureRequest, runtime: Runtime, env: dict[str, str],
                  tmp_path: Path) -> Iterator[Runtime]:
    """A runtime in one mode or the other; ``env`` (what the CLI gets) says the same."""
    key_file = make_key(tmp_path / "audit.key") if request.param == "keyed" else None
    if key_file is not None:
        env["COMMITD_AUDIT_KEY_FILE"] = str(key_file)
    own = Runtime(Settings(audit_key_file=key_file))
    set_runtime(own)
    yield own
    env.pop("COMMITD_AUDIT_KEY_FILE", None)
    own.redis.close()


def plan_records(runtime: Runtime, prefix: str, count: int) -> None:
    """``count`` plans through a few transitions each, and an audited event between them."""
    for i in range(count):
        now = datetime.now(UTC)
        record = runtime.ledger.create(PlanRecord(plan_id=f"{prefix}-{i}", state=PlanState.RECEIVED,
                                                  received_at=now, updated_at=now))
        record = runtime.ledger.transition(record, PlanState.QUEUED, "queued")
        runtime.audit.append({"event": "aws_call", "plan_id": record.plan_id, "operation": "describe"})


def decoded(entries: list[tuple[str, dict[bytes, bytes]]]) -> list[tuple[str, dict[str, str]]]:
    return [(eid, {k.decode(): v.decode() for k, v in f.items()}) for eid, f in entries]


def encoded(entries: list[tuple[str, dict[str, str]]]) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(eid, {k.encode(): v.encode() for k, v in f.items()}) for eid, f in entries]


def rewrite(entries: list[tuple[str, dict[str, str]]], key: AuditKey | None) -> list[tuple[str, dict[str, str]]]:
    """Every hash computed again, chain by chain, with ``key`` (an attacker's) or SHA-256 (None, ``k`` dropped)."""
    heads: dict[str, str] = {}
    out = []
    for eid, fields in entries:
        fields = {k: v for k, v in fields.items() if k != "k"}
        w, n = fields["w"], int(fields["n"])
        fields["prev"] = heads.get(w, GENESIS)
        fields["hash"] = heads[w] = entry_hash(key, w, n, fields["prev"], fields["data"])
        if key is not None:
            fields["k"] = key.id
        out.append((eid, fields))
    return out


def edited(entries: list[tuple[str, dict[str, str]]], index: int) -> list[tuple[str, dict[str, str]]]:
    out = [(eid, dict(f)) for eid, f in entries]
    data = json.loads(out[index][1]["data"])
    data["note"] = "nothing to see here"
    out[index][1]["data"] = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return out


# --- appending at once ------------------------------------------------------------------------------------------
WRITER = """
import json, sys, threading, time
import redis
from worker.audit import STATS, load_key
from worker.ledger import Ledger, PlanRecord
from worker.logs import configure_logging
from worker.plans import PlanState
from datetime import UTC, datetime
from pathlib import Path

url, name, key_file = sys.argv[1], sys.argv[2], sys.argv[3]
configure_logging("json", "WARNING")
client = redis.Redis.from_url(url)
ledger = Ledger(client, "commitd:", audit_key=load_key(Path(key_file)) if key_file else None)
client.incr("test:ready")
while not client.exists("test:go"):
    time.sleep(0.005)

def work(thread):
    now = datetime.now(UTC)
    record = ledger.create(PlanRecord(plan_id=f"{name}-{thread}", state=PlanState.RUNNING, received_at=now,
                                      updated_at=now))
    for i in range(40):
        record = ledger.update(record, f"step {i}", attempts=i)
        ledger.audit.append({"event": "aws_call", "plan_id": record.plan_id, "i": i})

threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"appends": STATS.appends, "chain_restarts": STATS.chain_restarts}))
"""


def test_processes_appending_at_once_never_append_again_and_the_trail_verifies(
        trail_runtime: Runtime, env: dict[str, str]) -> None:
    """Four processes, two threads each, every append racing the others': no chain restart (the one way an append
    is ever made again), 8 chains, every transition and its entry recorded, and `commitd audit verify` passes."""
    runtime = trail_runtime
    key_file = env.get("COMMITD_AUDIT_KEY_FILE", "")
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, runtime.settings.redis_url, f"p{n}", key_file],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for n in range(4)]
    while int(runtime.redis.get("test:ready") or 0) < len(writers):
        assert all(w.poll() is None for w in writers), [w.communicate() for w in writers]
        time.sleep(0.05)
    runtime.redis.set("test:go", "1")
    reports = []
    for writer in writers:
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        reports.append(json.loads(out))
    assert [r["chain_restarts"] for r in reports] == [0] * 4
    assert [r["appends"] for r in reports] == [2 * (1 + 40 + 40)] * 4
    result = runtime.audit.verify()
    assert result.ok and result.entries == 4 * 2 * 81 and result.chains == 8, result
    assert result.keyed == ("COMMITD_AUDIT_KEY_FILE" in env)
    assert all(runtime.ledger.get(f"p{n}-{t}").version == 41 for n in range(4) for t in range(2))
    cli = commitd(env, "audit", "verify")
    assert cli.returncode == 0, cli.stderr
    assert f"intact: {4 * 2 * 81} entries in Redis in 8 chains" in cli.stdout
    assert ("keyed (HMAC-SHA256" in cli.stdout) == ("COMMITD_AUDIT_KEY_FILE" in env)


def test_a_worker_in_keyed_mode_writes_a_trail_only_the_key_verifies(
        runtime: Runtime, env: dict[str, str], tmp_path: Path) -> None:
    """A real purchase by a Celery worker and the intake, both keyed: every entry carries the key's id; verify
    passes with the key and answers 3 (not verifiable) without it."""
    key_file = make_key(tmp_path / "audit.key")
    keyed = Runtime(Settings(audit_key_file=key_file))
    set_runtime(keyed)
    worker = WorkerProcess({**env, "COMMITD_AUDIT_KEY_FILE": str(key_file)}, "keyed")
    try:
        intake = Intake(keyed, ACTIONS, enqueue)
        assert intake.submit_raw(json.dumps(ri_plan("keyed-1")), "test").ok
        assert wait_for_state(keyed, "keyed-1", {"succeeded", "failed"}).state == PlanState.SUCCEEDED
    finally:
        worker.stop()
    entries = decoded(stream_entries(keyed))
    key_id = keyed.audit.key.id if keyed.audit.key else None
    assert key_id and {f.get("k") for _, f in entries} == {key_id}
    assert {json.loads(f["data"])["event"] for _, f in entries} >= {"plan_recorded", "aws_call", "plan_transition"}
    assert len({f["w"] for _, f in entries}) >= 2  # the intake (this process) and the worker's child
    with_key = commitd({**env, "COMMITD_AUDIT_KEY_FILE": str(key_file)}, "audit", "verify")
    assert with_key.returncode == 0 and "keyed (HMAC-SHA256, key id " + key_id in with_key.stdout, with_key.stderr
    without = commitd(env, "audit", "verify")
    assert without.returncode == 3 and "NOT VERIFIED" in without.stderr and "is keyed" in without.stderr
    other = AuditLog(keyed.redis, keyed.settings.key_prefix, AuditKey.from_secret(b"another key, 16 bytes or more"))
    result = other.verify()
    assert not result.ok and result.unverifiable and "another key" in (result.reason or "")


# --- tampering ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder", "rewrite"])
def test_tampering_is_detected(trail_runtime: Runtime, env: dict[str, str], tamper: str) -> None:
    """Someone with Redis write access but not the key: each tampering is detected, except that a consistent
    rewrite of every hash passes in unkeyed mode (docs/audit.md: only the key, or the archive's checkpoints for
    what they cover, can show it)."""
    runtime = trail_runtime
    plan_records(runtime, "t", 3)
    entries = decoded(stream_entries(runtime))
    assert len(entries) == 9 and runtime.audit.verify().ok
    keyed = runtime.audit.key is not None
    if tamper == "edit":
        changed = edited(entries, 4)
    elif tamper == "delete":
        changed = entries[:4] + entries[5:]
    elif tamper == "reorder":
        changed = [*entries[:4], (entries[4][0], entries[5][1]), (entries[5][0], entries[4][1]), *entries[6:]]
    else:
        changed = rewrite(edited(entries, 4), None)
    rebuild_stream(runtime, encoded(changed))
    result = runtime.audit.verify()
    if tamper == "rewrite" and not keyed:
        assert result.ok, "unkeyed mode cannot tell a consistent rewrite (documented)"
        assert commitd(env, "audit", "verify").returncode == 0
        return
    assert not result.ok and not result.unverifiable, result
    # A rewrite without the key breaks the very first entry; a removal, the one after the gap.
    victim = entries[{"rewrite": 0, "delete": 5}.get(tamper, 4)][0]
    assert result.broken_entry == victim
    if tamper == "edit":  # the command's answer, once per mode
        cli = commitd(env, "audit", "verify")
        assert cli.returncode == 1 and "BROKEN" in cli.stderr and victim in cli.stderr
    moved = "removed, inserted or reordered"
    reasons = {"edit": "altered", "delete": moved, "reorder": moved, "rewrite": "carries no HMAC"}
    assert reasons[tamper] in result.reason


@pytest.mark.parametrize("trail_runtime", ["keyed"], indirect=True)
def test_a_rewrite_with_another_key_is_detected(trail_runtime: Runtime) -> None:
    runtime = trail_runtime
    assert runtime.audit.key is not None
    plan_records(runtime, "k", 2)
    entries = decoded(stream_entries(runtime))
    forged = rewrite(edited(entries, 1), AuditKey.from_secret(b"an attacker's own key, 32 bytes!"))
    forged = [(eid, {**f, "k": runtime.audit.key.id}) for eid, f in forged]  # claiming to be the real key
    rebuild_stream(runtime, encoded(forged))
    result = runtime.audit.verify()
    assert not result.ok and result.broken_entry == entries[0][0] and "does not match its HMAC" in result.reason


def test_a_tail_lost_by_redis_is_recorded_by_its_writer(runtime: Runtime, env: dict[str, str]) -> None:
    """Redis loses the last entries (a failover, a restart without fsync): simulated by rebuilding the stream
    without them. The writer's next append finds its previous entry gone and records the loss in a new chain
    instead of linking to it; verify passes (nothing present was altered) and warns. Removing an entry (XDEL)
    instead is detected: the stream counts every entry ever added."""
    plan_records(runtime, "lost", 2)
    entries = stream_entries(runtime)
    lost_id, lost = entries[-1][0], entries[-1][1]
    rebuild_stream(runtime, entries[:-1])
    restarts = STATS.chain_restarts
    runtime.audit.append({"event": "after", "plan_id": "lost-0"})
    assert STATS.chain_restarts == restarts + 1
    [marker] = [r for r in runtime.audit.records() if r["event"] == "audit_chain_lost"]
    assert (marker["entry_id"], marker["n"], marker["hash"]) == (lost_id, int(lost[b"n"]), lost[b"hash"].decode())
    result = runtime.audit.verify()
    assert result.ok and result.lost == 1 and result.chains == 2
    cli = commitd(env, "audit", "verify")
    assert cli.returncode == 0 and "1 chains lost their last entry" in cli.stderr

    runtime.redis.xdel(runtime.key("audit"), stream_entries(runtime)[-1][0])
    result = runtime.audit.verify()
    assert not result.ok and "1 entries were removed" in result.reason


# --- the archive ---------------------------------------------------------------------------------------------------
def archive_cli(env: dict[str, str], directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return commitd(env, "audit", "archive", "--older-than-days", "0", "--dir", str(directory), *extra)


def file_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_archive_trims_and_verify_goes_on_from_the_checkpoint(trail_runtime: Runtime, env: dict[str, str],
                                                              tmp_path: Path) -> None:
    runtime = trail_runtime
    archive = tmp_path / "archive"
    plan_records(runtime, "a", 3)
    before = stream_entries(runtime)
    done = archive_cli(env, archive)
    assert done.returncode == 0, done.stderr
    assert "9 entries archived" in done.stdout and "checkpoint #1" in done.stdout
    assert runtime.redis.xlen(runtime.key("audit")) == 0
    lines = file_lines(archive / "audit-00000001.jsonl")
    assert lines[0] == {"from_checkpoint": None}
    assert [(line["id"], line["hash"]) for line in lines[1:-1]] == [(e, f[b"hash"].decode()) for e, f in before]
    checkpoint = Checkpoint.from_dict(lines[-1]["checkpoint"])
    assert checkpoint == runtime.audit.checkpoint() and checkpoint.entries == 9 and checkpoint.last_id == before[-1][0]
    assert (checkpoint.k is not None) == (runtime.audit.key is not None)

    # This process's chain goes on from its archived entry; verification from the checkpoint.
    plan_records(runtime, "b", 2)
    result = runtime.audit.verify()
    assert result.ok and result.entries == 6 and result.checkpoint == checkpoint and result.chains == 1
    assert len({f[b"w"] for _, f in before + stream_entries(runtime)}) == 1
    again = run_archive(runtime, 0, archive)
    assert again.entries == 6 and again.checkpoint and again.checkpoint.seq == 2 and not again.more
    nothing = run_archive(runtime, 0, archive)
    assert nothing.files == () and nothing.checkpoint == again.checkpoint
    plan_records(runtime, "c", 1)
    verified = commitd(env, "audit", "verify", "--archive", str(archive), "--full")
    assert verified.returncode == 0, verified.stderr
    assert "intact: 3 entries in Redis in 1 chains, from checkpoint #2 (15 entries archived)" in verified.stdout
    assert "audit archive intact: 2 files (15 entries checked)" in verified.stdout


def test_an_altered_archive_is_detected(trail_runtime: Runtime, env: dict[str, str], tmp_path: Path) -> None:
    runtime = trail_runtime
    archive = tmp_path / "archive"
    for batch in ("x", "y"):
        plan_records(runtime, batch, 2)
        assert run_archive(runtime, 0, archive).entries == 6
    first, second = archive / "audit-00000001.jsonl", archive / "audit-00000002.jsonl"
    original = {p: p.read_text() for p in (first, second)}
    key = runtime.audit.key

    def check(full: bool = False) -> ArchiveCheck:
        return verify_archive(archive, key, runtime.audit.checkpoint(), full)

    assert check(full=True) == ArchiveCheck(True, 2, 12, first_seq=1)
    # The first file's checkpoint altered: a chain's head moved, the digest left as it was.
    lines = file_lines(first)
    head = next(iter(lines[-1]["checkpoint"]["heads"]))
    lines[-1]["checkpoint"]["heads"][head][1] = "f" * 64
    write_lines(first, lines)
    out = commitd(env, "audit", "verify", "--archive", str(archive))
    assert out.returncode == 1 and "audit archive BROKEN" in out.stderr
    assert "audit-00000001.jsonl: checkpoint #1 does not match its digest (it was altered)" in out.stderr
    # ... and its digest computed again, as anyone can without the key: the next file no longer follows it (in
    # keyed mode, the next file's HMAC pins the checkpoint it starts from).
    lines[-1]["checkpoint"] = json.loads(Checkpoint.from_dict(lines[-1]["checkpoint"]).sealed(None).to_json())
    write_lines(first, lines)
    result = check()
    assert not result.ok and result.file == second.name
    assert result.reason == "it does not start where audit-00000001.jsonl ended"
    first.write_text(original[first])

    # The newest file's checkpoint rewritten (digest recomputed): it no longer matches Redis's, and in keyed
    # mode it lacks the HMAC every checkpoint after a keyed one has.
    lines = file_lines(second)
    lines[-1]["checkpoint"]["entries"] += 1
    lines[-1]["checkpoint"] = json.loads(Checkpoint.from_dict(lines[-1]["checkpoint"]).sealed(None).to_json())
    write_lines(second, lines)
    result = check()
    expected = "carries no HMAC" if key is not None else "Redis's checkpoint differs from the archive's"
    assert not result.ok and result.file == second.name and expected in (result.reason or ""), result
    second.write_text(original[second])

    # An entry altered inside a file: its checkpoint is intact, so only a full check reads far enough to see it.
    lines = file_lines(first)
    lines[2]["data"] = lines[2]["data"].replace("queued", "cancelled")
    write_lines(first, lines)
    assert check().ok
    result = check(full=True)
    assert not result.ok and lines[2]["id"] in (result.reason or "") and "altered" in (result.reason or "")
    # Files removed: the oldest may be pruned on purpose (the archive then begins later); the newest may not.
    first.unlink()
    assert check(full=True) == ArchiveCheck(True, 1, 6, first_seq=2)
    second.unlink()
    result = check()
    assert not result.ok and result.reason == "no archive file holds Redis's checkpoint #2"
    # No archive at all where this runs: not verifiable here, rather than broken.
    elsewhere = verify_archive(tmp_path / "not-here", key, runtime.audit.checkpoint())
    assert not elsewhere.ok and elsewhere.unverifiable


def test_a_broken_trail_is_never_archived(runtime: Runtime, env: dict[str, str], tmp_path: Path) -> None:
    plan_records(runtime, "br", 2)
    entries = stream_entries(runtime)
    rebuild_stream(runtime, entries[:2] + entries[3:])
    out = archive_cli(env, tmp_path / "archive")
    assert out.returncode == 1 and "audit trail BROKEN" in out.stderr and entries[3][0] in out.stderr
    assert runtime.redis.xlen(runtime.key("audit")) == len(entries) - 1
    assert not list((tmp_path / "archive").glob("*")) and runtime.audit.checkpoint() is None


def test_the_intakes_retention_run_archives_the_trail(runtime: Runtime, tmp_path: Path) -> None:
    """The scheduled run: the intake's retention run (worker.retention) archives the audit trail; a trail that
    does not verify is refused and left in Redis, and the run still ends (the intake's loop goes on)."""
    from worker.retention import run_retention

    archiving = runtime.settings.model_copy(update={"audit_archive_dir": tmp_path / "archive",
                                                    "audit_retention_days": 0.0})
    scheduled = Runtime(archiving)
    set_runtime(scheduled)
    plan_records(scheduled, "s", 2)
    report = run_retention(scheduled)
    assert report.audit["entries"] == 6 and report.audit["checkpoint"] == 1
    assert report.audit["files"] == [str(tmp_path / "archive" / "audit-00000001.jsonl")]
    plan_records(scheduled, "s2", 2)
    entries = stream_entries(scheduled)
    rebuild_stream(scheduled, entries[1:])
    report = run_retention(scheduled)
    assert report.audit["entries"] == 0 and entries[1][0] in report.audit["refused"]
    assert scheduled.redis.xlen(scheduled.key("audit")) == len(entries) - 1


def test_a_backlog_is_archived_batch_by_batch(runtime: Runtime, tmp_path: Path) -> None:
    """One file per batch; a run whose time is up leaves the rest for the next run."""
    archive = tmp_path / "archive"
    plan_records(runtime, "bk", 3)
    first = run_archive(runtime, 0, archive, seconds=0, batch=4)
    assert [f.entries for f in first.files] == [4] and first.more
    rest = run_archive(runtime, 0, archive, seconds=None, batch=4)
    assert [f.entries for f in rest.files] == [4, 1] and not rest.more and rest.checkpoint
    assert rest.checkpoint.seq == 3 and rest.checkpoint.entries == 9
    assert verify_archive(archive, None, runtime.audit.checkpoint(), full=True) == ArchiveCheck(True, 3, 9,
                                                                                                first_seq=1)


def test_adopting_an_unkeyed_trail_when_the_key_is_set(runtime: Runtime, env: dict[str, str],
                                                       tmp_path: Path) -> None:
    """A deployment turns keyed mode on: the entries written before are not keyed, so verify fails until they are
    archived under a keyed checkpoint with --adopt-unkeyed; from then on everything verifies with the key."""
    archive = tmp_path / "archive"
    plan_records(runtime, "old", 2)
    assert run_archive(runtime, 0, archive).entries == 6  # an unkeyed checkpoint, #1
    plan_records(runtime, "old2", 1)
    keyed_env = {**env, "COMMITD_AUDIT_KEY_FILE": str(make_key(tmp_path / "audit.key"))}
    keyed = Runtime(Settings(audit_key_file=Path(keyed_env["COMMITD_AUDIT_KEY_FILE"])))
    set_runtime(keyed)
    plan_records(keyed, "new", 1)
    result = keyed.audit.verify()
    assert not result.ok and "checkpoint #1 carries no HMAC" in (result.reason or "")
    refused = run_archive(keyed, 0, archive).refused
    assert refused is not None and "carries no HMAC" in refused.reason
    adopted = archive_cli(keyed_env, archive, "--adopt-unkeyed")
    assert adopted.returncode == 0 and "checkpoint #2" in adopted.stdout, adopted.stderr
    plan_records(keyed, "new2", 1)
    out = commitd(keyed_env, "audit", "verify", "--archive", str(archive), "--full")
    assert out.returncode == 0 and "2 files (12 entries checked)" in out.stdout, out.stderr
    assert keyed.audit.checkpoint().k == keyed.audit.key.id


# --- reading only what is printed ------------------------------------------------------------------------------
def test_tail_and_export_read_only_what_they_print(runtime: Runtime, env: dict[str, str]) -> None:
    pipe = runtime.redis.pipeline(transaction=False)  # filler: entries to read past (their chain is no matter)
    for i in range(1200):
        pipe.xadd(runtime.key("audit"), {"data": json.dumps({"event": "filler", "plan_id": "fill", "i": i})})
    last = pipe.execute()[-1].decode()
    while True:  # a cut in Redis's own time, a millisecond after the last filler entry
        seconds, micros = runtime.redis.time()
        if seconds * 1000 + micros // 1000 > int(last.split("-")[0]):
            break
    cut = datetime.fromtimestamp(seconds + micros / 1e6, UTC)
    for i in range(3):
        runtime.audit.append({"event": "late", "plan_id": f"late-{i}"})

    def reads(*args: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
        runtime.redis.config_resetstat()
        out = commitd(env, "audit", *args)
        assert out.returncode == 0, out.stderr
        stats = runtime.redis.info("commandstats")
        return ([json.loads(line) for line in out.stdout.splitlines()],
                {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("xrange", "xrevrange")})

    rows, calls = reads("tail", "-n", "5")
    assert [r.get("plan_id") for r in rows] == ["fill", "fill", "late-0", "late-1", "late-2"]
    assert [r.get("i") for r in rows[:2]] == [1198, 1199]
    assert calls == {"xrange": 0, "xrevrange": 1}
    rows, calls = reads("export", "--since", cut.isoformat())
    assert [r["plan_id"] for r in rows] == ["late-0", "late-1", "late-2"]
    assert calls == {"xrange": 1, "xrevrange": 0}
    rows, calls = reads("tail", "--plan", "late-1", "-n", "1")
    assert [r["plan_id"] for r in rows] == ["late-1"] and calls["xrange"] == 0
