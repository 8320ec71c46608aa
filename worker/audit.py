"""The audit trail: an append-only Redis stream whose entries are chained by SHA-256.

Each entry stores ``data`` (canonical JSON), ``prev`` (the previous entry's hash) and ``hash`` =
SHA-256(prev + "\\n" + data). ``{prefix}audit:head`` holds the last hash, so removing entries at the end is
detected too. Appends are compare-and-set on the head inside one Lua script: concurrent writers never fork the
chain. Every entry is also emitted as a structlog event.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from worker.logs import get_logger, redact

GENESIS = "0" * 64
log = get_logger("commitd.audit")

_APPEND = """
local head = redis.call('GET', KEYS[2]) or ''
if head ~= ARGV[1] then return {0, head} end
local id = redis.call('XADD', KEYS[1], '*', 'data', ARGV[2], 'prev', ARGV[3], 'hash', ARGV[4])
redis.call('SET', KEYS[2], ARGV[4])
return {1, id}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def chain_hash(prev: str, data_json: str) -> str:
    return hashlib.sha256(f"{prev}\n{data_json}".encode()).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class PreparedEntry:
    """An entry ready to append after ``raw_head`` (the head as stored: '' for an empty trail)."""

    raw_head: str
    prev: str
    data_json: str
    hash: str


def prepare(raw_head: str | None, data: dict[str, Any]) -> PreparedEntry:
    clean = redact(data)
    clean.setdefault("at", now_iso())
    data_json = canonical(clean)
    prev = raw_head or GENESIS
    return PreparedEntry(raw_head or "", prev, data_json, chain_hash(prev, data_json))


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    broken_entry: str | None = None
    reason: str | None = None


class AuditLog:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.stream = f"{prefix}audit"
        self.head_key = f"{prefix}audit:head"
        self._append = client.register_script(_APPEND)
        # The last head this process saw: appends try it first and learn the real one when it moved, which
        # saves a round trip per entry; the compare-and-set in the scripts keeps the chain correct either way.
        self.head_hint: str | None = None

    def head(self) -> str:
        value = self.redis.get(self.head_key)
        return value.decode() if isinstance(value, bytes) else (value or "")

    def known_head(self) -> str:
        if self.head_hint is None:
            self.head_hint = self.head()
        return self.head_hint

    def append(self, data: dict[str, Any]) -> str:
        """Append one event (secrets removed) and log it. Returns the stream entry id."""
        for _ in range(100):
            entry = prepare(self.known_head(), data)
            ok, detail = self._append(
                keys=[self.stream, self.head_key], args=[entry.raw_head, entry.data_json, entry.prev, entry.hash]
            )
            if not ok:
                self.head_hint = _text(detail)  # another writer appended first
                continue
            self.head_hint = entry.hash
            fields = json.loads(entry.data_json)
            log.info(fields.pop("event", "audit"), **fields)
            return _text(detail)
        raise RuntimeError("audit append kept losing the race for the chain head")

    def entries(self, since_id: str = "-", batch: int = 500) -> Iterator[tuple[str, dict[str, str]]]:
        start = since_id
        first = True
        while True:
            rows = self.redis.xrange(self.stream, min=start, max="+", count=batch)
            for entry_id, fields in rows:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                if not first and eid == start:
                    continue
                yield eid, {
                    (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                    for k, v in fields.items()
                }
            if len(rows) < batch:
                return
            last = rows[-1][0]
            start = last.decode() if isinstance(last, bytes) else last
            first = False

    def records(self, plan_id: str | None = None, since: datetime | None = None) -> Iterator[dict[str, Any]]:
        for entry_id, fields in self.entries():
            data = json.loads(fields.get("data", "{}"))
            if plan_id is not None and data.get("plan_id") != plan_id:
                continue
            if since is not None and datetime.fromisoformat(data.get("at", "1970-01-01T00:00:00+00:00")) < since:
                continue
            yield {"id": entry_id, "hash": fields.get("hash"), **data}

    def verify(self) -> VerifyResult:
        expected_prev = GENESIS
        count = 0
        last_id: str | None = None
        for entry_id, fields in self.entries():
            count += 1
            last_id = entry_id
            if fields.get("prev") != expected_prev:
                return VerifyResult(False, count, entry_id, "its previous-hash link does not match the entry before it "
                                    "(an entry was removed, inserted or reordered)")
            if chain_hash(expected_prev, fields.get("data", "")) != fields.get("hash"):
                return VerifyResult(False, count, entry_id, "its content does not match its hash (it was altered)")
            expected_prev = fields["hash"]
        head = self.head()
        if (head or GENESIS) != expected_prev:
            return VerifyResult(False, count, last_id, "the chain head does not match the last entry "
                                "(entries were removed from the end)")
        return VerifyResult(True, count)
