"""No log level prints a secret: a worker at DEBUG carries out a plan, and neither its output nor Redis holds the
ExternalId or the credentials AssumeRole returned (botocore prints both at DEBUG unless it is kept quiet)."""

from __future__ import annotations

import json
from typing import Any

from sandbox.control import SandboxControl
from tests.spine.conftest import EXTERNAL_ID, ri_plan, wait_for_state
from worker.runtime import Runtime

SECRET_MARKERS = (EXTERNAL_ID, "SecretAccessKey", "SessionToken", "aws_secret_access_key")


def redis_dump(runtime: Runtime) -> str:
    """Every value in the test's Redis, as text."""
    r = runtime.redis
    parts: list[str] = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "string":
            parts.append(str(r.get(key)))
        elif kind == "hash":
            parts.append(str(r.hgetall(key)))
        elif kind == "list":
            parts.append(str(r.lrange(key, 0, -1)))
        elif kind == "set":
            parts.append(str(r.smembers(key)))
        elif kind == "zset":
            parts.append(str(r.zrange(key, 0, -1)))
        elif kind == "stream":
            parts.append(str(r.xrange(key)))
    return "\n".join(parts)


def test_a_worker_at_debug_prints_no_secret(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    worker = start_worker(log_level="DEBUG", COMMITD_LOG_LEVEL="DEBUG")
    assert intake.submit_raw(json.dumps(ri_plan("debug-secrets")), "test").outcome == "accepted"
    record = wait_for_state(runtime, "debug-secrets", {"succeeded", "failed", "needs_attention"})
    assert record.state.value == "succeeded", record.error
    worker.stop()
    output = worker.log.read_text(errors="replace")
    assert "| Worker: Preparing bootsteps." in output, "the worker really logged at DEBUG"
    assert "assume_role" in output or "AssumeRole" in output, "the worker's log covers the AssumeRole call"
    stored = redis_dump(runtime)
    for marker in SECRET_MARKERS:
        assert marker not in output, f"{marker} in the worker's output"
        assert marker not in stored, f"{marker} in Redis"
