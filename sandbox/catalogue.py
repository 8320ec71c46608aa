"""The offerings the sandbox sells, and the customer commitments it starts with.

A catalogue file is JSON: ``{"<section>": [offering, ...], ..., "existing_commitments": [entry, ...]}``. Each
section's default comes from the service module that owns it (see ``sandbox/services``); a file replaces the
sections it names and keeps the defaults of the others. ``existing_commitments`` entries each have a ``kind``
(for example ``"ec2:reserved-instances"``) handled by that service's seeder; see docs/sandbox.md.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from sandbox import registry

# Stable ids: the same attributes give the same offering id in every run, so tests and demos can pin them.
_NAMESPACE = uuid.UUID("5b0c1a9e-6c1d-4f5e-9f2a-0c0ffee00000")


def stable_uuid(*parts: object) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(str(p) for p in parts)))


class Catalogue:
    def __init__(self, sections: dict[str, list[dict[str, Any]]], existing: list[dict[str, Any]]) -> None:
        self.sections = sections
        self.existing_commitments = existing

    def section(self, name: str) -> list[dict[str, Any]]:
        return self.sections.get(name, [])

    @classmethod
    def load(cls, path: str | Path | None = None) -> Catalogue:
        import sandbox.services  # noqa: F401  (registers every section's default)

        sections = {name: make() for name, make in registry.CATALOGUE_DEFAULTS.items()}
        existing: list[dict[str, Any]] = []
        if path is not None:
            try:
                data = json.loads(Path(path).read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read catalogue {path}: {exc}") from exc
            if not isinstance(data, dict):
                raise ValueError(f"catalogue {path}: the top level must be a JSON object")
            existing = list(data.pop("existing_commitments", []))
            unknown = set(data) - set(sections)
            if unknown:
                raise ValueError(
                    f"catalogue {path}: unknown sections {sorted(unknown)}; known: {sorted(sections)}"
                )
            sections.update({k: list(v) for k, v in data.items()})
        return cls(sections, existing)
