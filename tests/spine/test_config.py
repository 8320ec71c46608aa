"""Configuration: ``commitd config show`` with secrets masked, errors that name the setting, and the ExternalId
kept out of every log, audit entry and ledger record after a real purchase."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox.control import SandboxControl
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID, ROOT, ri_plan, wait_for_state
from worker.runtime import Runtime


def commitd(env: dict[str, str], *args: str, drop: tuple[str, ...] = (), timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in {**os.environ, **env}.items() if k not in drop}
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=timeout)


# --- config show ---------------------------------------------------------------------------------------------
def test_config_show_prints_the_effective_configuration(env: dict[str, str]) -> None:
    result = commitd(env, "config", "show")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    settings = data["settings"]
    assert settings["redis_url"] == env["COMMITD_REDIS_URL"]
    assert settings["lease_seconds"] == 4.0 and settings["key_prefix"] == "commitd:"
    assert settings["max_plan_bytes"] == 64 * 1024 and settings["visibility_timeout"] == 30
    assert settings["accounts_file"] == env["COMMITD_ACCOUNTS_FILE"]
    accounts = {a["account_id"]: a for a in data["accounts"]}
    assert accounts[ACCOUNT]["role_arn"] == f"arn:aws:iam::{ACCOUNT}:role/commitd"
    assert accounts[ACCOUNT]["limits"]["max_upfront_usd_per_plan"] == "250000"
    assert accounts[ACCOUNT]["external_id"] == "***"
    assert accounts["444455556666"]["external_id"] == "***" and accounts["444455556666"]["read_only"] is True
    assert EXTERNAL_ID not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("url", "secret", "shown"),
    [
        ("redis://:s3cret@127.0.0.1:1/0", "s3cret", "redis://***@127.0.0.1:1/0"),
        ("rediss://admin:s3cret@redis.internal:6380/2", "s3cret", "rediss://***@redis.internal:6380/2"),
        ("redis://127.0.0.1:1/0?password=s3cret&socket_timeout=5", "s3cret", None),
        ("redis://:pa#ss@127.0.0.1:1/0", "pa#ss", "redis://***@127.0.0.1:1/0"),
        ("redis://user:pa/ss@127.0.0.1:1/0", "pa/ss", "redis://***@127.0.0.1:1/0"),
        ("redis://:p@ss/w#rd@127.0.0.1:1/0", "ss/w#rd", "redis://***@127.0.0.1:1/0"),
    ],
    ids=["password-only", "user-and-password", "password-in-query", "hash-in-password", "slash-in-password",
         "at-slash-hash-in-password"],
)
def test_config_show_masks_the_redis_password(env: dict[str, str], url: str, secret: str, shown: str | None) -> None:
    result = commitd({**env, "COMMITD_REDIS_URL": url}, "config", "show")  # no connection is made
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    masked = json.loads(result.stdout)["settings"]["redis_url"]
    if shown is not None:
        assert masked == shown
    else:
        assert masked == "redis://127.0.0.1:1/0?password=***&socket_timeout=5"


def test_config_show_never_prints_an_external_id_from_a_file(env: dict[str, str], tmp_path: Path) -> None:
    secret_file = tmp_path / "external-id"
    secret_file.write_text("file-secret-9c2e\n")
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps({"accounts": [{
        "account_id": "777788889999", "role_arn": "arn:aws:iam::777788889999:role/commitd",
        "external_id_file": str(secret_file), "allowed_actions": ["ec2:PurchaseReservedInstancesOffering"]}]}))
    result = commitd({**env, "COMMITD_ACCOUNTS_FILE": str(accounts)}, "config", "show")
    assert result.returncode == 0, result.stderr
    assert "file-secret-9c2e" not in result.stdout + result.stderr
    [account] = json.loads(result.stdout)["accounts"]
    assert account["external_id"] == "***"
    assert account["allowed_actions"] == ["ec2:PurchaseReservedInstancesOffering"]


def test_settings_from_a_toml_file_and_env_overrides(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "commitd.toml"
    config.write_text('lease_seconds = 17.5\nmax_attempts = 9\nkey_prefix = "acme:"\n')
    result = commitd({**env, "COMMITD_CONFIG_FILE": str(config)}, "config", "show")
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)["settings"]
    assert settings["max_attempts"] == 9 and settings["key_prefix"] == "acme:"
    assert settings["lease_seconds"] == 4.0, "the environment (COMMITD_LEASE_SECONDS) wins over the file"


# --- configuration errors ------------------------------------------------------------------------------------
BAD_SETTINGS = [
    ({"COMMITD_LEASE_SECONDS": "-1"}, "COMMITD_LEASE_SECONDS"),
    ({"COMMITD_MAX_ATTEMPTS": "lots"}, "COMMITD_MAX_ATTEMPTS"),
    ({"COMMITD_LOG_FORMAT": "xml"}, "COMMITD_LOG_FORMAT"),
    ({"COMMITD_KEY_PREFIX": "has space"}, "COMMITD_KEY_PREFIX"),
    ({"COMMITD_ACCOUNTS_FILE": "/nonexistent/accounts.json"}, "COMMITD_ACCOUNTS_FILE"),
    ({"COMMITD_CONFIG_FILE": "/nonexistent/commitd.toml"}, "COMMITD_CONFIG_FILE"),
]


@pytest.mark.parametrize(("bad", "name"), BAD_SETTINGS, ids=[n for _, n in BAD_SETTINGS])
def test_a_bad_setting_stops_with_its_name(env: dict[str, str], bad: dict[str, str], name: str) -> None:
    commands: list[tuple[str, ...]] = [("config", "show"), ("plans", "list")]
    if name != "COMMITD_ACCOUNTS_FILE":
        commands.append(("schema",))  # it reads the settings (through the Celery app), not the accounts
    for args in commands:
        result = commitd({**env, **bad}, *args)
        assert result.returncode != 0, (args, result.stdout)
        assert name in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)


def test_the_daemons_stop_at_start_on_a_bad_setting(env: dict[str, str]) -> None:
    for args in (("intake",), ("worker", "--pool", "solo")):
        result = commitd({**env, "COMMITD_LEASE_SECONDS": "-1"}, *args, timeout=30)
        assert result.returncode != 0 and "COMMITD_LEASE_SECONDS" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_bad_files_name_the_setting(env: dict[str, str], tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("lease_seconds = -3\n")
    result = commitd({**env, "COMMITD_CONFIG_FILE": str(toml)}, "config", "show", drop=("COMMITD_LEASE_SECONDS",))
    assert result.returncode != 0 and "COMMITD_LEASE_SECONDS" in result.stderr

    not_json = tmp_path / "accounts.json"
    not_json.write_text("{accounts: nope")
    result = commitd({**env, "COMMITD_ACCOUNTS_FILE": str(not_json)}, "plans", "list")
    assert result.returncode != 0 and "COMMITD_ACCOUNTS_FILE" in result.stderr and "not JSON" in result.stderr

    bad_account = tmp_path / "accounts2.json"
    bad_account.write_text(json.dumps({"accounts": [{"account_id": "12", "role_arn": "nope"}]}))
    result = commitd({**env, "COMMITD_ACCOUNTS_FILE": str(bad_account)}, "config", "show")
    assert result.returncode != 0 and "COMMITD_ACCOUNTS_FILE" in result.stderr and "account_id" in result.stderr


def test_config_check_names_what_the_daemon_would_refuse_to_start_on(env: dict[str, str]) -> None:
    ok = commitd(env, "config", "check")
    assert ok.returncode == 0 and "configuration ok" in ok.stdout, ok.stderr
    missing = commitd(env, "config", "check", drop=("COMMITD_TEST_EXTERNAL_ID",))
    assert missing.returncode == 1
    assert "COMMITD_TEST_EXTERNAL_ID is not set" in missing.stderr and ACCOUNT in missing.stderr
    shown = commitd(env, "config", "show", "--check", drop=("COMMITD_TEST_EXTERNAL_ID",))
    assert shown.returncode == 1 and json.loads(shown.stdout)["accounts"], "the configuration is still shown"
    unreachable = commitd({**env, "COMMITD_REDIS_URL": "redis://:pa#ss@127.0.0.1:1/0",
                           "COMMITD_REDIS_CONNECT_TIMEOUT": "0.5"}, "config", "check")
    assert unreachable.returncode == 1 and "redis: cannot reach it" in unreachable.stderr
    assert "pa#ss" not in unreachable.stdout + unreachable.stderr


def test_a_missing_external_id_variable_stops_the_daemon(env: dict[str, str]) -> None:
    result = commitd(env, "plans", "list", drop=("COMMITD_TEST_EXTERNAL_ID",))
    assert result.returncode != 0
    assert "COMMITD_TEST_EXTERNAL_ID" in result.stderr and ACCOUNT in result.stderr


# --- secrets after a real purchase ---------------------------------------------------------------------------
def _dump_redis(runtime: Runtime) -> bytes:
    """Every key and value in the private Redis, whatever its type."""
    r = runtime.redis
    out = []
    for key in r.keys("*"):
        kind = r.type(key).decode()
        out.append(key)
        if kind == "string":
            out.append(r.get(key) or b"")
        elif kind == "hash":
            out.extend(b"%s=%s" % kv for kv in r.hgetall(key).items())
        elif kind == "list":
            out.extend(r.lrange(key, 0, -1))
        elif kind == "set":
            out.extend(r.smembers(key))
        elif kind == "zset":
            out.extend(r.zrange(key, 0, -1))
        elif kind == "stream":
            for _, fields in r.xrange(key):
                out.extend(b"%s=%s" % kv for kv in fields.items())
    return b"\n".join(out)


def test_external_id_appears_nowhere_after_a_purchase(runtime: Runtime, sandbox: SandboxControl, intake: Any,
                                                       start_worker: Any) -> None:
    # The runtime fixture makes the sandbox's AssumeRole demand EXTERNAL_ID: a purchase proves it was sent.
    worker = start_worker()
    result = intake.submit_raw(json.dumps(ri_plan("secret-1")), "test")
    assert result.outcome == "accepted", result
    record = wait_for_state(runtime, "secret-1", {"succeeded", "failed", "needs_attention"})
    assert record.state.value == "succeeded", record.error
    worker.stop()

    secret = EXTERNAL_ID.encode()
    audit = b"\n".join(f[b"data"] for _, f in runtime.redis.xrange(runtime.key("audit")))
    assert b"PurchaseReservedInstancesOffering" in audit and b'"event":"aws_call"' in audit
    assert secret not in audit
    log = worker.log.read_bytes()
    assert b"role_assumed" in log and b"secret-1" in log, "the worker log is the right one"
    assert secret not in log
    for plan_id in runtime.ledger.ids():
        assert secret not in runtime.redis.hget(runtime.key("plan", plan_id), "record")
    assert secret not in _dump_redis(runtime)
    assert runtime.audit.verify().ok


def test_assume_role_is_an_audited_aws_call(runtime: Runtime, sandbox: SandboxControl) -> None:
    from tasks.families import EC2_RESERVED_INSTANCES

    account = runtime.accounts.get(ACCOUNT)
    runtime.sessions.client(account, "us-east-1", "ec2", EC2_RESERVED_INSTANCES, "read", "assume-1",
                            ["ec2:DescribeReservedInstances"])
    calls = [r for r in runtime.audit.records() if r.get("event") == "aws_call"]
    assert [c["operation"] for c in calls] == ["assume_role"]
    assert calls[0]["params"]["ExternalId"] == "[redacted]"
