"""The audit trail: an append-only Redis stream of chained entries, one chain per writer (docs/audit.md).

Every thread of every process appends to a chain of its own, so an append never waits on or retries against
another writer's: there is no shared head. An entry's stream fields are ``data`` (canonical JSON), ``w`` (its
chain), ``n`` (its place in the chain, from 1), ``prev`` (the chain's previous hash, ``GENESIS`` for the first) and
``hash``: SHA-256 of ``w, n, prev, data`` or, in keyed mode (``COMMITD_AUDIT_KEY_FILE``), their HMAC-SHA256, with
``k`` naming the key. Verification walks the stream in order and follows every chain; a writer starts a new chain
each hour, so a checkpoint (the chains' heads where the archive cut the stream, ``worker.archive``) stays small.

The append is a Lua fragment (``lua_check`` + ``lua_append``) the ledger's transition script embeds, so a transition
and its entry are one script call. Before writing anything, the fragment checks that the chain's previous entry is
still in the stream: if a Redis failover lost it, the writer records the loss in a new chain
(``audit_chain_lost``) instead of linking to an entry that is gone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from worker.logs import get_logger, redact

GENESIS = "0" * 64
# A writer starts a new chain after this long, so chains end and a checkpoint can forget their heads.
CHAIN_SECONDS = 3600.0
# A checkpoint keeps the head of a chain it did not see move for this long after the chain's last entry: far
# longer than a chain lives (CHAIN_SECONDS), so a paused process cannot extend a chain whose head was forgotten.
HEAD_KEEP_MS = 86_400_000
LOST_EVENT = "audit_chain_lost"
log = get_logger("commitd.audit")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def id_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def time_id(at: datetime) -> str:
    """The first stream id Redis could give an entry added at ``at``."""
    return f"{max(0, int(at.timestamp() * 1000))}-0"


# --- keys and hashes ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditKey:
    """The HMAC key of keyed mode. ``id`` names it in entries (an HMAC of a constant, so it reveals nothing)."""

    secret: bytes = field(repr=False)
    id: str

    @classmethod
    def from_secret(cls, secret: bytes) -> AuditKey:
        return cls(secret, hmac.new(secret, b"commitd audit key id", hashlib.sha256).hexdigest()[:16])

    def mac(self, material: bytes) -> str:
        return hmac.new(self.secret, material, hashlib.sha256).hexdigest()


MIN_KEY_BYTES = 16
_keys: dict[str, AuditKey] = {}


def read_key_file(path: Path) -> bytes:
    """The key file's bytes, surrounding whitespace removed (a trailing newline is not part of the key). Errors
    name the file and the problem, never its content."""
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"the audit key file {path} cannot be read ({exc.strerror})") from None
    if len(secret) < MIN_KEY_BYTES:
        raise ValueError(f"the audit key file {path} holds {len(secret)} bytes; it needs at least {MIN_KEY_BYTES} "
                         "(e.g. head -c 32 /dev/urandom | base64)")
    return secret


def load_key(path: Path | None) -> AuditKey | None:
    """The key in ``path`` (None: unkeyed mode), read once per process: every append of a process uses one key
    (a changed file takes effect at the next start; rotating keys is not supported, docs/audit.md)."""
    if path is None:
        return None
    if str(path) not in _keys:
        _keys[str(path)] = AuditKey.from_secret(read_key_file(path))
    return _keys[str(path)]


def configured_key() -> AuditKey | None:
    """The key of this process's runtime settings (``COMMITD_AUDIT_KEY_FILE``)."""
    from worker.runtime import get_runtime

    return load_key(get_runtime().settings.audit_key_file)


def entry_hash(key: AuditKey | None, chain: str, n: int, prev: str, data_json: str) -> str:
    material = f"{chain}\n{n}\n{prev}\n{data_json}".encode()
    return key.mac(material) if key is not None else hashlib.sha256(material).hexdigest()


def legacy_hash(prev: str, data_json: str) -> str:
    """Entries written before chains per writer (no ``w`` field): one global chain of SHA-256(prev + data)."""
    return hashlib.sha256(f"{prev}\n{data_json}".encode()).hexdigest()


# --- the writer's side -------------------------------------------------------------------------------------------
def lua_check(stream: int, meta: int, check: int) -> str:
    """Lua, before the script writes anything: refuse (``{0, 'audit', <last archived id>, <origin>}``) when the
    chain's previous entry (its id in ARGV[check]; '' for none to check) is no longer in the stream."""
    return f"""
local audit_prev = ARGV[{check}]
if audit_prev ~= '' and #redis.call('XRANGE', KEYS[{stream}], audit_prev, audit_prev) == 0 then
  local audit_meta = redis.call('HMGET', KEYS[{meta}], 'trimmed', 'origin')
  return {{0, 'audit', audit_meta[1] or '', audit_meta[2] or ''}}
end
"""


def lua_append(stream: int, meta: int, check: int) -> str:
    """Lua: append the entry whose fields are ARGV[check + 1 ...]; its id is ``audit_id``. A chain's first entry
    also records where the trail began (``origin``) if nothing has yet."""
    return f"""
local audit_id = redis.call('XADD', KEYS[{stream}], '*', unpack(ARGV, {check + 1}))
if audit_prev == '' then redis.call('HSETNX', KEYS[{meta}], 'origin', audit_id) end
"""


_APPEND = lua_check(1, 2, 1) + lua_append(1, 2, 1) + "return {1, audit_id}\n"


@dataclass
class AppendStats:
    """This process's appends and chain restarts (a chain whose previous entry was gone): what the bench reads."""

    appends: int = 0
    chain_restarts: int = 0


STATS = AppendStats()


@dataclass
class _Chain:
    """One writer's chain: only this thread of this process appends to it."""

    id: str
    pid: int
    started: float
    n: int = 0
    hash: str = GENESIS
    last_id: str = ""
    check: bool = True  # False once the last entry is known to be archived: nothing left in the stream to check


@dataclass(slots=True)
class PreparedEntry:
    chain: str
    n: int
    prev: str
    data_json: str
    hash: str
    key_id: str | None
    check_id: str

    def fields(self) -> list[str]:
        out = ["data", self.data_json, "w", self.chain, "n", str(self.n), "prev", self.prev, "hash", self.hash]
        return [*out, "k", self.key_id] if self.key_id else out


_local = threading.local()


def _new_chain() -> _Chain:
    return _Chain(secrets.token_hex(8), os.getpid(), time.monotonic())


# --- checkpoints -------------------------------------------------------------------------------------------------
class CheckpointInvalid(Exception):
    """A checkpoint's digest does not match its content (it was altered), or it lacks the key's HMAC."""


class Unverifiable(Exception):
    """This verifier cannot tell: entries or checkpoints written with a key it does not have."""


@dataclass(frozen=True)
class Head:
    n: int
    hash: str
    id: str


@dataclass(frozen=True)
class Checkpoint:
    """Where the archive cut the stream: entries up to ``last_id`` (``entries`` of them since the trail began)
    are in archive files, and ``heads`` holds each chain's last archived entry so verification goes on from here.
    ``kept_from``: heads of chains untouched since the previous checkpoint whose last entry is older were
    dropped. ``prev`` is the previous checkpoint's digest: the checkpoints form a chain of their own."""

    seq: int
    last_id: str
    entries: int
    heads: dict[str, Head]
    prev: str
    kept_from: int
    at: str
    k: str | None = None
    digest: str = ""

    def body(self) -> dict[str, Any]:
        return {"seq": self.seq, "last_id": self.last_id, "entries": self.entries, "prev": self.prev,
                "kept_from": self.kept_from, "at": self.at, "k": self.k,
                "heads": {w: [h.n, h.hash, h.id] for w, h in sorted(self.heads.items())}}

    def compute_digest(self, key: AuditKey | None) -> str:
        material = b"checkpoint\n" + canonical(self.body()).encode()
        return key.mac(material) if key is not None else hashlib.sha256(material).hexdigest()

    def sealed(self, key: AuditKey | None) -> Checkpoint:
        signed = replace(self, k=key.id if key is not None else None)
        return replace(signed, digest=signed.compute_digest(key))

    def to_json(self) -> str:
        return canonical({**self.body(), "digest": self.digest})

    @classmethod
    def from_json(cls, raw: str | bytes) -> Checkpoint:
        data = json.loads(raw)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        try:
            heads = {str(w): Head(int(h[0]), str(h[1]), str(h[2])) for w, h in data["heads"].items()}
            return cls(int(data["seq"]), str(data["last_id"]), int(data["entries"]), heads, str(data["prev"]),
                       int(data["kept_from"]), str(data["at"]), data.get("k"), str(data["digest"]))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise CheckpointInvalid(f"checkpoint malformed ({type(exc).__name__})") from None

    def check(self, key: AuditKey | None, strict: bool = True) -> None:
        """Raise unless the digest matches (in keyed mode: the key's HMAC; unkeyed: SHA-256). With ``strict``
        off, a checkpoint without HMAC is accepted in keyed mode (one a later keyed checkpoint pins)."""
        if self.k is not None:
            if key is None:
                raise Unverifiable(f"checkpoint #{self.seq} is keyed (key id {self.k}): set COMMITD_AUDIT_KEY_FILE")
            if self.k != key.id:
                raise Unverifiable(f"checkpoint #{self.seq} was sealed with another key (id {self.k}, this one "
                                   f"{key.id})")
            own = key
        else:
            if key is not None and strict:
                raise CheckpointInvalid(f"checkpoint #{self.seq} carries no HMAC: in keyed mode it must (sealed "
                                        "without the key, or rewritten by someone without it)")
            own = None
        if not hmac.compare_digest(self.compute_digest(own), self.digest):
            raise CheckpointInvalid(f"checkpoint #{self.seq} does not match its digest (it was altered)")


# --- verification ------------------------------------------------------------------------------------------------
class ChainWalk:
    """Follows every chain through entries in stream order. ``strict``: in keyed mode every entry must be keyed
    (off only where a keyed checkpoint pins the entries: archive files, or adopting an unkeyed trail)."""

    def __init__(self, key: AuditKey | None, heads: dict[str, Head] | None = None, strict: bool = True) -> None:
        self.key = key
        self.strict = strict
        self.heads: dict[str, Head] = dict(heads or {})
        self.moved: set[str] = set()
        self.count = 0
        self.lost = 0
        self.last_id: str | None = None

    def check(self, entry_id: str, fields: dict[str, str]) -> str | None:
        """Take the next entry; the reason it breaks the trail, or None. Raises Unverifiable for another key's."""
        self.count += 1
        data = fields.get("data", "")
        chain = fields.get("w")
        if chain is None:
            problem = self._legacy(entry_id, fields, data)
        else:
            problem = self._chained(entry_id, chain, fields, data)
        if problem is None:
            self.last_id = entry_id
            if f'"event":"{LOST_EVENT}"' in data:
                self.lost += 1
        return problem

    def _legacy(self, entry_id: str, fields: dict[str, str], data: str) -> str | None:
        if self.key is not None and self.strict:
            return "it carries no HMAC: in keyed mode every entry does (written before chains per writer)"
        head = self.heads.get("")
        if fields.get("prev") != (head.hash if head else GENESIS):
            return "its previous-hash link does not match (an entry was removed, inserted or reordered)"
        if legacy_hash(fields.get("prev", ""), data) != fields.get("hash"):
            return "its content does not match its hash (it was altered)"
        self._advance("", Head((head.n if head else 0) + 1, fields["hash"], entry_id))
        return None

    def _chained(self, entry_id: str, chain: str, fields: dict[str, str], data: str) -> str | None:
        key_id = fields.get("k")
        if key_id is not None:
            if self.key is None:
                raise Unverifiable(f"entry {entry_id} is keyed (key id {key_id}): set COMMITD_AUDIT_KEY_FILE")
            if key_id != self.key.id:
                raise Unverifiable(f"entry {entry_id} was written with another key (id {key_id}, this one "
                                   f"{self.key.id})")
        elif self.key is not None and self.strict:
            return ("it carries no HMAC: in keyed mode every entry does (written without the key, or rewritten by "
                    "someone without it)")
        try:
            n = int(fields.get("n", ""))
        except ValueError:
            return "its place in its chain is not a number (it was altered)"
        head = self.heads.get(chain)
        expected = (head.n + 1, head.hash) if head else (1, GENESIS)
        if (n, fields.get("prev")) != expected:
            return (f"its link to the previous entry of its chain (chain {chain}, entry {n}) does not match: an "
                    "entry was removed, inserted or reordered")
        computed = entry_hash(self.key if key_id is not None else None, chain, n, fields.get("prev", ""), data)
        if not hmac.compare_digest(computed, fields.get("hash", "")):
            what = "HMAC" if key_id is not None else "hash"
            return f"its content does not match its {what} (it was altered)"
        self._advance(chain, Head(n, fields["hash"], entry_id))
        return None

    def _advance(self, chain: str, head: Head) -> None:
        self.heads[chain] = head
        self.moved.add(chain)

    def kept_heads(self, kept_from: int) -> dict[str, Head]:
        """The heads a checkpoint keeps: every chain that moved since the last one, and others not too old."""
        return {w: h for w, h in self.heads.items() if w in self.moved or id_ms(h.id) >= kept_from}


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    broken_entry: str | None = None
    reason: str | None = None
    # Details for the report; not part of the verdict (compared results stay comparable).
    unverifiable: bool = field(default=False, compare=False)
    chains: int = field(default=0, compare=False)
    lost: int = field(default=0, compare=False)
    checkpoint: Checkpoint | None = field(default=None, compare=False)
    keyed: bool = field(default=False, compare=False)


class AuditLog:
    def __init__(self, client: redis.Redis, prefix: str, key: AuditKey | None | bool = True) -> None:
        """``key``: the HMAC key, None for unkeyed mode, True for the one the runtime's settings name."""
        self.redis = client
        self.stream = f"{prefix}audit"
        self.meta_key = f"{prefix}audit:meta"
        self._append = client.register_script(_APPEND)
        self._key = key
        self._chain_name: str | None = None  # this log's chains, one per thread: named by stream and key

    @property
    def key(self) -> AuditKey | None:
        if self._key is True:
            self._key = configured_key()
        return self._key if isinstance(self._key, AuditKey) else None

    # --- appending ---------------------------------------------------------------------------------------------
    def _chain(self) -> _Chain:
        chains: dict[str, _Chain] = _local.__dict__.setdefault("chains", {})
        if self._chain_name is None:
            self._chain_name = f"{self.stream}\n{self.key.id if self.key else ''}"
        name = self._chain_name
        chain = chains.get(name)
        if chain is None or chain.pid != os.getpid() or time.monotonic() - chain.started > CHAIN_SECONDS:
            chain = chains[name] = _new_chain()
        return chain

    def _drop(self, chain: _Chain) -> None:
        """The chain's last append may or may not have been written: the next one starts a new chain."""
        chains: dict[str, _Chain] = _local.__dict__.setdefault("chains", {})
        for name, known in list(chains.items()):
            if known is chain:
                del chains[name]

    def _prepare(self, chain: _Chain, data: dict[str, Any]) -> PreparedEntry:
        clean = redact(data)
        clean.setdefault("at", now_iso())
        data_json = canonical(clean)
        key = self.key
        n = chain.n + 1
        return PreparedEntry(chain.id, n, chain.hash, data_json, entry_hash(key, chain.id, n, chain.hash, data_json),
                             key.id if key else None, chain.last_id if chain.check else "")

    def scripted(self, script: Callable[..., Any], keys: list[str], args: list[Any], data: dict[str, Any]) -> Any:
        """Run ``script`` with the entry for ``data`` appended to its ARGV (the chain's previous id, then the
        entry's fields): a script built with ``lua_check`` and ``lua_append``. Returns the script's reply; a
        refusal other than the audit check's is the caller's to handle."""
        for _ in range(3):
            chain = self._chain()
            entry = self._prepare(chain, data)
            try:
                reply = script(keys=keys, args=[*args, entry.check_id, *entry.fields()])
            except BaseException:
                self._drop(chain)
                raise
            if reply[0] == 1:
                chain.n, chain.hash, chain.last_id, chain.check = entry.n, entry.hash, _text(reply[1]), True
                STATS.appends += 1
                fields = json.loads(entry.data_json)
                log.info(fields.pop("event", "audit"), **fields)
                return reply
            if _text(reply[1]) != "audit":
                return reply
            self._previous_gone(chain, _text(reply[2]), bool(_text(reply[3])))
        raise RuntimeError("audit: the chain's previous entry kept disappearing")

    def _previous_gone(self, chain: _Chain, trimmed: str, trail_exists: bool) -> None:
        if trimmed and id_key(chain.last_id) <= id_key(trimmed):
            chain.check = False  # archived: verification goes on from the checkpoint's head of this chain
            return
        # Lost (a failover or a restart without fsync dropped it) or removed: say so in a new chain, unless the
        # whole trail is gone (no origin: a new or emptied Redis), where there is nothing to tie the loss to.
        self._drop(chain)
        STATS.chain_restarts += 1
        lost = {"chain": chain.id, "n": chain.n, "hash": chain.hash, "entry_id": chain.last_id}
        log.warning(LOST_EVENT, trail_exists=trail_exists, **lost)
        if trail_exists:
            self.append({"event": LOST_EVENT, **lost})

    def append(self, data: dict[str, Any]) -> str:
        """Append one event (secrets removed) and log it. Returns the stream entry id."""
        return _text(self.scripted(self._append, [self.stream, self.meta_key], [], data)[1])

    # --- reading -----------------------------------------------------------------------------------------------
    def entries(self, after: str | None = None, until: str = "+", batch: int = 500,
                since: str | None = None) -> Iterator[tuple[str, dict[str, str]]]:
        """Entries in stream order: after the id ``after`` (exclusive) or from ``since`` (inclusive), up to
        ``until``."""
        start = f"({after}" if after else (since or "-")
        while True:
            rows = self.redis.xrange(self.stream, min=start, max=until, count=batch)
            for entry_id, fields in rows:
                yield _text(entry_id), {_text(k): _text(v) for k, v in fields.items()}
            if len(rows) < batch:
                return
            start = f"({_text(rows[-1][0])}"

    def records(self, plan_id: str | None = None, since: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Entries as dicts; ``since``: those Redis added at or after that time (read from there, not filtered)."""
        for entry_id, fields in self.entries(since=time_id(since) if since else None):
            row = _row(entry_id, fields)
            if plan_id is None or row.get("plan_id") == plan_id:
                yield row

    def tail(self, count: int, plan_id: str | None = None) -> list[dict[str, Any]]:
        """The last ``count`` entries (of ``plan_id``), oldest first: read backwards, only as far as needed."""
        out: list[dict[str, Any]] = []
        end = "+"
        batch = count if plan_id is None else max(count, 500)
        while len(out) < count:
            rows = self.redis.xrevrange(self.stream, max=end, min="-", count=batch)
            for entry_id, fields in rows:
                row = _row(_text(entry_id), {_text(k): _text(v) for k, v in fields.items()})
                if plan_id is None or row.get("plan_id") == plan_id:
                    out.append(row)
                    if len(out) == count:
                        break
            if len(rows) < batch:
                break
            end = f"({_text(rows[-1][0])}"
        return out[::-1]

    def head(self) -> str:
        """The hash of the newest entry ('' for an empty trail)."""
        rows = self.redis.xrevrange(self.stream, count=1)
        return _text(rows[0][1].get(b"hash", b"")) if rows else ""

    def checkpoint(self) -> Checkpoint | None:
        raw = self.redis.hget(self.meta_key, "checkpoint")
        return Checkpoint.from_json(raw) if raw is not None else None

    # --- verifying ---------------------------------------------------------------------------------------------
    def verify(self) -> VerifyResult:
        """Walk every entry in Redis from the checkpoint (or the beginning) and check each chain, then that no
        entry was removed (the stream's own count of entries ever added, Redis 7+). An archive run that moves
        the checkpoint meanwhile makes it start again."""
        result = VerifyResult(False, 0, None, "the archive kept moving the checkpoint")
        for _ in range(5):
            meta, info = self._snapshot()
            result = self._verify(meta, info)
            if self.redis.hget(self.meta_key, "checkpoint") == meta.get(b"checkpoint"):
                return result
        return result

    def _snapshot(self) -> tuple[dict[bytes, bytes], dict[str, Any] | None]:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self.meta_key)
        pipe.xinfo_stream(self.stream)
        meta, info = pipe.execute(raise_on_error=False)
        if isinstance(info, Exception):
            if "no such key" not in str(info):
                raise info
            info = None
        return meta, info

    def _verify(self, meta: dict[bytes, bytes], info: dict[str, Any] | None) -> VerifyResult:
        key = self.key
        keyed = key is not None
        checkpoint = None
        try:
            if b"checkpoint" in meta:
                checkpoint = Checkpoint.from_json(meta[b"checkpoint"])
                checkpoint.check(key)
        except CheckpointInvalid as exc:
            return VerifyResult(False, 0, None, f"the checkpoint in Redis: {exc}", keyed=keyed)
        except Unverifiable as exc:
            return VerifyResult(False, 0, None, str(exc), unverifiable=True, keyed=keyed)
        walk = ChainWalk(key, checkpoint.heads if checkpoint else None)
        origin = _text(meta[b"origin"]) if b"origin" in meta else None
        until = _text(info["last-generated-id"]) if info else "+"
        first = True
        for entry_id, fields in self.entries(after=checkpoint.last_id if checkpoint else None, until=until):
            if first and checkpoint is None and origin and "w" in fields and entry_id != origin:
                return VerifyResult(False, 1, entry_id, f"entries before it were removed (the trail began at "
                                    f"{origin})", keyed=keyed)
            first = False
            try:
                problem = walk.check(entry_id, fields)
            except Unverifiable as exc:
                return VerifyResult(False, walk.count, entry_id, str(exc), unverifiable=True, keyed=keyed)
            if problem is not None:
                return VerifyResult(False, walk.count, entry_id, problem, keyed=keyed)
        archived = checkpoint.entries if checkpoint else 0
        if info is None and (origin or archived):
            return VerifyResult(False, 0, None, "the audit stream is gone (the trail began at "
                                f"{origin or 'an archived entry'})", keyed=keyed)
        if info is not None and "entries-added" in info:
            added, present = int(info["entries-added"]), int(info["length"])
            if added - present != archived:
                return VerifyResult(False, walk.count, walk.last_id, f"{added - present - archived} entries were "
                                    f"removed from the stream ({added} ever added, {present} present, {archived} "
                                    "archived)", keyed=keyed)
        return VerifyResult(True, walk.count, chains=len(walk.moved), lost=walk.lost, checkpoint=checkpoint,
                            keyed=keyed)


def _row(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    return {"id": entry_id, "hash": fields.get("hash"), **json.loads(fields.get("data", "{}"))}
