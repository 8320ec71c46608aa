"""The Celery application: one task per permission family, each on its own queue.

Settings that make redelivery safe (lessons.md, "Celery and Redis"):
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task whose worker dies is delivered again;
- ``worker_prefetch_multiplier = 1``: a worker holds one plan message at a time;
- JSON only, never pickle; results are not stored (the ledger is the result);
- ``visibility_timeout`` (COMMITD_VISIBILITY_TIMEOUT, default 3600 s): an unacknowledged message is delivered
  again after this long, possibly while the first worker still runs it. The plan's lease and the ledger's
  compare-and-set make that harmless; keep it longer than a plan's longest run so it stays rare.

Pools: ``prefork`` (the default) and ``threads``, which runs 16-64 plans of AWS-latency-bound work in one process
(docs/performance.md has the figures). Celery's own thread pool stalls on Redis with late acks: a task is
acknowledged in its pool thread while the worker's event loop sleeps with no BRPOP registered (all prefetch slots
taken), so plans run in waves with pauses of up to seconds. ``ThreadsPool`` wakes the event loop after each task,
and ``-P threads`` names it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from typing import Any

from celery import Celery, Task, concurrency, signals
from celery.concurrency.base import apply_target
from celery.concurrency.thread import ApplyResult
from celery.concurrency.thread import TaskPool as CeleryThreadPool

from config.settings import Settings, get_settings
from worker.family import Family


def create_app(settings: Settings) -> Celery:
    celery = Celery("commitd")
    configure(celery, settings)
    return celery


def configure(celery: Celery, settings: Settings) -> None:
    """Point the app at ``settings`` (tests and the demo call it before the first message is sent).

    The broker is the same Redis as the ledger's, reached the same way (``worker.redis_connect``): one server, TLS
    with a verified certificate, or the master Redis Sentinel names (kombu's sentinel transport)."""
    from worker.redis_connect import broker_config

    broker = broker_config(settings)
    transport_options = {
        "visibility_timeout": settings.visibility_timeout,
        "global_keyprefix": f"{settings.key_prefix}celery:",
        **settings.redis_options(),
        **broker.transport_options,
    }
    if celery._pool is not None and (celery.conf.broker_url, celery.conf.broker_transport_options,
                                     celery.conf.broker_use_ssl) != (broker.url, transport_options, broker.use_ssl):
        # Connections made for another broker (a test or the demo pointing the app elsewhere) are not reused: the
        # app drops its pools and makes new ones. The old pool is not closed here: a producer taken from it before
        # (Celery keeps some per thread) would otherwise fail with "Acquire on closed pool".
        celery._after_fork()
    celery.conf.update(
        broker_url=broker.url,
        broker_use_ssl=broker.use_ssl,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="commitd.default",
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )


def _cap_malloc_arenas() -> None:
    """glibc gives a thread that allocates while the other arenas are busy an arena of its own (up to 8 per core),
    and each keeps the memory freed into it: a threads worker's RSS grows with its thread count. Two are enough
    where the GIL serializes most allocations (the usual MALLOC_ARENA_MAX=2 of threaded servers); an operator's
    MALLOC_ARENA_MAX wins."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to cap


class ThreadsPool(CeleryThreadPool):
    """Celery's thread pool, waking the worker's event loop (a pipe it reads) once a task is done and acknowledged:
    only then may the loop take another message (prefetch), and without the wake-up it would find out on its next
    timer, seconds later."""

    _wake_fd: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _cap_malloc_arenas()  # before the pool's threads exist
        super().__init__(*args, **kwargs)

    def register_with_event_loop(self, loop: Any) -> None:
        read_fd, self._wake_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(self._wake_fd, False)

        def drain() -> None:
            try:
                while os.read(read_fd, 4096):
                    pass
            except BlockingIOError:
                pass

        loop.add_reader(read_fd, drain)

    def _wake(self) -> None:
        if self._wake_fd is not None:
            try:
                os.write(self._wake_fd, b"!")
            except BlockingIOError:
                pass  # the pipe is full: the loop is awake already

    def on_apply(self, target: Callable[..., Any], args: tuple[Any, ...] | None = None,
                 kwargs: dict[str, Any] | None = None, callback: Callable[..., Any] | None = None,
                 accept_callback: Callable[..., Any] | None = None, **_: Any) -> ApplyResult:
        def run() -> None:
            try:  # the callback (in this thread) acknowledges the message
                apply_target(target, args or (), kwargs, callback, accept_callback)
            finally:
                self._wake()

        return ApplyResult(self.executor.submit(run))


# `-P threads` (celery's command line and `commitd worker --pool threads`) names the pool above.
concurrency.ALIASES["threads"] = f"{__name__}:ThreadsPool"

app = create_app(get_settings())


@signals.celeryd_init.connect
@signals.worker_process_init.connect
def _structured_logs(**_: Any) -> None:
    """Workers started as `celery -A worker.celery_app worker` log like every other commitd process."""
    from worker.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)


def family_task(family: Family) -> Task:
    """The family's Celery task: it takes a plan id, and the executor does the rest. A plan that must wait is
    given back as a new message with a countdown (not ``self.retry``: waiting is unbounded by max_retries and
    uses no attempt); the new message goes out before this one is acknowledged, so a crash in between leaves a
    duplicate message, which the plan's lease makes harmless."""

    @app.task(name=family.task_name, bind=True, acks_late=True)
    def run_family_plan(self: Task, plan_id: str) -> str:
        from tasks import ACTIONS
        from worker.execution import RequeueLater, run_plan
        from worker.runtime import get_runtime

        try:
            return run_plan(get_runtime(), plan_id, ACTIONS)
        except RequeueLater as later:
            enqueue(family, plan_id, countdown=later.delay)
            return f"requeued: {later.reason}"

    app.conf.task_routes = {**(app.conf.task_routes or {}), family.task_name: {"queue": family.queue}}
    return run_family_plan


def enqueue(family: Family, plan_id: str, countdown: float | None = None) -> Any:
    return app.send_task(family.task_name, args=[plan_id], queue=family.queue, countdown=countdown)


def _build_family_tasks() -> dict[str, Task]:
    """One task per family of the production role, built from the families table."""
    from tasks.families import FAMILIES

    return {family.name: family_task(family) for family in FAMILIES}


FAMILY_TASKS = _build_family_tasks()


import worker.heartbeat  # noqa: E402, F401  (heartbeats and task timings: its Celery signal handlers)
