"""A small client for the sandbox's control API (``/_sandbox/``), for tests, the demo and rehearsals."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class SandboxControlError(RuntimeError):
    pass


class SandboxControl:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/_sandbox/{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise SandboxControlError(f"{method} /_sandbox/{path}: {exc.code} {exc.read().decode()}") from exc

    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "health"))

    def reset(self) -> None:
        self._call("POST", "reset", {})

    def advance_clock(self, seconds: float) -> str:
        return str(self._call("POST", "clock", {"advance_seconds": seconds})["now"])

    def add_fault(
        self,
        operation: str,
        kind: str,
        probability: float | None = None,
        count: int | None = None,
        latency_ms: int | None = None,
    ) -> None:
        self._call(
            "POST",
            "faults",
            {
                "operation": operation,
                "kind": kind,
                "probability": probability,
                "count": count,
                "latency_ms": latency_ms,
            },
        )

    def faults(self) -> dict[str, Any]:
        return dict(self._call("GET", "faults"))

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def set_iam(self, enforce: bool, policy: dict[str, Any] | None = None, external_id: str | None = None) -> None:
        self._call("POST", "iam", {"enforce": enforce, "policy": policy, "external_id": external_id})

    def resources(self, **filters: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        return list(self._call("GET", f"resources{'?' + query if query else ''}")["resources"])

    def seed(self, entries: list[dict[str, Any]]) -> None:
        self._call("POST", "seed", {"existing_commitments": entries})
