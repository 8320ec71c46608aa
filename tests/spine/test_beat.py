"""The schedule (worker/beat.py): real beat processes (``commitd beat``) under redbeat on the private Redis.

Two beats run; only the one holding redbeat's lock sends the renewal scan, once per interval; when it dies the
other takes over after the lock times out and goes on from the schedule's last run in Redis (no scan twice for
one interval). A renewals worker takes the scan from its queue and records the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from tests.spine.conftest import ROOT, WorkerProcess
from worker.beat import beat_config
from worker.renewals import QUEUE, SCAN_TASK
from worker.runtime import Runtime

INTERVAL = 1.0
LOOP = 0.25
LOCK_TIMEOUT = 3.0  # well above a tick under load: the holder keeps it while it lives


class Process(WorkerProcess):
    """A commitd process with its output in a file, stopped (its whole group) at the end of the test: a worker
    process's handling, another command."""

    def __init__(self, env: dict[str, str], name: str, *args: str) -> None:  # not the worker's: another command
        self.log = Path(tempfile.mkstemp(prefix=f"commitd-{name}-", suffix=".log")[1])
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **env},
                                        stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never came; output:\n{self.text[-3000:]}")
            time.sleep(0.05)


@pytest.fixture
def processes(env: dict[str, str], runtime: Runtime) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(name: str, *args: str) -> Process:
        process = Process(env, name, *args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def start_beat(start: Callable[..., Process], name: str) -> Process:
    return start(name, "-m", "worker.renewals_cli", "beat", "--interval", str(INTERVAL), "--loop-interval",
                 str(LOOP), "--lock-timeout", str(LOCK_TIMEOUT))


def sent_scans(runtime: Runtime) -> list[dict[str, Any]]:
    """The scan messages in the renewals queue, oldest first: who sent each (``origin``: gen<pid>@host) and when
    (its expiry, one interval after it was sent)."""
    raw = runtime.redis.lrange(runtime.key("celery", QUEUE), 0, -1)
    headers = [json.loads(message)["headers"] for message in reversed(raw)]  # kombu pushes on the left
    assert {h["task"] for h in headers} <= {SCAN_TASK}
    return headers


def wait_for_scans(runtime: Runtime, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(scans := sent_scans(runtime)) < count:
        assert time.monotonic() < deadline, f"only {len(scans)} scans were sent"
        time.sleep(0.05)
    return scans


def sender(scan: dict[str, Any]) -> int:
    return int(scan["origin"].removeprefix("gen").partition("@")[0])


def test_two_beats_send_each_scan_once_and_the_standby_takes_over(
    runtime: Runtime, processes: Callable[..., Process],
) -> None:
    first = start_beat(processes, "beat-a")
    wait_for_scans(runtime, 1)
    second = start_beat(processes, "beat-b")
    second.wait_for("beat: Starting...")  # then it waits for the lock
    before = len(sent_scans(runtime))
    scans = wait_for_scans(runtime, before + 4)  # several intervals with both beats up
    assert {sender(s) for s in scans} == {first.process.pid}
    assert "beat: Acquired lock" in first.text
    assert "Acquired lock" not in second.text and "Sending due task" not in second.text

    first.kill()  # dies holding the lock: the standby takes over once it times out
    deadline = time.monotonic() + 30
    while second.process.pid not in (senders := [sender(s) for s in sent_scans(runtime)]):
        assert time.monotonic() < deadline and second.process.poll() is None, second.text[-3000:]
        time.sleep(0.05)
    scans = wait_for_scans(runtime, len(senders) + 2)
    senders = [sender(s) for s in scans]
    # One sender at a time: the first's scans, then the second's, never both in one stretch.
    takeover = senders.index(second.process.pid)
    assert senders == [first.process.pid] * takeover + [second.process.pid] * (len(senders) - takeover)
    assert second.text.count("beat: Acquired lock") == 1
    # One scan per interval, across the takeover too: the new holder went on from the last run in Redis.
    sent_at = [datetime.fromisoformat(s["expires"]).timestamp() - INTERVAL for s in scans]
    gaps = [later - earlier for earlier, later in pairwise(sent_at)]
    assert min(gaps) >= INTERVAL * 0.5, gaps


def test_a_scan_the_beat_sends_runs_on_a_renewals_worker(
    runtime: Runtime, processes: Callable[..., Process],
) -> None:
    start_beat(processes, "beat").wait_for("beat: Acquired lock")
    worker = processes("renewals-worker", "-m", "celery", "-A", "worker.renewals", "worker", "-n", "renewals@%h",
                       "-Q", QUEUE, "-c", "1", "-P", "solo", "--without-gossip", "--without-mingle",
                       "--without-heartbeat", "-l", "INFO")
    worker.wait_for("ready.")
    runs_key = runtime.key("renewals", "runs")
    deadline = time.monotonic() + 30
    while runtime.redis.xlen(runs_key) < 2:
        assert time.monotonic() < deadline, worker.text[-3000:]
        time.sleep(0.05)
    [(_, run)] = runtime.redis.xrange(runs_key, count=1)
    # The test registry has no renewal policies: the scan ran and found no account to renew.
    assert (run[b"accounts"], run[b"accepted"], run[b"errors"]) == (b"0", b"0", b"0")
    assert run[b"origin"].decode().endswith(f":{worker.process.pid}")


def test_beat_config_keeps_schedule_and_lock_under_the_prefix(runtime: Runtime) -> None:
    config = beat_config(Settings(key_prefix="acme:"), interval=600, loop_interval=2)
    assert config["redbeat_key_prefix"] == "acme:redbeat:" and config["redbeat_lock_key"] == "acme:redbeat:lock"
    assert config["redbeat_lock_timeout"] == 10  # five loops
    entry = config["beat_schedule"]["commitd-renewals-scan"]
    assert (entry["task"], entry["options"]) == (SCAN_TASK, {"queue": QUEUE, "expires": 600})
    with pytest.raises(ValueError, match="must exceed loop_interval"):
        beat_config(Settings(), loop_interval=5, lock_timeout=5)
