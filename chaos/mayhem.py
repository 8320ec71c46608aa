"""What happens to the workers during a chaos run: a killer SIGKILLs one every few seconds (preferring one that
holds a plan's lease) and starts a replacement; a freezer SIGSTOPs one for longer than its lease and SIGCONTs it
later. Both follow wall time; which worker is chosen comes from the run's seeded random numbers.

A freeze lasts the lease plus half the send margin: past the lease, so another worker takes the plan over, and
within the margin the taker waits past it, which is the pause commitd is built to survive (docs/exactly-once.md;
a longer pause after the last lease check is the residual risk the look-alike check detects).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from random import Random

from chaos.cluster import Workers
from tests.spine.conftest import WorkerProcess
from worker.logs import get_logger
from worker.runtime import Runtime

log = get_logger("commitd.chaos.mayhem")


def holds_a_lease(runtime: Runtime, worker: WorkerProcess) -> bool:
    """Whether one of the worker's processes holds a plan's lease (the holder is ``host:pid:thread``)."""
    for key in runtime.redis.scan_iter(match=runtime.key("lease", "*"), count=500):
        holder = runtime.redis.get(key)
        try:
            if holder and os.getpgid(int(holder.decode().split(":")[1])) == worker.process.pid:
                return True
        except (ProcessLookupError, ValueError, IndexError):
            continue
    return False


@dataclass
class Tally:
    kills: int = 0
    kills_holding_a_lease: int = 0
    freezes: int = 0
    frozen_seconds: list[float] = field(default_factory=list)


class Mayhem:
    def __init__(self, runtime: Runtime, workers: Workers, rng: Random, kill_every: float,
                 freeze_every: float, freeze_seconds: float) -> None:
        self.runtime, self.workers, self.rng = runtime, workers, rng
        self.kill_every, self.freeze_every, self.freeze_seconds = kill_every, freeze_every, freeze_seconds
        self.lock = threading.Lock()  # the workers' list: the killer, the freezer and the run's supervisor
        self.frozen: WorkerProcess | None = None
        self.stop = threading.Event()
        self.tally = Tally()
        self.threads = [threading.Thread(target=self._killer, name="chaos-killer", daemon=True),
                        threading.Thread(target=self._freezer, name="chaos-freezer", daemon=True)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def keep_alive(self) -> None:
        with self.lock:
            if self.frozen is None or self.frozen.process.poll() is None:
                self.workers.keep_alive()

    def _victim(self) -> WorkerProcess | None:
        """A live worker that is not frozen, one that holds a lease if any does within a few seconds."""
        deadline = time.monotonic() + 3
        while not self.stop.is_set():
            with self.lock:
                candidates = [w for w in self.workers.live if w is not self.frozen]
            if not candidates:
                return None
            self.rng.shuffle(candidates)
            try:
                holding = [w for w in candidates if holds_a_lease(self.runtime, w)]
            except Exception:  # Redis failing over: any worker will do
                holding = []
            if holding or time.monotonic() > deadline:
                return (holding or candidates)[0]
            time.sleep(0.2)
        return None

    def _killer(self) -> None:
        while not self.stop.wait(self.kill_every):
            victim = self._victim()
            if victim is None:
                continue
            try:
                held = holds_a_lease(self.runtime, victim)
            except Exception:
                held = False
            with self.lock:
                if victim not in self.workers.live:
                    continue
                self.workers.kill(victim)
                self.tally.kills += 1
                self.tally.kills_holding_a_lease += held
            log.info("chaos_worker_killed", pid=victim.process.pid, held_a_lease=held)
            self.workers.start()  # seconds of Celery's start: not under the lock, which the freezer's SIGCONT needs

    def _freezer(self) -> None:
        while not self.stop.wait(self.freeze_every):
            victim = self._victim()
            if victim is None:
                continue
            with self.lock:
                if victim not in self.workers.live:
                    continue
                self.frozen = victim
                os.killpg(victim.process.pid, signal.SIGSTOP)
            started = time.monotonic()
            log.info("chaos_worker_frozen", pid=victim.process.pid, seconds=self.freeze_seconds)
            time.sleep(self.freeze_seconds)  # the freeze itself: its length is the point, not a wait for an event
            try:
                os.killpg(victim.process.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.frozen = None
            self.tally.freezes += 1
            self.tally.frozen_seconds.append(round(time.monotonic() - started, 2))
