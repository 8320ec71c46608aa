"""The Celery application: one task per permission family, each on its own queue.

Settings that make redelivery safe (lessons.md, "Celery and Redis"):
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task whose worker dies is delivered again;
- ``worker_prefetch_multiplier = 1``: a worker holds one plan message at a time;
- JSON only, never pickle; results are not stored (the ledger is the result);
- ``visibility_timeout`` (COMMITD_VISIBILITY_TIMEOUT, default 3600 s): an unacknowledged message is delivered
  again after this long, possibly while the first worker still runs it. The plan's lease and the ledger's
  compare-and-set make that harmless; keep it longer than a plan's longest run so it stays rare.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task, signals

from config.settings import Settings, get_settings
from worker.family import Family


def create_app(settings: Settings) -> Celery:
    celery = Celery("commitd")
    configure(celery, settings)
    return celery


def configure(celery: Celery, settings: Settings) -> None:
    """Point the app at ``settings`` (tests and the demo call it before the first message is sent)."""
    celery.conf.update(
        broker_url=settings.redis_url,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="commitd.default",
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "global_keyprefix": f"{settings.key_prefix}celery:",
            **settings.redis_options(),
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )


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
