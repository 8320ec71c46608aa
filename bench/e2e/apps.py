"""The Celery apps the bench runs workers of: commitd's own (``commitd``) and a no-op task on the same broker with
the same settings (``noop``: the floor Celery sets). Each worker process writes its AWS cache figures and its RSS to
``BENCH_STATS_DIR`` when it shuts down."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

from celery import Celery, signals

from config.settings import get_settings
from worker.celery_app import app as commitd
from worker.celery_app import configure

NOOP_QUEUE = "bench.noop"
noop = Celery("noop")
configure(noop, get_settings())
_counter: Any = None


@noop.task(name="bench.noop", acks_late=True)
def noop_task(n: int) -> None:
    """Counts itself done (one INCR: how the bench knows; a no-op task with a result backend would do more)."""
    global _counter
    if _counter is None:
        from worker.redis_connect import redis_client

        _counter = redis_client(get_settings())
    _counter.incr(f"{get_settings().key_prefix}bench:noop-done")


noop.conf.task_routes = {"bench.noop": {"queue": NOOP_QUEUE}}


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _write_stats(**_: Any) -> None:
    directory = os.environ.get("BENCH_STATS_DIR")
    if not directory:
        return
    import worker.runtime as runtime

    stats: dict[str, Any] = {"pid": os.getpid(),
                             "rss_mb": int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf(
                                 "SC_PAGE_SIZE") / 2**20,
                             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if runtime._runtime is not None and runtime._runtime_pid == os.getpid() and "sessions" in vars(runtime._runtime):
        stats["aws"] = runtime._runtime.sessions.stats()
    (Path(directory) / f"{os.getpid()}.json").write_text(json.dumps(stats))


__all__ = ["commitd", "noop"]
