"""The pieces of the end-to-end bench: a private redis-server, the sandbox in its own process, commitd's intake and a
Celery worker as separate processes (as deployed), and the figures read from them (CPU time and RSS from /proc,
Redis commands from INFO commandstats, round trips from MONITOR)."""

from __future__ import annotations

import json
import os
import re
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
from typing import Any

import redis

from sandbox.control import SandboxControl

ROOT = Path(__file__).resolve().parents[2]
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
ALL_QUEUES = "commitd.ec2_reserved_instances"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


class RedisServer:
    """appendfsync always: RI purchases have no client token, so each send record is made durable first
    (docs/exactly-once.md); Redis 7.0 has no WAITAOF."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server is needed (apt-get install redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="commitd-bench-redis-")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", self.dir, "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, client_name="bench")
        wait_until(self._up, 10, "redis-server")

    def _up(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.process.pid)

    def commands(self) -> dict[str, int]:
        """Commands executed since the last reset (INFO commandstats counts those inside scripts too)."""
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in self.client.info("commandstats").items()}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Sandbox:
    """The sandbox in a child process, so that its CPU time and memory are not commitd's."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "sandbox", "--port", "0"], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        match = re.search(r"(http://\S+)", self.process.stdout.readline())
        if not match:
            raise RuntimeError("the sandbox did not start")
        self.url = match.group(1)
        self.control = SandboxControl(self.url)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.process.pid)

    def prepare(self, latency_ms: int) -> None:
        self.control.reset()
        self.control.clear_faults()
        if latency_ms:
            self.control.add_fault("*", "latency", probability=1.0, latency_ms=latency_ms)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def accounts_file(directory: Path, count: int) -> tuple[Path, list[str]]:
    ids = [f"{300000000000 + n}" for n in range(count)]
    path = directory / f"accounts-{count}.json"
    path.write_text(json.dumps({"accounts": [
        {"account_id": i, "role_arn": f"arn:aws:iam::{i}:role/commitd"} for i in ids]}))
    return path, ids


# The No Upfront offerings of one region (48): plans rotate over them, because one plan at a time may hold an
# offering's signature in an account and region (docs/exactly-once.md, step 3).
OFFERINGS = [
    {"instance_type": t, "product_description": p, "offering_class": c, "duration_years": y, **scope}
    for t in ("m5.large", "m5.xlarge", "c5.large", "r5.large", "t3.medium")
    for p in (("Linux/UNIX", "Windows") if t == "m5.large" else ("Linux/UNIX",))
    for c, y in (("standard", 1), ("standard", 3), ("convertible", 1), ("convertible", 3))
    for scope in ([{"scope": "Region"}] + ([{"scope": "Availability Zone", "availability_zone": z}
                                           for z in ("a", "b")] if c == "standard" else []))
]


def ri_plan(plan_id: str, account_id: str, region: str, n: int) -> dict[str, Any]:
    offering = dict(OFFERINGS[n % len(OFFERINGS)])
    if "availability_zone" in offering:
        offering["availability_zone"] = region + str(offering["availability_zone"])
    return {
        "plan_id": plan_id, "action": "ec2:PurchaseReservedInstancesOffering", "account_id": account_id,
        "region": region, "requested_by": "bench", "trigger": "queued",
        "params": {**offering, "offering_type": "No Upfront", "instance_count": 1, "max_upfront_usd": "0",
                   "max_hourly_usd": "1.00"},
    }


def proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB / 1024
    except OSError:
        return 0.0


class Daemon:
    """A commitd process (intake or a worker) in its own process group: its CPU time is the group's."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], ready: bytes) -> None:
        self.log = Path(tempfile.mkstemp(prefix=f"commitd-bench-{name}-", suffix=".log")[1])
        self._log = self.log.open("wb")
        self.process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: ready in self.log.read_bytes() or self.process.poll() is not None, 60, f"{name} to start",
                   0.1)
        if self.process.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{self.log.read_text()[-3000:]}")

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(pid) for pid in group_pids(self.process.pid))

    def rss_mb(self) -> dict[int, float]:
        return {pid: rss_mb(pid) for pid in group_pids(self.process.pid)}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        self.log.unlink(missing_ok=True)


def celery_worker(env: dict[str, str], app: str, pool: str, concurrency: int, queues: str) -> Daemon:
    return Daemon(f"worker-{pool}-{concurrency}", [
        sys.executable, "-m", "celery", "-A", app, "worker", "-P", pool, "-c", str(concurrency), "-Q", queues,
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO", "-n", f"bench-{pool}@%h"],
        env, b"ready.")


def intake(env: dict[str, str]) -> Daemon:
    return Daemon("intake", [sys.executable, "-m", "worker.cli", "intake"], env, b"commitd intake reading")


class Monitor:
    """Every command Redis runs, from MONITOR: per client connection, and those a script runs (``lua``).
    A round trip is one request: a command, a script call, a MULTI ... EXEC block, or a pipeline. Redis runs a
    pipeline's commands one after another as it reads them from the client's buffer, so a command that follows one
    of the same client's, with no other client's in between, within PIPELINE_GAP seconds, is counted in the same
    round trip (a new request from a Python client over loopback takes longer than that to arrive)."""

    LINE = re.compile(r'^([\d.]+) \[\d+ ([^\]]+)\] "([^"]+)"(?: "([^"]*)")?')
    PIPELINE_GAP = 0.00003

    def __init__(self, port: int) -> None:
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.sendall(b"MONITOR\r\n")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            *complete, buffer = buffer.split(b"\r\n")
            self.lines.extend(line[1:].decode(errors="replace") for line in complete if line.startswith(b"+"))

    @staticmethod
    def addresses(client: redis.Redis, name: str) -> set[str]:
        return {str(c["addr"]) for c in client.client_list() if c.get("name") == name}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def count(self, celery_prefix: str, exclude: set[str]) -> dict[str, Any]:
        """Round trips and commands, commitd's and Celery's apart (Celery's keys carry ``celery_prefix``, kombu's
        bindings and its unacked index included; scripts are commitd's). ``exclude``: the bench's own connections."""
        trips = {"commitd": 0, "celery": 0}
        commands = {"commitd": 0, "celery": 0}
        by_command: dict[str, int] = {}
        in_multi: dict[str, str] = {}  # client -> "open" (trip not yet attributed) or "counted"
        last_client, last_at = "", 0.0
        for line in self.lines:
            match = self.LINE.match(line)
            if not match:
                continue
            at, client, command = float(match.group(1)), match.group(2), match.group(3).upper()
            if client in exclude:
                continue
            # Celery's keys carry its prefix (kombu's bindings are "_kombu..."); scripts are commitd's alone.
            celery = celery_prefix in line or "_kombu" in line or command in ("BRPOP", "PUBLISH", "SUBSCRIBE")
            who = "celery" if celery else "commitd"
            if client != "lua":
                pipelined = client == last_client and at - last_at <= self.PIPELINE_GAP
                last_client, last_at = client, at
                if command == "MULTI":
                    in_multi[client] = "open"
                    if pipelined:  # a transaction inside a pipeline: counted with it
                        in_multi[client] = "counted"
                elif command == "EXEC":
                    in_multi.pop(client, None)
                elif in_multi.get(client) == "open":  # a transaction is one round trip: its first command's
                    in_multi[client] = "counted"
                    trips[who] += 1
                elif client not in in_multi and not pipelined:
                    trips[who] += 1
            if command in ("MULTI", "EXEC"):
                continue
            commands[who] += 1
            key = f"{who}:{command.lower()}" + (" (in a script)" if client == "lua" else "")
            by_command[key] = by_command.get(key, 0) + 1
        return {"trips": trips, "commands": commands, "by_command": by_command}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def load_average() -> float:
    return os.getloadavg()[0]


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
