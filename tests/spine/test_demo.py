"""`commitd demo` end to end, as a user runs it: no Redis answers, so it starts (and stops) its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.spine.conftest import ROOT, free_port


@pytest.mark.timeout(150)
def test_demo_runs_the_whole_path_with_a_private_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "COMMITD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "started a private redis-server" in out
    assert "plan id" in out and "expected" in out and "actual" in out
    for plan_id in ("demo-regional-no-upfront", "demo-zonal-all-upfront", "demo-above-ceiling", "demo-dry-run",
                    "demo-invalid-count", "demo-throttled-once"):
        assert plan_id in out
    assert "PriceAboveCeiling" in out
    assert "they match" in out
    assert "audit trail intact" in out
    assert "demo passed" in out
