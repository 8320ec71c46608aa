"""Producers are not trusted: redis-server runs with the shipped ACL file (deploy/redis/users.acl) and
- a producer can XADD a plan to the stream and nothing else: not read it back, not touch the ledger or the audit;
- anonymous connections can PING (health checks) and nothing else;
- a real Celery worker and the intake, as ``commitd-worker``, carry the plan to ``succeeded``;
- an operator, as ``commitd-operator``, runs the CLI (plans list/show, audit verify) but cannot reconfigure Redis.
The example passwords are the ones the shipped file's hashes were made from (docs/deploy.md says how to change them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from tests.spine.conftest import ROOT, RedisServer, ri_plan, wait_for_state

ACL = ROOT / "deploy" / "redis" / "users.acl"
CONF = ROOT / "deploy" / "redis" / "commitd.conf"
PASSWORDS = {user: f"example-{user.removeprefix('commitd-')}-password-change-me"
             for user in ("commitd-producer", "commitd-worker", "commitd-operator")}
ADMIN = ("test-admin", "test-admin-password")  # added by this test only: it flushes between tests


def url(port: int, user: str) -> str:
    return f"redis://{user}:{PASSWORDS[user]}@127.0.0.1:{port}/0"


class AclRedis(RedisServer):
    """The private redis-server of tests/spine/conftest.py, started with the shipped configuration and ACL file
    (plus an admin for the test's own flushes)."""

    def start(self) -> None:
        acl = Path(self.dir) / "users.acl"
        acl.write_text(ACL.read_text() + f"user {ADMIN[0]} on >{ADMIN[1]} ~* &* +@all\n")
        self.process = subprocess.Popen(
            ["redis-server", str(CONF), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", self.dir, "--aclfile", str(acl)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Up within 4 s, or the ACL file (or the configuration) was refused and redis-server exited.
        for attempt in Retrying(stop=stop_after_delay(4), wait=wait_fixed(0.02), reraise=True,
                                retry=retry_if_exception_type(redis.ConnectionError)):
            with attempt:
                redis.Redis(port=self.port).ping()

    @property
    def url(self) -> str:  # the runtime fixture flushes Redis through this URL
        return f"redis://{ADMIN[0]}:{ADMIN[1]}@127.0.0.1:{self.port}/0"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = AclRedis()
    yield server
    server.stop()


@pytest.fixture
def env(env: dict[str, str], redis_server: RedisServer) -> dict[str, str]:
    """The daemon (the runtime here, the intake, the worker processes) runs as commitd-worker."""
    env["COMMITD_REDIS_URL"] = url(redis_server.port, "commitd-worker")
    os.environ["COMMITD_REDIS_URL"] = env["COMMITD_REDIS_URL"]
    return env


def client(server: RedisServer, user: str) -> redis.Redis:
    return redis.Redis.from_url(url(server.port, user))


def cli(env: dict[str, str], user: str, *args: str) -> subprocess.CompletedProcess[str]:
    server_url = env["COMMITD_REDIS_URL"].replace("commitd-worker", user).replace(
        PASSWORDS["commitd-worker"], PASSWORDS[user])
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env, "COMMITD_REDIS_URL": server_url}, timeout=60)


def test_the_shipped_configuration_holds(redis_server: RedisServer) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    assert admin.config_get("appendonly") == {"appendonly": "yes"}
    assert admin.config_get("appendfsync") == {"appendfsync": "always"}
    assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert {"default", "commitd-producer", "commitd-worker", "commitd-operator"} <= set(admin.acl_users())


def test_a_producer_can_only_append_plans(redis_server: RedisServer, runtime: Any) -> None:
    producer = client(redis_server, "commitd-producer")
    assert producer.ping()
    producer.xadd("commitd:plans", {"plan": "{}"})
    runtime.redis.set("commitd:plan:someone", "x")
    for denied in (lambda: producer.xrange("commitd:plans"), lambda: producer.get("commitd:plan:someone"),
                   lambda: producer.set("commitd:plan:someone", "y"), lambda: producer.delete("commitd:plans"),
                   lambda: producer.xadd("commitd:audit", {"forged": "1"}), lambda: producer.xtrim("commitd:plans", 0),
                   lambda: producer.xadd("other:plans", {"plan": "{}"}), lambda: producer.keys("*"),
                   lambda: producer.flushall(), lambda: producer.config_get("*"),
                   lambda: producer.eval("return 1", 0)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            denied()
    assert runtime.redis.get("commitd:plan:someone") == b"x"
    anonymous = redis.Redis(port=redis_server.port)
    assert anonymous.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        anonymous.xadd("commitd:plans", {"plan": "{}"})


def test_worker_and_operator_run_a_plan_end_to_end(redis_server: RedisServer, env: dict[str, str], runtime: Any,
                                                   intake_loop: Any, start_worker: Any) -> None:
    start_worker("acl-worker")
    plan = ri_plan("acl-plan-1")
    client(redis_server, "commitd-producer").xadd("commitd:plans", {"plan": json.dumps(plan)})
    record = wait_for_state(runtime, "acl-plan-1", {"succeeded", "failed", "needs_attention"})
    assert record.state.value == "succeeded", record.error
    shown = cli(env, "commitd-operator", "plans", "show", "acl-plan-1", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["state"] == "succeeded"
    listed = cli(env, "commitd-operator", "plans", "list", "--state", "succeeded")
    assert listed.returncode == 0 and "acl-plan-1" in listed.stdout, listed.stderr
    verified = cli(env, "commitd-operator", "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    operator = client(redis_server, "commitd-operator")
    for denied in (lambda: operator.flushall(), lambda: operator.config_set("appendonly", "no"),
                   lambda: operator.acl_setuser("commitd-producer", enabled=True, commands=["+@all"]),
                   lambda: operator.get("elsewhere:key")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            denied()
