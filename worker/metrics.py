"""Counters an operator alerts on (duplicates suspected, plans needing attention), kept in one Redis hash.

``commitd metrics`` prints them; the operations issue will export them. Counting never fails a plan.
"""

from __future__ import annotations

import redis

from worker.logs import get_logger

log = get_logger("commitd.metrics")


class Metrics:
    def __init__(self, client: redis.Redis, key: str) -> None:
        self.redis = client
        self.key = key

    def incr(self, name: str, by: int = 1) -> None:
        try:
            self.redis.hincrby(self.key, name, by)
        except redis.RedisError as exc:
            log.warning("metric_not_counted", metric=name, error=str(exc))

    def all(self) -> dict[str, int]:
        return {
            (k.decode() if isinstance(k, bytes) else k): int(v) for k, v in self.redis.hgetall(self.key).items()
        }
