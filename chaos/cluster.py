"""The processes of a chaos run: Redis (a primary, replicas and three sentinels, or one server with AOF), the
sandbox over HTTP, the intake and the Celery workers, each a real process of its own.

The Redis topologies and the worker process are the tests' own (tests/spine/test_redis_sentinel.py,
tests/spine/conftest.py), imported, so the run and the tests start commitd the same way.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import redis

from sandbox.control import SandboxControl
from tests.chaos_plans import Roster
from tests.spine.conftest import EXTERNAL_ID, ROOT, RedisServer, WorkerProcess, free_port
from tests.spine.test_redis_sentinel import SENTINEL_PASSWORD, SentinelTopology
from worker.logs import get_logger

log = get_logger("commitd.chaos")
RedisMode = Literal["sentinel", "aof"]
EXTERNAL_ID_ENV = "COMMITD_CHAOS_EXTERNAL_ID"


@dataclass(frozen=True)
class Timing:
    """commitd's clocks for the run: short, so that a lease lost to a kill or a freeze is taken over in seconds
    (the lease covers the send window: connect + read + margin)."""

    lease_seconds: float = 4.0
    connect_timeout: float = 0.5
    read_timeout: float = 1.0
    send_margin: float = 2.0

    def env(self) -> dict[str, str]:
        return {
            "COMMITD_LEASE_SECONDS": str(self.lease_seconds),
            "COMMITD_WRITE_CONNECT_TIMEOUT": str(self.connect_timeout),
            "COMMITD_WRITE_READ_TIMEOUT": str(self.read_timeout),
            "COMMITD_SEND_MARGIN_SECONDS": str(self.send_margin),
            "COMMITD_CONSISTENCY_DELAY_SECONDS": "0.5",
            "COMMITD_RECONCILE_INTERVAL_SECONDS": "0.3",
            "COMMITD_RETRY_BASE_SECONDS": "0.05",
            "COMMITD_RETRY_MAX_SECONDS": "0.2",
            "COMMITD_STALLED_AFTER": "3",
            "COMMITD_SWEEP_INTERVAL": "0.5",
            "COMMITD_VISIBILITY_TIMEOUT": "30",
        }


class Sandbox:
    """``python -m sandbox`` on a free port, its fault injector seeded with the run's seed."""

    def __init__(self, workdir: Path, seed: int) -> None:
        self.port = free_port()
        self.log = workdir / "sandbox.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sandbox", "--port", str(self.port), "--seed", str(seed),
                 "--external-id", EXTERNAL_ID], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.control = SandboxControl(self.url, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.control.health()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the sandbox did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Intake:
    """``commitd intake`` in a process of its own (restarted by the run if it ever exits)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.restarts = env, log, 0
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen([sys.executable, "-m", "worker.cli", "intake"], cwd=ROOT,
                                    env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def keep_alive(self) -> None:
        if self.process.poll() is not None:
            self.restarts += 1
            log.warning("chaos_intake_restarted", exit_code=self.process.returncode)
            self.process = self._start()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class Redis:
    """The run's Redis: ``sentinel`` (the tests' topology: a primary, two replicas, three sentinels; sends wait
    for a replica) or ``aof`` (one server, appendonly yes and appendfsync always)."""

    def __init__(self, mode: RedisMode) -> None:
        self.mode = mode
        self.topology = SentinelTopology() if mode == "sentinel" else None
        self.single = RedisServer() if mode == "aof" else None

    def env(self) -> dict[str, str]:
        if self.topology is not None:
            # Two replicas: after the failover one is the new primary and the other still counts for WAIT.
            return {"COMMITD_REDIS_URL": self.topology.url, "COMMITD_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
                    "COMMITD_SEND_RECORD_DURABILITY": "replicas", "COMMITD_DURABILITY_TIMEOUT_MS": "2000"}
        assert self.single is not None
        return {"COMMITD_REDIS_URL": self.single.url, "COMMITD_SEND_RECORD_DURABILITY": "auto",
                "COMMITD_DURABILITY_TIMEOUT_MS": "500"}

    def fail(self) -> dict[str, Any]:
        """SIGKILL the primary once: the sentinels promote a replica (sentinel), or the server restarts from its
        AOF (aof). Returns what happened, for the report."""
        started = time.monotonic()
        if self.topology is not None:
            old = self.topology.primary.port
            self.topology.primary.kill()
            new = _wait(lambda: (port := self.topology.master_port()) != old and port,  # type: ignore[union-attr]
                        "the sentinels to promote a replica", 60)
            return {"kind": "failover", "old_port": old, "new_port": new,
                    "seconds": round(time.monotonic() - started, 2)}
        assert self.single is not None
        self.single.kill()
        time.sleep(0.5)
        self.single.start()
        return {"kind": "aof_restart", "port": self.single.port, "seconds": round(time.monotonic() - started, 2)}

    def stop(self) -> None:
        if self.topology is not None:
            self.topology.stop()
        if self.single is not None:
            self.single.stop()


def _wait(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class Workers:
    """The Celery workers: ``count`` processes, each SIGKILLed, frozen and replaced as the run goes."""

    def __init__(self, env: dict[str, str], count: int, concurrency: int) -> None:
        self.env, self.concurrency = env, concurrency
        self._numbers = itertools.count(1)  # next() is atomic: the killer and the supervisor both start workers
        self.started = 0
        self.live: list[WorkerProcess] = []
        self.gone: list[WorkerProcess] = []
        self.died_alone = 0
        for _ in range(count):
            self.start()

    def start(self) -> WorkerProcess:
        for attempt in range(3):
            self.started = next(self._numbers)
            try:
                worker = WorkerProcess(self.env, f"chaos-{self.started}", self.concurrency)
            except RuntimeError:  # too slow to start on a loaded machine: once more
                if attempt == 2:
                    raise
                continue
            self.live.append(worker)
            return worker
        raise AssertionError("unreachable")

    def kill(self, worker: WorkerProcess) -> None:
        worker.kill()
        self.live.remove(worker)
        self.gone.append(worker)

    def keep_alive(self) -> None:
        """A worker that exited without our SIGKILL (it should not) is counted and replaced."""
        for worker in [w for w in self.live if w.process.poll() is not None]:
            self.died_alone += 1
            log.warning("chaos_worker_died", log=str(worker.log), exit_code=worker.process.returncode)
            self.live.remove(worker)
            self.gone.append(worker)
            self.start()

    def stop(self, keep_logs: bool) -> None:
        for worker in self.live:
            worker.stop()
        for worker in self.gone:
            worker.stop()  # closes its log file (the process is gone already)
        if not keep_logs:
            for worker in self.live + self.gone:
                worker.log.unlink(missing_ok=True)


def write_registry(workdir: Path, roster: Roster) -> Path:
    path = workdir / "accounts.json"
    path.write_text(json.dumps(roster.registry(EXTERNAL_ID_ENV), indent=1))
    return path


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="commitd-chaos-"))
