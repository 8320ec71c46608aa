"""Fixtures for the spine: a private redis-server, settings and runtime on it, real Celery worker processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from config.settings import Settings
from sandbox.control import SandboxControl
from sandbox.server import SandboxServer
from tasks.families import FAMILIES
from worker.runtime import Runtime, set_runtime

T = TypeVar("T")

ACCOUNT = "111122223333"
TAGGING_ACCOUNT = "555566667777"  # granted the extra permission ec2:CreateTags
RESTRICTED_ACCOUNT = "777788889999"  # allowed_actions excludes the RI purchase
ORG_ACCOUNT = "222233334444"  # grants the optional organizations block (a management account)
ORG_BUYER_ACCOUNT = "888899990000"  # grants it too: the buying organization's management account
EXTERNAL_ID = "ext-id-for-tests-7f3a"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server process on a free port, which tests may kill and restart."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)", pytrace=False)
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="commitd-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always",
             "--dir", self.dir, "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def accounts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "accounts.json"
    path.write_text(
        json.dumps(
            {
                "accounts": [
                    {
                        "account_id": ACCOUNT,
                        "name": "acme-prod",
                        "role_arn": f"arn:aws:iam::{ACCOUNT}:role/commitd",
                        "external_id_env": "COMMITD_TEST_EXTERNAL_ID",
                        "limits": {"max_upfront_usd_per_plan": "250000",
                                   "max_commitment_usd_per_plan": "5000000"},
                    },
                    {
                        "account_id": TAGGING_ACCOUNT,
                        "name": "acme-tagging",
                        "role_arn": f"arn:aws:iam::{TAGGING_ACCOUNT}:role/commitd",
                        "external_id_env": "COMMITD_TEST_EXTERNAL_ID",
                        "extra_permissions": ["ec2:CreateTags", "iam:PassRole",
                                              "es:PurchaseReservedInstanceOffering"],
                    },
                    {
                        "account_id": ORG_ACCOUNT,
                        "name": "acme-management",
                        "role_arn": f"arn:aws:iam::{ORG_ACCOUNT}:role/commitd",
                        "external_id_env": "COMMITD_TEST_EXTERNAL_ID",
                        "optional_blocks": ["organizations"],
                    },
                    {
                        "account_id": ORG_BUYER_ACCOUNT,
                        "name": "buyer-management",
                        "role_arn": f"arn:aws:iam::{ORG_BUYER_ACCOUNT}:role/commitd",
                        "external_id_env": "COMMITD_TEST_EXTERNAL_ID",
                        "optional_blocks": ["organizations"],
                    },
                    {
                        "account_id": RESTRICTED_ACCOUNT,
                        "name": "modify-only",
                        "role_arn": f"arn:aws:iam::{RESTRICTED_ACCOUNT}:role/commitd",
                        "external_id_env": "COMMITD_TEST_EXTERNAL_ID",
                        "allowed_actions": ["ec2:ModifyReservedInstances"],
                    },
                    {
                        "account_id": "444455556666",
                        "name": "trial",
                        "role_arn": "arn:aws:iam::444455556666:role/commitd-trial",
                        "external_id_env": "COMMITD_TEST_EXTERNAL_ID",
                        "read_only": True,
                    },
                ]
            }
        )
    )
    return path


@pytest.fixture
def env(redis_server: RedisServer, sandbox_server: SandboxServer, accounts_file: Path) -> Iterator[dict[str, str]]:
    """The environment a worker process, the CLI and the settings of this test use."""
    values = {
        "COMMITD_REDIS_URL": redis_server.url,
        "COMMITD_AWS_ENDPOINT_URL": sandbox_server.url,
        "COMMITD_ACCOUNTS_FILE": str(accounts_file),
        "COMMITD_LEASE_SECONDS": "4",
        "COMMITD_WRITE_CONNECT_TIMEOUT": "0.5",
        "COMMITD_WRITE_READ_TIMEOUT": "1",
        "COMMITD_SEND_MARGIN_SECONDS": "2",
        "COMMITD_CONSISTENCY_DELAY_SECONDS": "0.5",
        "COMMITD_RECONCILE_INTERVAL_SECONDS": "0.3",
        "COMMITD_DURABILITY_TIMEOUT_MS": "500",
        "COMMITD_RETRY_BASE_SECONDS": "0.05",
        "COMMITD_RETRY_MAX_SECONDS": "0.2",
        "COMMITD_STALLED_AFTER": "3",
        "COMMITD_SWEEP_INTERVAL": "0.5",
        "COMMITD_VISIBILITY_TIMEOUT": "30",
        "COMMITD_LOG_FORMAT": "json",
        "COMMITD_TEST_EXTERNAL_ID": EXTERNAL_ID,
        "AWS_ACCESS_KEY_ID": "commitd-base",
        "AWS_SECRET_ACCESS_KEY": "commitd-base",
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield values
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def runtime(env: dict[str, str], redis_server: RedisServer, sandbox: SandboxControl) -> Iterator[Runtime]:
    """A runtime on a flushed private Redis and a reset sandbox that expects the account's ExternalId."""
    from worker.celery_app import app, configure

    redis.Redis.from_url(redis_server.url).flushall()
    sandbox.set_iam(enforce=False, policy=None, external_id=EXTERNAL_ID)
    settings = Settings()  # from the environment above
    configure(app, settings)
    runtime = Runtime(settings)
    set_runtime(runtime)
    yield runtime
    runtime.redis.close()


class WorkerProcess:
    def __init__(self, env: dict[str, str], name: str, concurrency: int = 1,
                 extra_env: dict[str, str] | None = None, log_level: str = "INFO") -> None:
        self.log = Path(tempfile.mkstemp(prefix=f"commitd-worker-{name}-", suffix=".log")[1])
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-n", f"{name}@%h",
             "-c", str(concurrency), "-P", "prefork", "-Q", ",".join(f.queue for f in FAMILIES),
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", log_level],
            cwd=ROOT,
            env={**os.environ, **env, **(extra_env or {})},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if b"ready." in self.log.read_bytes():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"celery worker {name} did not start:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and its pool children)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()


@pytest.fixture
def start_worker(env: dict[str, str], runtime: Runtime) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(name: str = "w1", concurrency: int = 1, log_level: str = "INFO", **extra_env: str) -> WorkerProcess:
        worker = WorkerProcess(env, name, concurrency, extra_env, log_level)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def intake(runtime: Runtime) -> Any:
    from tasks import ACTIONS
    from worker.celery_app import enqueue
    from worker.intake import Intake

    return Intake(runtime, ACTIONS, enqueue)


@pytest.fixture
def intake_loop(intake: Any) -> Iterator[Any]:
    """The intake daemon (stream reader and sweeper) in a thread of this test process."""
    stop = threading.Event()
    thread = threading.Thread(target=intake.run_forever, args=(stop, "test-intake"), daemon=True)
    thread.start()
    yield intake
    stop.set()
    thread.join(timeout=5)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class IntakeProcess:
    """`commitd intake` in a process group of its own, logging to a file."""

    def __init__(self, env: dict[str, str]) -> None:
        self.log = Path(tempfile.mkstemp(prefix="commitd-intake-", suffix=".log")[1])
        self._log = self.log.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "worker.cli", "intake"], cwd=ROOT,
                                        env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_for(lambda: b"commitd intake reading" in self.log.read_bytes() or self.process.poll() is not None,
                 30, "the intake to start")
        if self.process.poll() is not None:
            raise RuntimeError(f"the intake exited:\n{self.log.read_text()[-3000:]}")

    def rss(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def wait_for_state(runtime: Runtime, plan_id: str, states: set[str], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        record = runtime.ledger.get(plan_id)
        if record is not None and record.state.value in states:
            return record
        time.sleep(0.1)
    raise AssertionError(f"plan {plan_id} did not reach {states}; last: {record.model_dump() if record else None}")


def eventually(check: Callable[[], T | None], what: str, timeout: float = 30) -> T:
    """Poll ``check`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def wait_budget_settled(runtime: Runtime, plan_id: str, timeout: float = 15) -> None:
    """Wait until the plan's budget hold is released (gone) or turned used. A worker settles the hold right after it
    writes the plan's final state, in a second Redis call: a test that saw the state waits for this step instead of
    racing it (on a loaded machine the worker may not have taken it yet)."""
    key = runtime.key("budget_hold", plan_id)

    def settled() -> bool:
        hold = runtime.redis.get(key)
        return hold is None or bytes(hold).endswith(b"|used")

    eventually(settled, f"plan {plan_id}'s budget hold to be settled", timeout)


def ri_plan(plan_id: str, **params: Any) -> dict[str, Any]:
    base = {
        "instance_type": "m5.large",
        "offering_class": "standard",
        "offering_type": "No Upfront",
        "duration_years": 1,
        "scope": "Region",
        "instance_count": 2,
        "max_upfront_usd": "0",
        "max_hourly_usd": "0.10",
    }
    base.update(params)
    return {
        "plan_id": plan_id,
        "action": "ec2:PurchaseReservedInstancesOffering",
        "account_id": ACCOUNT,
        "region": "us-east-1",
        "params": base,
        "requested_by": "planner@test",
        "trigger": "queued",
    }
