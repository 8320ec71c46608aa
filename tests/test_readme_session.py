"""The README's local session runs as written: its shell block, then the plan it submitted settles."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.spine.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def session_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A local session, step by step", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S)[1]  # type: ignore[index]


def test_the_readme_local_session_buys_once() -> None:
    env = {**os.environ, "REDIS_PORT": str(free_port()), "SANDBOX_PORT": str(free_port())}
    for key in [k for k in env if k.startswith("COMMITD_")]:
        del env[key]  # as a new user's shell: nothing of the test suite's own settings
    script = session_block() + '\necho "PIDS: $(jobs -p | tr "\\n" " ")"\n'
    shell = subprocess.Popen(["bash", "-c", script + "wait"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        assert shell.stdout is not None
        for line in shell.stdout:
            lines.append(line)
            if line.startswith("PIDS:"):
                break
        out = "".join(lines)
        assert "configuration ok" in out, out
        assert "example-ri-purchase-1\tqueued" in out, out
        show = [".venv/bin/commitd", "plans", "show", "example-ri-purchase-1", "--json"]
        session_env = {**env, "COMMITD_REDIS_URL": f"redis://127.0.0.1:{env['REDIS_PORT']}/0",
                       "COMMITD_ACCOUNTS_FILE": "examples/local/accounts.json",
                       "COMMITD_EXTERNAL_ID_LOCAL": "local-external-id"}
        deadline = time.monotonic() + 90
        while True:
            shown = subprocess.run(show, cwd=ROOT, env=session_env, capture_output=True, text=True, timeout=60)
            record = json.loads(shown.stdout) if shown.returncode == 0 else {}
            if record.get("state") in {"succeeded", "failed", "needs_attention"}:
                break
            assert time.monotonic() < deadline, f"the plan did not settle: {record}\n{out}"
            time.sleep(0.5)
        assert record["state"] == "succeeded", record
        assert record["result"]["instance_count"] == 2
        verify = subprocess.run([".venv/bin/commitd", "audit", "verify"], cwd=ROOT, env=session_env,
                                capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr
    finally:
        os.killpg(shell.pid, signal.SIGTERM)
        shell.wait(timeout=30)
        subprocess.run(["redis-cli", "-p", env["REDIS_PORT"], "shutdown", "nosave"], capture_output=True)
