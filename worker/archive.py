"""The audit archive: entries older than the retention are exported to JSON Lines files outside Redis, then trimmed.

One run verifies the entries it is about to export (from the current checkpoint), writes them to
``audit-<seq>.jsonl`` in ``COMMITD_AUDIT_ARCHIVE_DIR`` (first line: the checkpoint it starts from; then one line
per entry, its stream fields verbatim; last line: the new checkpoint, sealed with the key in keyed mode), makes the
file durable, and only then, in one script, moves Redis's checkpoint and trims the stream up to it. A trail that
does not verify is never archived. ``verify_archive`` checks the files: each starts where the previous ended, each
checkpoint matches its digest, the newest is the one in Redis, and (``full``) every entry in every file.

``run_archive`` is one run (a lock keeps runs one at a time); the intake's retention run calls it on its schedule
(``worker.retention``, every ``COMMITD_RETENTION_INTERVAL``), ``commitd audit archive`` on demand.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.audit import (
    GENESIS,
    HEAD_KEEP_MS,
    AuditKey,
    AuditLog,
    ChainWalk,
    Checkpoint,
    CheckpointInvalid,
    Unverifiable,
    canonical,
    id_key,
    now_iso,
)
from worker.logs import get_logger

# Entries per file. A run goes on batch after batch for at most RUN_SECONDS, so a backlog (retention just turned
# on) never holds the intake's loop for long: what is left goes at the next run.
ARCHIVE_BATCH = 20_000
RUN_SECONDS = 10.0
LOCK_MS = 600_000
log = get_logger("commitd.archive")

_TRIM = """
if (redis.call('HGET', KEYS[2], 'checkpoint') or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'checkpoint', ARGV[2], 'trimmed', ARGV[3])
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[4])
return 1
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
"""


class AuditBroken(RuntimeError):
    """The entries to archive do not verify: nothing was archived, the evidence stays in Redis."""

    def __init__(self, entry_id: str | None, reason: str) -> None:
        super().__init__(f"entry {entry_id}: {reason}" if entry_id else reason)
        self.entry_id = entry_id
        self.reason = reason


class ArchiveBusy(RuntimeError):
    """Another archive run holds the lock, or moved the checkpoint first."""


@dataclass(frozen=True)
class ArchiveResult:
    path: Path | None
    entries: int
    checkpoint: Checkpoint | None
    more: bool = False


def file_name(seq: int) -> str:
    return f"audit-{seq:08d}.jsonl"


def _successor(entry_id: str) -> str:
    ms, seq = id_key(entry_id)
    return f"{ms}-{seq + 1}"


def _checkpoint_line(name: str, checkpoint: Checkpoint | None) -> str:
    return canonical({name: json.loads(checkpoint.to_json()) if checkpoint else None}) + "\n"


def archive(audit: AuditLog, directory: Path, before_ms: int, batch: int = ARCHIVE_BATCH,
            adopt_unkeyed: bool = False) -> ArchiveResult:
    """Archive the entries Redis added up to ``before_ms`` (at most ``batch`` of them) and trim them.
    ``adopt_unkeyed``: in keyed mode, accept entries and a checkpoint without HMAC (written before the key was
    set) and seal them under the new, keyed checkpoint."""
    key = audit.key
    raw = audit.redis.hget(audit.meta_key, "checkpoint")
    start = Checkpoint.from_json(raw) if raw is not None else None
    try:
        if start is not None:
            start.check(key, strict=not adopt_unkeyed)
    except CheckpointInvalid as exc:
        raise AuditBroken(None, f"the checkpoint in Redis: {exc}") from None
    walk = ChainWalk(key, start.heads if start else None, strict=not adopt_unkeyed)
    seq = (start.seq if start else 0) + 1
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / file_name(seq)
    partial = directory / f".{final.name}.partial"
    try:
        with partial.open("w", encoding="utf-8") as out:
            out.write(_checkpoint_line("from_checkpoint", start))
            # Up to and including before_ms: an entry Redis adds in that millisecond after this read gets a later
            # id than the last one archived, and the trim stops at that id.
            for entry_id, fields in audit.entries(after=start.last_id if start else None, until=str(before_ms)):
                problem = walk.check(entry_id, fields)
                if problem is not None:
                    raise AuditBroken(entry_id, problem)
                out.write(canonical({"id": entry_id, **fields}) + "\n")
                if walk.count >= batch:
                    break
            if walk.count == 0 or walk.last_id is None:
                partial.unlink()
                return ArchiveResult(None, 0, start)
            kept_from = before_ms - HEAD_KEEP_MS
            end = Checkpoint(seq, walk.last_id, (start.entries if start else 0) + walk.count,
                             walk.kept_heads(kept_from), start.digest if start else GENESIS, kept_from,
                             now_iso()).sealed(key)
            out.write(_checkpoint_line("checkpoint", end))
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, final)
        _fsync_dir(directory)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    trim = audit.redis.register_script(_TRIM)
    if not trim(keys=[audit.stream, audit.meta_key],
                args=[raw or "", end.to_json(), end.last_id, _successor(end.last_id)]):
        final.unlink(missing_ok=True)
        raise ArchiveBusy("another archive run moved the checkpoint first")
    log.info("audit_archived", file=str(final), entries=walk.count, checkpoint=end.seq, last_id=end.last_id)
    return ArchiveResult(final, walk.count, end, more=walk.count >= batch)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ArchiveRun:
    """What one run did: the files written (one per batch), the checkpoint Redis now holds, whether entries old
    enough are left (the run's time was up), and why it stopped if the trail did not verify (``refused``)."""

    files: tuple[ArchiveResult, ...]
    checkpoint: Checkpoint | None
    more: bool = False
    refused: AuditBroken | None = None

    @property
    def entries(self) -> int:
        return sum(f.entries for f in self.files)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"entries": self.entries, "files": [str(f.path) for f in self.files], "more": self.more}
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint.seq
        if self.refused is not None:
            out["refused"] = str(self.refused)
        return out


def run_archive(runtime: Any, retention_days: float | None = None, directory: Path | None = None,
                seconds: float | None = RUN_SECONDS, adopt_unkeyed: bool = False,
                batch: int = ARCHIVE_BATCH) -> ArchiveRun:
    """Archive every entry older than the retention (Redis's clock decides), batch after batch, under a lock, for
    at most ``seconds`` (None: until done). The scheduled run is the retention run's (``worker.retention``, from
    the intake's loop). A trail that does not verify stops the run: logged as ``audit_archive_refused`` and
    returned in ``refused``. Raises ArchiveBusy if another run holds the lock."""
    settings = runtime.settings
    directory = directory or settings.audit_archive_dir
    if directory is None:
        raise ValueError("no archive directory: set COMMITD_AUDIT_ARCHIVE_DIR")
    days = settings.audit_retention_days if retention_days is None else retention_days
    client = runtime.redis
    lock, token = runtime.key("audit", "archive", "lock"), secrets.token_hex(8)
    if not client.set(lock, token, nx=True, px=LOCK_MS):
        raise ArchiveBusy("another archive run holds the lock")
    started = time.monotonic()
    files: list[ArchiveResult] = []
    try:
        now_s, micros = client.time()
        before_ms = int(now_s * 1000 + micros // 1000 - days * 86_400_000)
        while True:
            try:
                result = archive(runtime.audit, Path(directory), before_ms, batch, adopt_unkeyed)
            except AuditBroken as exc:
                log.error("audit_archive_refused", entry_id=exc.entry_id, reason=exc.reason)
                return ArchiveRun(tuple(files), runtime.audit.checkpoint(), refused=exc)
            if result.path is not None:
                files.append(result)
            out_of_time = seconds is not None and time.monotonic() - started > seconds
            if not result.more or out_of_time:
                return ArchiveRun(tuple(files), result.checkpoint, more=result.more)
    finally:
        client.register_script(_UNLOCK)(keys=[lock], args=[token])


# --- verifying the archive -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchiveCheck:
    ok: bool
    files: int
    entries: int = 0
    file: str | None = None
    reason: str | None = None
    unverifiable: bool = False
    first_seq: int | None = None


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            yield number, json.loads(line)


def _last_line(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        size = min(end, 4096)
        while True:
            f.seek(end - size)
            tail = f.read(size).rstrip(b"\n")
            if b"\n" in tail or size == end:
                return tail.rsplit(b"\n", 1)[-1].decode()
            size = min(end, size * 2)


def _ends(path: Path) -> tuple[Checkpoint | None, Checkpoint]:
    with path.open(encoding="utf-8") as f:
        first = json.loads(f.readline())["from_checkpoint"]
    last = json.loads(_last_line(path))["checkpoint"]
    return (Checkpoint.from_dict(first) if first else None), Checkpoint.from_dict(last)


def _walk_file(path: Path, key: AuditKey | None, start: Checkpoint | None, end: Checkpoint) -> int:
    """Every entry of one file, from its first checkpoint to its last; raises AuditBroken."""
    walk = ChainWalk(key, start.heads if start else None, strict=False)  # the file's checkpoint pins them
    after = id_key(start.last_id) if start else (0, 0)
    for number, line in _lines(path):
        if "id" not in line:
            continue
        entry_id = str(line.pop("id"))
        if id_key(entry_id) <= after:
            raise AuditBroken(entry_id, f"line {number}: out of order")
        after = id_key(entry_id)
        problem = walk.check(entry_id, {str(k): str(v) for k, v in line.items()})
        if problem is not None:
            raise AuditBroken(entry_id, f"line {number}: {problem}")
    if walk.last_id != end.last_id or (start.entries if start else 0) + walk.count != end.entries:
        raise AuditBroken(None, "its entries are not the ones its checkpoint counts (entries removed or added)")
    if walk.kept_heads(end.kept_from) != end.heads:
        raise AuditBroken(None, "its checkpoint's chain heads do not match its entries (altered)")
    return walk.count


def verify_archive(directory: Path, key: AuditKey | None, current: Checkpoint | None,
                   full: bool = False) -> ArchiveCheck:
    """Check the archive files against each other and against Redis's checkpoint ``current``: each file starts
    from the checkpoint the previous one ended with, every checkpoint matches its digest (its HMAC in keyed
    mode; after the first keyed checkpoint, every later one must be keyed), and the newest is ``current``. With
    ``full``, every entry of every file too."""
    if not directory.is_dir():
        return ArchiveCheck(False, 0, reason=f"no archive directory {directory} here", unverifiable=True)
    paths = sorted(directory.glob("audit-*.jsonl"))
    previous: Checkpoint | None = None
    keyed_seen = False
    entries = 0
    first_seq = None
    for path in paths:
        try:
            start, end = _ends(path)
            if previous is None:
                first_seq = end.seq
                if start is not None:
                    start.check(key, strict=False)  # older files were removed: the archive begins here
            elif start is None or start.digest != previous.digest or start != previous:
                raise AuditBroken(None, f"it does not start where {file_name(previous.seq)} ended")
            if path.name != file_name(end.seq) or end.prev != (start.digest if start else GENESIS):
                raise AuditBroken(None, "its checkpoint does not follow the one it starts from")
            end.check(key, strict=keyed_seen)
            keyed_seen = keyed_seen or end.k is not None
            if full:
                entries += _walk_file(path, key, start, end)
        except (CheckpointInvalid, AuditBroken) as exc:
            return ArchiveCheck(False, len(paths), entries, path.name, str(exc), first_seq=first_seq)
        except Unverifiable as exc:
            return ArchiveCheck(False, len(paths), entries, path.name, str(exc), unverifiable=True)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            return ArchiveCheck(False, len(paths), entries, path.name, f"unreadable ({type(exc).__name__})")
        previous = end
    if previous is None and current is not None:
        return ArchiveCheck(False, 0, 0, None, f"no archive file holds Redis's checkpoint #{current.seq}")
    if previous is not None and current is None:
        return ArchiveCheck(False, len(paths), entries, file_name(previous.seq),
                            "Redis has no checkpoint, but the archive has: Redis's was removed")
    if previous is not None and current is not None and previous != current:
        where = ("files after it are missing" if current.seq > previous.seq else
                 "Redis's checkpoint differs from the archive's (altered or rolled back)")
        return ArchiveCheck(False, len(paths), entries, file_name(previous.seq),
                            f"Redis's checkpoint is #{current.seq}, the newest file ends at #{previous.seq}: {where}")
    return ArchiveCheck(True, len(paths), entries, first_seq=first_seq)
