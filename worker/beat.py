"""The schedule: celery beat with redbeat (schedule and lock in Redis), so several beat processes may stand by and
only the one holding the lock fires (docs/renewals.md, "The schedule").

How redbeat decides who fires (redbeat 2.4, ``redbeat/schedulers.py``):

- at start (celery's ``beat_init`` signal) a beat blocks on a redis-py lock ``{prefix}redbeat:lock`` (``SET NX PX``
  with a random token), polling every ``loop_interval``: a standby waits there and fires nothing;
- on every tick, before it looks at the schedule, the holder extends the lock to ``lock_timeout`` (a Lua script
  that checks the token). A holder that lost it (paused longer than ``lock_timeout`` while another took over) gets
  ``LockNotOwnedError`` there and exits before firing; a supervisor restarts it as a standby;
- a holder that stops cleanly releases the lock; one that dies keeps it until ``lock_timeout`` runs out, then a
  standby takes over within ``loop_interval``;
- an entry's last run time is in Redis (written before the task is sent), so the new holder fires what is due, not
  what the old one already fired.

What is left: a holder that pauses after extending the lock and before sending, for longer than ``lock_timeout``,
can send one scan the new holder also sends. A scan is idempotent (worker.renewals: plan ids derived from the
commitments), so two scans make the same plans once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import redis
from celery import Celery

from config.settings import Settings
from worker.redis_connect import redis_client

SCHEDULE_ENTRY = "commitd-renewals-scan"
SCAN_INTERVAL = 3600.0  # seconds between scans
LOOP_INTERVAL = 5.0  # the longest a beat sleeps between ticks; a standby polls the lock this often
LOCK_TIMEOUT_LOOPS = 5  # redbeat's default: the lock outlives five loops of a holder that stopped


def redbeat_prefix(settings: Settings) -> str:
    return settings.key("redbeat") + ":"


def beat_config(settings: Settings, interval: float = SCAN_INTERVAL, loop_interval: float = LOOP_INTERVAL,
                lock_timeout: float | None = None) -> dict[str, Any]:
    """The Celery settings of a beat process: redbeat's scheduler, keys and lock, and the renewal scan every
    ``interval`` seconds on its own queue. A scan message not taken within an interval expires: a worker that
    was down runs the next scan, not every scan it missed."""
    from worker.renewals import QUEUE, SCAN_TASK

    if interval <= 0 or loop_interval <= 0:
        raise ValueError("interval and loop_interval must be positive")
    timeout = lock_timeout if lock_timeout is not None else loop_interval * LOCK_TIMEOUT_LOOPS
    if timeout <= loop_interval:
        raise ValueError(f"lock_timeout ({timeout}s) must exceed loop_interval ({loop_interval}s): the holder "
                         "extends the lock once a loop")
    prefix = redbeat_prefix(settings)
    return {
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "beat_max_loop_interval": loop_interval,
        "redbeat_key_prefix": prefix,
        "redbeat_lock_key": prefix + "lock",
        "redbeat_lock_timeout": timeout,
        # Set so that redbeat does not fall back to the broker's settings (and warn); its connection is ours.
        "redbeat_redis_url": settings.redis_url,
        "redbeat_redis_options": {},
        # No result backend to clean: without this celery adds a daily cleanup task nobody consumes.
        "result_expires": None,
        "beat_schedule": {
            SCHEDULE_ENTRY: {
                "task": SCAN_TASK,
                "schedule": timedelta(seconds=interval),
                "options": {"queue": QUEUE, "expires": interval},
            },
        },
    }


def beat_redis(settings: Settings) -> redis.Redis:
    """redbeat's client: commitd's Redis reached as every other client reaches it (``worker.redis_connect``:
    timeouts, TLS, Sentinel), with replies decoded. redbeat compares the keys it reads with the names it holds
    (str): with bytes it would take every static entry for a removed one and reset its last run at each start."""
    client = redis_client(settings)
    client.connection_pool.connection_kwargs["decode_responses"] = True  # no connection is open yet
    return client


def configure_beat(celery: Celery, settings: Settings, interval: float = SCAN_INTERVAL,
                   loop_interval: float = LOOP_INTERVAL, lock_timeout: float | None = None) -> None:
    celery.conf.update(beat_config(settings, interval, loop_interval, lock_timeout))
    celery.redbeat_redis = beat_redis(settings)  # type: ignore[attr-defined]  # where redbeat looks for its client


def run_beat(settings: Settings, interval: float = SCAN_INTERVAL, loop_interval: float = LOOP_INTERVAL,
             lock_timeout: float | None = None) -> None:
    """Run a beat process until it is stopped (SIGTERM/SIGINT release the lock for a standby)."""
    from celery.apps.beat import Beat

    import worker.renewals  # noqa: F401  (registers the scan task and its queue on the app)
    from worker.celery_app import app

    configure_beat(app, settings, interval, loop_interval, lock_timeout)
    Beat(app=app, loglevel=settings.log_level, quiet=True, max_interval=loop_interval).run()
