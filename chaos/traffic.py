"""The producer of a chaos run: every plan through the intake stream while the run goes on, with exact
duplicates, conflicting copies (same plan_id, another body) and garbage between them.

Each XADD is confirmed before it counts as submitted: with replicas, ``WAIT 1 <ms>`` on the same connection (a
failover then loses no entry the producer was told about); with a single server, its ``appendfsync always``
made the entry durable before the reply. An entry whose confirmation failed is sent again: the intake keeps one
plan per plan_id, so a resent plan is a duplicate, never a second plan.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from random import Random
from typing import Any

import redis

from config.settings import Settings
from worker.logs import get_logger
from worker.redis_connect import redis_client

log = get_logger("commitd.chaos.producer")
CONFLICTING_REQUESTER = "conflicting-producer@chaos"


def garbage(rng: Random, n: int) -> dict[str, bytes | str]:
    """One stream entry no plan can be read from: bytes that are not UTF-8, a lone surrogate, text that is not
    JSON, JSON that is not a plan, an unknown action, a field other than ``plan``."""
    kinds: list[dict[str, bytes | str]] = [
        {"plan": bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + b"\xff\xfe"},
        # A lone surrogate: as the bytes a careless encoder writes (not UTF-8), and as a JSON escape.
        {"plan": json.dumps({"plan_id": f"garbage-{n}", "action": "ec2:PurchaseReservedInstancesOffering",
                             "requested_by": "\ud83d"}, ensure_ascii=False).encode("utf-8", "surrogatepass")},
        {"plan": json.dumps({"plan_id": f"garbage-{n}", "action": "ec2:PurchaseReservedInstancesOffering",
                             "requested_by": "\ud83d"})},
        {"plan": "{not json" + "x" * rng.randint(0, 40)},
        {"plan": json.dumps([1, 2, 3])},
        {"plan": json.dumps({"plan_id": f"garbage-{n}", "action": "ec2:DeleteEverything", "account_id": "1" * 12,
                             "region": "us-east-1", "params": {}, "requested_by": "chaos", "trigger": "queued"})},
        {"plan": json.dumps({"plan_id": f"garbage-{n}", "params": {"instance_count": -1}})},
        {"not-a-plan": "hello"},
    ]
    return kinds[n % len(kinds)]


@dataclass
class Sent:
    """What the producer confirmed: plans by id (the body the ledger must keep), and counts of the rest."""

    plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    confirmed_at: dict[str, float] = field(default_factory=dict)  # plan id → time.monotonic() of its confirmation
    duplicates: int = 0
    conflicts: list[str] = field(default_factory=list)
    garbage: int = 0
    resends: int = 0  # entries sent again because their confirmation failed
    unconfirmed: list[str] = field(default_factory=list)  # plans never confirmed (gave up): not counted as lost
    done: threading.Event = field(default_factory=threading.Event)


class Producer(threading.Thread):
    """XADDs ``plans`` at ``rate`` per second in the order given, and after each, with the seeded ``rng``: an
    exact duplicate of an earlier plan (``duplicate_rate``), a conflicting copy of one (``conflict_rate``), a
    garbage entry (``garbage_rate``); each kind at least once."""

    def __init__(self, settings: Settings, plans: list[dict[str, Any]], rng: Random, rate: float,
                 replicas: int, duplicate_rate: float = 0.05, conflict_rate: float = 0.02,
                 garbage_rate: float = 0.05) -> None:
        super().__init__(name="chaos-producer", daemon=True)
        self.settings, self.plans, self.rng, self.rate, self.replicas = settings, plans, rng, rate, replicas
        self.rates = (duplicate_rate, conflict_rate, garbage_rate)
        self.stream = f"{settings.key_prefix}plans"
        self.sent = Sent()
        self.stop = threading.Event()
        self._client: redis.Redis | None = None
        self.error: BaseException | None = None  # what stopped the producer early, if anything

    def run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # the run reports it and fails: never a silent half-submitted run
            self.error = exc
            raise
        finally:
            self.sent.done.set()

    def _produce(self) -> None:
        started = time.monotonic()
        duplicate_rate, conflict_rate, garbage_rate = self.rates
        earlier: list[dict[str, Any]] = []
        for n, plan in enumerate(self.plans):
            if self.stop.is_set():
                return
            pause = started + n / self.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if self._add({"plan": json.dumps(plan)}):
                self.sent.confirmed_at[plan["plan_id"]] = time.monotonic()
                self.sent.plans[plan["plan_id"]] = plan
                earlier.append(plan)
            else:
                self.sent.unconfirmed.append(plan["plan_id"])
            # Each kind at least once in any run (its 25th to 27th plans), then as the seeded draws fall.
            draw = {25: 0.0, 26: duplicate_rate, 27: duplicate_rate + conflict_rate}.get(n, self.rng.random())
            if earlier and draw < duplicate_rate:
                if self._add({"plan": json.dumps(self.rng.choice(earlier))}):
                    self.sent.duplicates += 1
            elif earlier and draw < duplicate_rate + conflict_rate:
                # An older plan (the intake has long recorded it): the copy is the one refused.
                original = self.rng.choice(earlier[:max(1, len(earlier) - 20)])
                if self._add({"plan": json.dumps({**original, "requested_by": CONFLICTING_REQUESTER})}):
                    self.sent.conflicts.append(original["plan_id"])
            elif draw < duplicate_rate + conflict_rate + garbage_rate and self._add(garbage(self.rng, n)):
                self.sent.garbage += 1

    def _add(self, fields: dict[str, Any], timeout: float = 120) -> bool:
        """XADD, confirmed; on any failure (a failover, a restart) try again until ``timeout``."""
        deadline = time.monotonic() + timeout
        first = True
        while time.monotonic() < deadline and not self.stop.is_set():
            if not first:
                self.sent.resends += 1
            first = False
            try:
                # One connection for both: WAIT counts the writes of the connection that asks. After a failure a
                # new client (the sentinels asked again), never the old one's pool.
                if self._client is None:
                    self._client = redis_client(self.settings, single_connection=True)
                self._client.xadd(self.stream, fields)
                if self.replicas == 0 or int(self._client.execute_command("WAIT", self.replicas, 2000)) >= 1:
                    return True
                log.warning("chaos_xadd_not_replicated")
            except redis.RedisError as exc:
                log.warning("chaos_xadd_failed", error=type(exc).__name__)
                self._drop_client()
            time.sleep(0.2)
        return False

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except redis.RedisError:
                pass
