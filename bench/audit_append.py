"""Audit appends from several processes at once: throughput, retries and Redis commands per append, per design.

Each run starts C processes (C = 1, 4, 16) on a private redis-server (AOF, appendfsync always, as deployed); each
waits for a signal, then makes its share of the operations as fast as it can. Workloads:

- ``append``: ``AuditLog.append`` (an audited AWS call, a lease event);
- ``transition``: ``Ledger.update`` on the process's own plans (a plan's transition and its audit entry, one
  script call).

Designs:

- ``global``: the chain before this change (one chain, one head key, the SHA-256 computed by the client, a
  compare-and-set on the head in the script: a writer that loses the race prepares again and retries);
- ``lua-sha1``: one chain computed inside Redis (a sequencer: never retries, but Lua offers only SHA-1, and a key
  would have to live in Redis or travel in every call);
- ``writer``: one chain per writer (the chosen design, ``worker.audit``), unkeyed and ``writer-keyed`` (HMAC).

Prints appends/s, script calls and Redis commands per append (``INFO commandstats``, counting commands inside
scripts), each the median of the repeats; retries per 1,000 appends over all of them; and whether
``AuditLog.verify`` passes for ``writer``.

    .venv/bin/python bench/audit_append.py [--ops 2000] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from worker.audit import STATS, AuditKey, AuditLog, canonical, now_iso
from worker.ledger import Ledger, PlanRecord
from worker.logs import configure_logging, get_logger, redact
from worker.plans import PlanState

PREFIX = "bench:"
log = get_logger("commitd.audit")
GENESIS = "0" * 64
DESIGNS = ("global", "lua-sha1", "writer", "writer-keyed")
WORKLOADS = ("append", "transition")
CONCURRENCY = (1, 4, 16)

# --- the designs measured against the chosen one ----------------------------------------------------------------
_GLOBAL_APPEND = """
local head = redis.call('GET', KEYS[2]) or ''
if head ~= ARGV[1] then return {0, head} end
local id = redis.call('XADD', KEYS[1], '*', 'data', ARGV[2], 'prev', ARGV[3], 'hash', ARGV[4])
redis.call('SET', KEYS[2], ARGV[4])
return {1, id}
"""
_GLOBAL_WRITE = """
local v = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] == '' then
  if v then return {0, 'exists'} end
elseif v ~= ARGV[1] then
  return {0, 'version'}
end
local head = redis.call('GET', KEYS[5]) or ''
if head ~= ARGV[5] then return {0, 'audit', head} end
redis.call('HSET', KEYS[1], 'record', ARGV[3], 'version', ARGV[2])
if KEYS[2] ~= KEYS[3] then redis.call('SREM', KEYS[2], ARGV[4]) end
redis.call('SADD', KEYS[3], ARGV[4])
if ARGV[1] == '' then redis.call('ZADD', KEYS[6], ARGV[9], ARGV[4]) end
if ARGV[10] == '' then redis.call('ZREM', KEYS[7], ARGV[4]) else redis.call('ZADD', KEYS[7], ARGV[10], ARGV[4]) end
local id = redis.call('XADD', KEYS[4], '*', 'data', ARGV[7], 'prev', ARGV[6], 'hash', ARGV[8])
redis.call('SET', KEYS[5], ARGV[8])
return {1, id}
"""
_SHA1_APPEND = """
local prev = redis.call('GET', KEYS[2]) or ARGV[2]
local hash = redis.sha1hex(prev .. '\\n' .. ARGV[1])
local id = redis.call('XADD', KEYS[1], '*', 'data', ARGV[1], 'prev', prev, 'hash', hash)
redis.call('SET', KEYS[2], hash)
return id
"""


def _entry(data: dict[str, Any]) -> str:
    """The client's work per entry, as worker.audit does it: secrets removed, time, canonical JSON."""
    return canonical({**redact(data), "at": now_iso()})


def _logged(data_json: str) -> None:
    """... and the structlog event every append emits."""
    fields = json.loads(data_json)
    log.info(fields.pop("event", "audit"), **fields)


class GlobalChain:
    """The chain as it was: every writer competes for one head (the client caches the last head it saw)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.append_script = client.register_script(_GLOBAL_APPEND)
        self.write_script = client.register_script(_GLOBAL_WRITE)
        self.head = ""
        self.retries = 0

    def _attempts(self, call: Any) -> None:
        for _ in range(1000):
            prev = self.head or GENESIS
            ok, detail = call(prev)
            if ok:
                return
            self.head = detail.decode() if isinstance(detail, bytes) else str(detail)
            self.retries += 1
        raise RuntimeError("kept losing the race")

    def append(self, data: dict[str, Any]) -> None:
        data_json = _entry(data)

        def call(prev: str) -> tuple[int, Any]:
            digest = hashlib.sha256(f"{prev}\n{data_json}".encode()).hexdigest()
            ok, detail = self.append_script(keys=[f"{PREFIX}audit", f"{PREFIX}audit:head"],
                                            args=[self.head, data_json, prev, digest])
            if ok:
                self.head = digest
                _logged(data_json)
            return ok, detail

        self._attempts(call)

    def update(self, plan_id: str, version: int, record: str) -> None:
        data_json = _entry({"event": "plan_updated", "plan_id": plan_id})
        state = f"{PREFIX}index:state:running"

        def call(prev: str) -> tuple[int, Any]:
            digest = hashlib.sha256(f"{prev}\n{data_json}".encode()).hexdigest()
            reply = self.write_script(  # the keys and arguments of the ledger's script before this change
                keys=[f"{PREFIX}plan:{plan_id}", state, state, f"{PREFIX}audit", f"{PREFIX}audit:head",
                      f"{PREFIX}index:plans", f"{PREFIX}index:in-flight"],
                args=[str(version), str(version + 1), record, plan_id, self.head, prev, data_json, digest, "0",
                      str(time.time())])
            if reply[0]:
                self.head = digest
                _logged(data_json)
                return 1, None
            if reply[1] != b"audit":
                raise RuntimeError(reply)
            return 0, reply[2]

        self._attempts(call)


# --- one process's share ----------------------------------------------------------------------------------------
def child(design: str, workload: str, port: int, ops: int, name: str, key_file: str) -> None:
    configure_logging("json", "WARNING")
    client = redis.Redis(port=port)
    key = AuditKey.from_secret(Path(key_file).read_bytes().strip()) if design == "writer-keyed" else None
    ledger = Ledger(client, PREFIX, audit_key=key)
    old = GlobalChain(client)
    sha1 = client.register_script(_SHA1_APPEND)
    plans: list[PlanRecord] = []
    if workload == "transition":  # each process its own plans, created before the clock starts
        for i in range(10):
            now = datetime.now(UTC)
            record = PlanRecord(plan_id=f"{name}-{i}", state=PlanState.RUNNING, received_at=now, updated_at=now)
            plans.append(ledger.create(record) if design.startswith("writer") else _seed(client, record))
    client.incr(f"{PREFIX}ready")
    while not client.exists(f"{PREFIX}go"):
        time.sleep(0.001)
    started = time.time()
    for i in range(ops):
        data = {"event": "bench", "plan_id": name, "i": i}
        if workload == "append":
            if design == "global":
                old.append(data)
            elif design == "lua-sha1":
                data_json = _entry(data)
                sha1(keys=[f"{PREFIX}audit", f"{PREFIX}audit:head"], args=[data_json, GENESIS])
                _logged(data_json)
            else:
                ledger.audit.append(data)
        else:
            n = i % len(plans)
            if design == "global":
                plans[n].version += 1
                old.update(plans[n].plan_id, plans[n].version - 1, plans[n].model_dump_json())
            else:
                plans[n] = ledger.update(plans[n], "bench", attempts=i)
    retries = old.retries + STATS.chain_restarts
    print(json.dumps({"ops": ops, "retries": retries, "started": started, "ended": time.time()}))


def _seed(client: redis.Redis, record: PlanRecord) -> PlanRecord:
    record.version = 1
    client.hset(f"{PREFIX}plan:{record.plan_id}", mapping={"record": record.model_dump_json(), "version": "1"})
    return record


# --- the runs ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command_counts(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items()
            if not k.startswith("cmdstat_info")}


def run_once(port: int, design: str, workload: str, processes: int, ops: int, key_file: str) -> dict[str, Any]:
    client = redis.Redis(port=port)
    client.flushall()
    client.config_resetstat()
    share = max(1, ops // processes)
    children = [subprocess.Popen([sys.executable, __file__, "--child", design, workload, str(port), str(share),
                                  f"p{n}", key_file], stdout=subprocess.PIPE, text=True)
                for n in range(processes)]
    while int(client.get(f"{PREFIX}ready") or 0) < processes:
        if any(c.poll() not in (None, 0) for c in children):
            raise RuntimeError("a child failed")
        time.sleep(0.01)
    before = command_counts(client)
    go = time.time()
    client.set(f"{PREFIX}go", "1")
    reports = []
    for c in children:
        out, _ = c.communicate()
        if c.returncode != 0:
            raise RuntimeError(f"a child exited {c.returncode}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    after = command_counts(client)
    total = sum(r["ops"] for r in reports)
    elapsed = max(r["ended"] for r in reports) - go
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    scripts = delta.get("evalsha", 0) + delta.get("eval", 0)
    # Less the harness's own: the children's polling for the signal (EXISTS) and the signal itself (one SET).
    commands = sum(v for k, v in delta.items() if k != "exists") - 1
    verified = None
    if design.startswith("writer"):
        key = AuditKey.from_secret(Path(key_file).read_bytes().strip()) if design == "writer-keyed" else None
        verified = AuditLog(client, PREFIX, key).verify().ok
    return {"design": design, "workload": workload, "processes": processes, "ops": total,
            "per_second": total / elapsed, "retries": sum(r["retries"] for r in reports),
            "scripts_per_op": scripts / total, "commands_per_op": commands / total, "verified": verified}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="operations per run, shared by the processes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--json", dest="json_out", default=None, help="also write the rows to this file")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        design, workload, port, ops, name, key_file = args.child
        child(design, workload, int(port), int(ops), name, key_file)
        return 0
    if shutil.which("redis-server") is None:
        print("redis-server is needed (apt-get install redis-server)")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="commitd-bench-audit-"))
    key_file = workdir / "audit.key"
    key_file.write_text(secrets.token_urlsafe(32))
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "yes",
                               "--appendfsync", "always", "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    rows = []
    try:
        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        print(f"{os.cpu_count()} CPUs; {args.ops} operations per run, median of {args.repeat}")
        print(f"{'workload':11s}{'design':14s}{'procs':>6s}{'ops/s':>9s}{'retries/1k':>12s}{'scripts/op':>12s}"
              f"{'cmds/op':>9s}  verify")
        designs = args.designs.split(",")
        for workload in args.workloads.split(","):
            for processes in CONCURRENCY:
                # The designs take turns within each repeat, so a machine busy with something else slows them alike.
                runs: dict[str, list[dict[str, Any]]] = {}
                for _ in range(args.repeat):
                    for design in designs:
                        if design == "lua-sha1" and workload == "transition":
                            continue  # the sequencer is measured on appends only: its ledger script was not written
                        runs.setdefault(design, []).append(
                            run_once(port, design, workload, processes, args.ops, str(key_file)))
                for design, done in runs.items():
                    row = {**done[0], **{k: statistics.median(r[k] for r in done)
                                         for k in ("per_second", "scripts_per_op", "commands_per_op")},
                           "retries": sum(r["retries"] for r in done), "ops": sum(r["ops"] for r in done),
                           "verified": all(r["verified"] for r in done) if design.startswith("writer") else None}
                    rows.append(row)
                    verified = {None: "-", True: "ok", False: "BROKEN"}[row["verified"]]
                    print(f"{workload:11s}{design:14s}{processes:6d}{row['per_second']:9.0f}"
                          f"{1000 * row['retries'] / row['ops']:12.1f}{row['scripts_per_op']:12.2f}"
                          f"{row['commands_per_op']:9.2f}  {verified}", flush=True)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rows, indent=2))
        return 0
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
