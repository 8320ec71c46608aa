"""Redis Sentinel for every client of commitd's (ledger, intake, audit, send records, Celery's broker), through real
processes: a primary, two replicas and three ``redis-server --sentinel`` on free ports, with passwords on the data
nodes and on the sentinels. The primary is SIGKILLed while plans are in flight; every plan still ends succeeded
with exactly one RI in the sandbox's ground truth, its send records made durable by WAIT on a replica.

Why two replicas: with ``COMMITD_SEND_RECORD_DURABILITY=replicas`` a send waits until a replica has its record. After
the failover one replica is the new primary; the other is re-pointed at it by the sentinels, so WAIT still has a
replica to count. With a single replica the new primary would have none, and every send would stop with
``DurabilityUnavailable`` (the plan failed, nothing bought) until a replica is added back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from config.settings import Settings
from sandbox.control import SandboxControl
from tasks import ACTIONS
from tests.spine.conftest import ACCOUNT, ROOT, free_port, ri_plan
from worker.ledger import PlanRecord
from worker.runtime import Runtime, set_runtime

MASTER = "commitd-main"
DATA_PASSWORD = "data-pw-5b1e0c"  # the data nodes' requirepass; never in a log or error message
SENTINEL_PASSWORD = "sentinel-pw-93c7aa"  # the sentinels' own
TERMINAL = {"succeeded", "failed", "needs_attention", "rejected", "expired", "cancelled"}
# Six plans for six different offerings (one plan at a time per offering: none waits for another).
OFFERINGS = [(t, years) for t in ("m5.large", "c5.large", "r5.large") for years in (1, 3)]


def poll(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll ``check`` until it returns something truthy; Redis errors (a failover under way) count as not yet."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except redis.RedisError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last Redis error: {last!r})")


class Node:
    """One redis-server process (a data node or a sentinel) on a free port. ``command`` makes its command line
    from its port and directory."""

    def __init__(self, workdir: Path, name: str, command: Callable[[int, Path], list[str]], password: str) -> None:
        self.port = free_port()
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            command(self.port, self.dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir)
        poll(lambda: self.client().ping(), f"{name} to answer", timeout=20)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=2, socket_connect_timeout=1)

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None


def data_node(primary: int | None = None) -> Callable[[int, Path], list[str]]:
    def command(port: int, where: Path) -> list[str]:
        return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(where),
                "--logfile", str(where / "redis.log"), "--save", "", "--appendonly", "no",
                "--requirepass", DATA_PASSWORD, "--masterauth", DATA_PASSWORD, "--repl-diskless-sync-delay", "0",
                *(["--replicaof", "127.0.0.1", str(primary)] if primary else [])]
    return command


def sentinel_node(primary: int) -> Callable[[int, Path], list[str]]:
    def command(port: int, where: Path) -> list[str]:
        conf = where / "sentinel.conf"  # a sentinel rewrites its configuration file: it must have one
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {where}\nlogfile {where / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 4000\n"
            f"sentinel parallel-syncs {MASTER} 2\n"
            f"sentinel auth-pass {MASTER} {DATA_PASSWORD}\n"
            f"requirepass {SENTINEL_PASSWORD}\nsentinel sentinel-pass {SENTINEL_PASSWORD}\n"
        )
        return ["redis-server", str(conf), "--sentinel"]
    return command


class SentinelTopology:
    """A primary, two replicas and three sentinels (quorum 2) watching them under the name ``MASTER``."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="commitd-sentinel-"))
        self.nodes: list[Node] = []
        try:
            self.primary = self._add("primary", data_node(), DATA_PASSWORD)
            self.replicas = [self._add(f"replica{i}", data_node(self.primary.port), DATA_PASSWORD) for i in (1, 2)]
            self.sentinels = [self._add(f"sentinel{i}", sentinel_node(self.primary.port), SENTINEL_PASSWORD)
                              for i in (1, 2, 3)]
            poll(self._watching, "both replicas online and every sentinel to know them and each other")
        except BaseException:
            self.stop()
            raise

    def _add(self, name: str, command: Callable[[int, Path], list[str]], password: str) -> Node:
        node = Node(self.workdir, name, command, password)
        self.nodes.append(node)
        return node

    def _watching(self) -> bool:
        replication = self.primary.client().info("replication")
        online = [v for k, v in replication.items() if k.startswith("slave") and isinstance(v, dict)
                  and v.get("state") == "online"]
        states = [s.client().sentinel_master(MASTER) for s in self.sentinels]
        return len(online) == 2 and all(st["num-slaves"] == 2 and st["num-other-sentinels"] == 2 for st in states)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"sentinel://:{DATA_PASSWORD}@{hosts}/{MASTER}/0"

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers names it."""
        for sentinel in self.sentinels:
            try:
                _, port = sentinel.client().sentinel_get_master_addr_by_name(MASTER)
                return int(port)
            except redis.RedisError:
                continue
        raise redis.ConnectionError("no sentinel answered")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def topology() -> Iterator[SentinelTopology]:
    topo = SentinelTopology()
    yield topo
    topo.stop()


def sentinel_env(topo: SentinelTopology) -> dict[str, str]:
    """What a worker process needs on top of the tests' environment to use the topology."""
    return {"COMMITD_REDIS_URL": topo.url, "COMMITD_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
            "COMMITD_SEND_RECORD_DURABILITY": "replicas", "COMMITD_DURABILITY_TIMEOUT_MS": "2000"}


@pytest.fixture
def sentinel_runtime(runtime: Runtime, topology: SentinelTopology) -> Iterator[Runtime]:
    """This process's runtime and Celery app on the topology (the ``runtime`` fixture's private Redis is not used)."""
    from worker.celery_app import app, configure

    settings = Settings(redis_url=topology.url, redis_sentinel_password=SENTINEL_PASSWORD,
                        send_record_durability="replicas", durability_timeout_ms=2000)
    configure(app, settings)
    ours = Runtime(settings)
    set_runtime(ours)
    yield ours
    configure(app, runtime.settings)
    set_runtime(runtime)


def assert_no_password(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in (DATA_PASSWORD, SENTINEL_PASSWORD):
        assert secret.encode() not in data, f"a password in {where}"


# --- the clients ---------------------------------------------------------------------------------------------
def test_every_client_reaches_the_master_the_sentinels_name(topology: SentinelTopology, env: dict[str, str]) -> None:
    from worker.celery_app import create_app
    from worker.durability import SendRecordDurability

    settings = Settings(redis_url=topology.url, redis_sentinel_password=SENTINEL_PASSWORD)
    runtime = Runtime(settings)
    assert runtime.redis.info("server")["tcp_port"] == topology.primary.port
    # The send record connection: one connection to the master, on which WAIT counts the writes.
    send = runtime.send_record_redis
    assert getattr(send, "connection", None) is not None, "a single-connection client"
    client_id = send.client_id()
    send.set("commitd:probe", "1")
    assert send.execute_command("WAIT", 2, 2000) == 2
    assert send.client_id() == client_id
    assert SendRecordDurability(send, "auto").wait() == "replicas"

    # Celery's broker: kombu's sentinel transport, to the same master, with both passwords.
    celery = create_app(settings)
    with celery.connection_for_write() as conn:
        assert conn.transport_cls == "sentinel"
        assert_no_password(conn.as_uri(), "the broker URL Celery prints")
        queue = conn.SimpleQueue("commitd-sentinel-probe")
        queue.put({"probe": 1})
        assert queue.get(timeout=10).payload == {"probe": 1}
        queue.close()
    assert any(k.startswith(b"commitd:celery:") for k in topology.primary.client().keys("*"))

    # Wrong passwords fail, and the error names neither password.
    for wrong in (Settings(redis_url=topology.url, redis_sentinel_password="not-it"),
                  Settings(redis_url=topology.url.replace(DATA_PASSWORD, "not-it"),
                           redis_sentinel_password=SENTINEL_PASSWORD)):
        with pytest.raises(redis.RedisError) as failed:
            Runtime(wrong).redis.ping()
        assert_no_password(str(failed.value), "an error message")


def test_config_show_masks_both_sentinel_passwords(env: dict[str, str]) -> None:
    url = f"sentinel://commitd:{DATA_PASSWORD}@10.0.0.1:26379,10.0.0.2:26380/{MASTER}/2"
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "config", "show"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, **env, "COMMITD_REDIS_URL": url, "COMMITD_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD})
    assert result.returncode == 0, result.stderr
    assert_no_password(result.stdout + result.stderr, "commitd config show")
    settings = json.loads(result.stdout)["settings"]
    assert settings["redis_url"] == f"sentinel://***@10.0.0.1:26379,10.0.0.2:26380/{MASTER}/2"
    assert settings["redis_sentinel_password"] == "***"


@pytest.mark.parametrize("url", [
    f"sentinel://:{DATA_PASSWORD}@127.0.0.1:26379",  # no master name
    f"sentinel://:{DATA_PASSWORD}@127.0.0.1:notaport/{MASTER}",
    f"sentinel://:{DATA_PASSWORD}@127.0.0.1:26379/{MASTER}/notadb",
    f"sentinel://:{DATA_PASSWORD}@127.0.0.1:26379/{MASTER}?ssl=true",
    f"sentinal://:{DATA_PASSWORD}@127.0.0.1:26379/{MASTER}",
], ids=["no-master", "bad-port", "bad-db", "query", "bad-scheme"])
def test_a_bad_redis_url_stops_naming_the_setting_not_the_password(env: dict[str, str], url: str) -> None:
    result = subprocess.run([sys.executable, "-m", "worker.cli", "config", "show"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={**os.environ, **env, "COMMITD_REDIS_URL": url})
    assert result.returncode != 0 and "COMMITD_REDIS_URL" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert_no_password(result.stdout + result.stderr, "a configuration error")


# --- failover ------------------------------------------------------------------------------------------------
def test_plans_finish_once_when_the_primary_fails_over(
    topology: SentinelTopology, sentinel_runtime: Runtime, sandbox: SandboxControl, start_worker: Any
) -> None:
    from worker.celery_app import enqueue
    from worker.intake import Intake

    runtime = sentinel_runtime
    intake = Intake(runtime, ACTIONS, enqueue)
    stop = threading.Event()
    loop = threading.Thread(target=intake.run_forever, args=(stop, "test-intake"), daemon=True)
    # A purchase takes 0.4 s in the sandbox: sends are in flight when the primary dies.
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "latency", probability=1.0, latency_ms=400)
    worker = start_worker("sentinel", concurrency=3, **sentinel_env(topology))
    try:
        loop.start()
        plan_ids = []
        for n, (instance_type, years) in enumerate(OFFERINGS):
            plan = ri_plan(f"failover-{n}", instance_type=instance_type, duration_years=years, instance_count=1,
                           max_hourly_usd="1.00")
            result = intake.submit_raw(json.dumps(plan), "test")
            assert result.outcome == "accepted", result
            plan_ids.append(plan["plan_id"])
        # Intake's answers are acknowledged by the primary alone: have a replica copy them before the primary dies
        # (a plan accepted moments before a failover can be lost; docs/operations.md).
        fence = runtime.redis.pipeline(transaction=False)
        fence.set(runtime.key("test", "fence"), "1").execute_command("WAIT", 2, 5000)
        assert fence.execute()[1] == 2

        def sending() -> list[PlanRecord]:
            records = [runtime.ledger.get(p) for p in plan_ids]
            return [r for r in records if r is not None and not r.terminal and (r.book or {}).get("sends", 0) >= 1]

        in_flight = poll(sending, "a plan with a durable send record and no outcome yet")
        old = topology.primary.port
        topology.primary.kill()
        new = poll(lambda: (port := topology.master_port()) != old and port, "the sentinels to promote a replica")
        promoted = next(r for r in topology.replicas if r.port == new)
        poll(lambda: promoted.client().info("replication")["connected_slaves"] >= 1,
             "the other replica to follow the new primary", timeout=30)

        def all_settled() -> dict[str, PlanRecord] | None:
            records = {p: runtime.ledger.get(p) for p in plan_ids}
            done = all(r is not None and r.state.value in TERMINAL and r.verification != "due"
                       for r in records.values())
            return records if done else None  # type: ignore[return-value]

        records: dict[str, PlanRecord] = poll(all_settled, "every plan to settle and be checked", timeout=120)
    finally:
        stop.set()
        loop.join(timeout=10)

    print(f"in flight at the kill: {[(r.plan_id, r.state.value) for r in in_flight]}")
    assert {p: (r.state.value, r.error) for p, r in records.items()} == {p: ("succeeded", None) for p in plan_ids}
    ris = {ri["id"] for ri in sandbox.resources(account_id=ACCOUNT, type="reserved-instances")}
    results = [r.result or {} for r in records.values()]
    assert all(len(result["resource_ids"]) == 1 for result in results)
    owned = [ri_id for result in results for ri_id in result["resource_ids"]]
    assert sorted(owned) == sorted(ris), "exactly one RI per plan, and no other"
    log = worker.log.read_bytes()
    assert b"durability=replicas" in log or b'"durability": "replicas"' in log, "sends waited for a replica"
    assert_no_password(log, "the worker's log")
    assert runtime.audit.verify().ok


def test_no_send_while_no_replica_acknowledges_its_record(
    topology: SentinelTopology, sentinel_runtime: Runtime, sandbox: SandboxControl
) -> None:
    """With COMMITD_SEND_RECORD_DURABILITY=replicas a send waits for a replica to hold its record. Both replicas are
    frozen (SIGSTOP): WAIT answers that none acknowledged within the 2 s, so the plan fails DurabilityUnavailable
    with nothing bought. Once they run again, the same purchase goes through. (A surviving mutant of `make mutants`
    took "fewer replicas than asked" for enough.)"""
    from worker.celery_app import enqueue
    from worker.execution import run_plan
    from worker.intake import Intake

    # A longer lease than the tests' 4 s: this process's heartbeat thread, starved on a loaded machine while the
    # main thread waits out WAIT's 2 s, must not lose the lease first (the plan would end lease_lost, unsent too).
    runtime = Runtime(Settings(**{**sentinel_runtime.settings.model_dump(), "lease_seconds": 20}))
    intake = Intake(runtime, ACTIONS, enqueue)

    def ris() -> set[str]:
        return {ri["id"] for ri in sandbox.resources(account_id=ACCOUNT, type="reserved-instances")}

    frozen = [r.process for r in topology.replicas if r.process is not None]
    assert len(frozen) == 2
    for process in frozen:
        process.send_signal(signal.SIGSTOP)
    try:
        assert intake.submit_raw(json.dumps(ri_plan("unreplicated", instance_count=1)), "test").outcome == "accepted"
        assert run_plan(runtime, "unreplicated", ACTIONS) == "failed"
    finally:
        for process in frozen:
            process.send_signal(signal.SIGCONT)
    record = runtime.ledger.get("unreplicated")
    assert record is not None and (record.error or {}).get("code") == "DurabilityUnavailable", record.error
    assert "0 of 1 replicas" in record.error["message"] and record.book["sends"] == 0 and ris() == set()

    assert intake.submit_raw(json.dumps(ri_plan("replicated", instance_count=1)), "test").outcome == "accepted"
    assert run_plan(runtime, "replicated", ACTIONS) == "succeeded"
    assert ris() == set(runtime.ledger.get("replicated").result["resource_ids"])  # type: ignore[union-attr]
