"""The one way a plan waits: give it back to its queue with a delay (``worker.celery_app.family_task``)."""

from __future__ import annotations


class RequeueLater(Exception):
    """Give the plan back to its queue for ``delay`` seconds; the task sends a new message and returns. Waiting
    never uses an attempt and is not bounded by Celery's max_retries."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay
