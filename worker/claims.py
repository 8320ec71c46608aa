"""Claims: which plan a resource AWS made belongs to.

A resource returned by AWS or found by reconciliation is claimed by exactly one plan (``HSETNX`` in a hash per
kind, account and region). Another plan's reconciliation skips it, and a claim that fails (the resource already
belongs to another plan) is never ignored: it means two plans see the same resource, which a person must look at.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class Claims:
    def __init__(self, client: redis.Redis, key: str) -> None:
        self.redis = client
        self.key = key

    def claim(self, plan_id: str, resource_ids: Iterable[str]) -> dict[str, str]:
        """Claim each resource for ``plan_id``; return those another plan holds ({resource: other plan})."""
        conflicts: dict[str, str] = {}
        for resource_id in resource_ids:
            if self.redis.hsetnx(self.key, resource_id, plan_id):
                continue
            holder = self.holder(resource_id)
            if holder is not None and holder != plan_id:
                conflicts[resource_id] = holder
        return conflicts

    def holder(self, resource_id: str) -> str | None:
        return _text(self.redis.hget(self.key, resource_id))

    def holders(self, resource_ids: Iterable[str]) -> dict[str, str | None]:
        ids = list(resource_ids)
        if not ids:
            return {}
        return {i: _text(v) for i, v in zip(ids, self.redis.hmget(self.key, ids), strict=True)}

    def elsewhere(self, plan_id: str, resource_ids: Iterable[str]) -> set[str]:
        """Of ``resource_ids``, those claimed by a plan other than ``plan_id``."""
        return {i for i, holder in self.holders(resource_ids).items() if holder is not None and holder != plan_id}


def claims_key(prefix_key: Any, kind: str, account_id: str, region: str) -> str:
    return str(prefix_key("claimed", kind, account_id, region))
