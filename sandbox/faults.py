"""Fault injection, per operation (IAM action name, globs allowed), repeatable with a seed."""

from __future__ import annotations

import fnmatch
import random
import threading
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FaultKind = Literal["throttle", "error", "latency", "reset", "commit_then_drop", "commit_then_error"]


class FaultRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operation: str = Field(min_length=1, description="IAM action name, e.g. ec2:PurchaseReservedInstancesOffering")
    kind: FaultKind
    probability: float | None = Field(default=None, ge=0, le=1)
    count: int | None = Field(default=None, ge=0, description="fire on the next N matching calls, then stop")
    latency_ms: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_trigger(self) -> FaultRule:
        if self.probability is None and self.count is None:
            raise ValueError("a fault needs a probability or a count")
        if self.kind == "latency" and not self.latency_ms:
            raise ValueError("a latency fault needs latency_ms")
        return self


@dataclass
class FiredFault:
    kind: FaultKind
    latency_ms: int


class FaultInjector:
    def __init__(self, seed: int | None = None) -> None:
        self._rules: list[FaultRule] = []
        self._remaining: list[int | None] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.fired: dict[str, int] = {}

    def add(self, rule: FaultRule) -> None:
        with self._lock:
            self._rules.append(rule)
            self._remaining.append(rule.count)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._remaining.clear()
            self.fired.clear()

    def rules(self) -> list[dict[str, object]]:
        with self._lock:
            return [
                {**rule.model_dump(), "remaining": left}
                for rule, left in zip(self._rules, self._remaining, strict=True)
            ]

    def draw(self, iam_action: str) -> list[FiredFault]:
        """The faults that fire for this call, in rule order. Action names match case-insensitively."""
        fired: list[FiredFault] = []
        action = iam_action.lower()
        with self._lock:
            for index, rule in enumerate(self._rules):
                if not fnmatch.fnmatchcase(action, rule.operation.lower()):
                    continue
                left = self._remaining[index]
                if left is not None and left <= 0:
                    continue
                if rule.probability is not None and self._random.random() >= rule.probability:
                    continue
                if left is not None:
                    self._remaining[index] = left - 1
                fired.append(FiredFault(rule.kind, rule.latency_ms or 0))
                self.fired[rule.kind] = self.fired.get(rule.kind, 0) + 1
        return fired
