#!/usr/bin/env python3
"""Mutation testing of the money path: cosmic-ray's mutations, applied to the files IN PLACE, one at a time.

The spine tests start real Celery workers (``celery -A worker.celery_app``, cwd = the repository root) and a
private redis-server, so a mutant must be in the real source file for those processes to run it: each mutant is
written over the module, the module's covering tests run in a fresh process group, and the original bytes are
put back (also on Ctrl-C, SIGTERM or a crash of this script; a copy of the original sits in
``reports/.mutants-inflight/`` while a mutant is applied and is put back at the next start if this script was
SIGKILLed). One mutant at a time: the working tree holds one version of each file, so there is no ``--jobs``.

    .venv/bin/python scripts/mutants.py                                  # every module in MONEY_PATH
    .venv/bin/python scripts/mutants.py --module worker/lease.py --limit 20

Writes ``reports/mutants.json``. ``reports/mutants-equivalent.json`` (optional, written by people) lists
survivors that are equivalent or harmless: ``[{"file", "line", "operator", "why"}]``; the ``why`` is copied into
the matching survivors' ``why_left``.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

# The money path: module -> the test files that cover it, fastest first (pytest stops at the first failure).
MONEY_PATH: dict[str, list[str]] = {
    "worker/lease.py": ["tests/spine/test_guards.py", "tests/spine/test_exactly_once.py"],
    "worker/ledger.py": ["tests/spine/test_ledger_and_audit.py", "tests/spine/test_guards.py"],
    "worker/intake.py": ["tests/spine/test_money.py", "tests/spine/test_intake.py", "tests/spine/test_execution.py",
                         "tests/spine/test_guards.py", "tests/spine/test_exactly_once.py"],
    "worker/execution.py": ["tests/spine/test_money.py", "tests/spine/test_guards.py", "tests/spine/test_execution.py",
                            "tests/spine/test_exactly_once.py", "tests/spine/test_purchase.py"],
    "worker/settle.py": ["tests/spine/test_money.py", "tests/spine/test_guards.py", "tests/spine/test_exactly_once.py",
                         "tests/spine/test_purchase.py"],
    "worker/claims.py": ["tests/spine/test_money.py", "tests/spine/test_exactly_once.py"],
    "worker/durability.py": ["tests/spine/test_exactly_once.py"],
    "worker/verify.py": ["tests/spine/test_guards.py", "tests/spine/test_exactly_once.py"],
    "tasks/ec2_reserved_instances.py": ["tests/spine/test_money.py", "tests/spine/test_guards.py",
                                        "tests/spine/test_exactly_once.py", "tests/spine/test_purchase.py"],
}

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "reports" / "mutants.json"
EQUIVALENT = ROOT / "reports" / "mutants-equivalent.json"
INFLIGHT = ROOT / "reports" / ".mutants-inflight"
PYTEST = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
GRACE_SECONDS = 20  # after SIGINT, how long pytest gets to tear its fixtures down (workers, redis) before SIGKILL


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM: unwind, restoring every file on the way out."""


@dataclass(frozen=True)
class Mutant:
    file: str
    line: int
    column: int
    operator: str
    operator_args: dict[str, Any]
    occurrence: int
    function: str | None


@dataclass
class ModuleResult:
    tests: list[str]
    mutants: int = 0
    skipped_annotations: int = 0
    tried: int = 0
    killed: int = 0
    survived: int = 0
    timeout: int = 0
    baseline_s: float = 0.0
    timeout_s: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    survivors: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "tests": self.tests,
            "mutants": self.mutants,
            "skipped_annotations": self.skipped_annotations,
            "tried": self.tried,
            "killed": self.killed,
            "survived": self.survived,
            "timeout": self.timeout,
            "kill_rate": kill_rate(self.killed + self.timeout, self.tried),
            "baseline_s": round(self.baseline_s, 1),
            "timeout_s": round(self.timeout_s, 1),
            "seconds_per_mutant": round(self.seconds / self.tried, 1) if self.tried else None,
            "error": self.error,
            "survivors": self.survivors,
        }


def kill_rate(killed: int, tried: int) -> float | None:
    return round(killed / tried, 4) if tried else None


# --- signals and the safety net -------------------------------------------------------------------------------


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    # Once: later signals are ignored so that the cleanup (stop the tests, restore the file) runs to its end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum).name)


def restore_inflight() -> list[str]:
    """Put back any original a killed run left in reports/.mutants-inflight/ (mirrors the repository's layout)."""
    restored = []
    if INFLIGHT.is_dir():
        for backup in sorted(p for p in INFLIGHT.rglob("*") if p.is_file()):
            target = ROOT / backup.relative_to(INFLIGHT)
            target.write_bytes(backup.read_bytes())
            backup.unlink()
            restored.append(str(target.relative_to(ROOT)))
        shutil.rmtree(INFLIGHT, ignore_errors=True)
    return restored


class applied:
    """Context manager: the mutated source is in ``path`` inside the block, the original bytes after it."""

    def __init__(self, path: Path, original: bytes, mutated: str) -> None:
        self.path, self.original, self.mutated = path, original, mutated
        self.backup = INFLIGHT / path.relative_to(ROOT)

    def __enter__(self) -> None:
        self.backup.parent.mkdir(parents=True, exist_ok=True)
        self.backup.write_bytes(self.original)
        self.path.write_text(self.mutated, encoding="utf-8")

    def __exit__(self, *_: object) -> None:
        self.path.write_bytes(self.original)
        self.backup.unlink(missing_ok=True)


# --- processes ------------------------------------------------------------------------------------------------


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc), including those in their own session like the Celery workers."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def stop_tests(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to pytest (its fixtures stop the workers and redis), then SIGKILL whatever is still there."""
    if proc.poll() is not None:
        return
    below = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=GRACE_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        pass
    below |= descendants(proc.pid) if proc.poll() is None else set()
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


def run_tests(tests: list[str], timeout: float | None) -> tuple[str, float, str]:
    """Run the test files; returns ("passed" | "failed" | "timeout", seconds, the output's tail)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no .pyc of a mutant may outlive it
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([*PYTEST, *tests], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
            outcome = "passed" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            outcome = "timeout"
        finally:
            stop_tests(proc)  # also on Ctrl-C: nothing of a test run outlives it
        out.seek(0)
        tail = out.read()[-3000:].decode(errors="replace")
    return outcome, time.monotonic() - started, tail


# --- mutants --------------------------------------------------------------------------------------------------


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(line, column) spans of every type annotation, columns in characters like cosmic-ray's positions."""
    lines = source.splitlines()

    def char_col(line: int, byte_col: int) -> int:
        return len(lines[line - 1].encode()[:byte_col].decode(errors="replace"))

    nodes: list[ast.expr] = []
    for node in ast.walk(ast.parse(source)):
        annotation = None
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotation = node.returns
        elif isinstance(node, ast.arg | ast.AnnAssign):
            annotation = node.annotation
        if annotation is not None:
            nodes.append(annotation)
    spans = []
    for n in nodes:
        start = (n.lineno, char_col(n.lineno, n.col_offset))
        end_line = n.end_lineno or n.lineno
        spans.append((start, (end_line, char_col(end_line, n.end_col_offset or 0))))
    return spans


def find_mutants(module: str) -> list[Mutant]:
    from cosmic_ray.commands.init import init
    from cosmic_ray.work_db import WorkDB, use_db

    with tempfile.TemporaryDirectory() as tmp, use_db(Path(tmp) / "session.sqlite", WorkDB.Mode.create) as db:
        init([ROOT / module], db, {})
        specs = [item.mutations[0] for item in db.work_items]
    mutants = [
        Mutant(module, s.start_pos[0], s.start_pos[1], s.operator_name, dict(s.operator_args or {}), s.occurrence,
               s.definition_name)
        for s in specs
    ]
    return sorted(mutants, key=lambda m: (m.line, m.column, m.operator, m.occurrence))


def in_annotation(mutant: Mutant, spans: list[tuple[tuple[int, int], tuple[int, int]]]) -> bool:
    return any(start <= (mutant.line, mutant.column) < end for start, end in spans)


def spread(items: list[Mutant], limit: int | None) -> list[Mutant]:
    """At most ``limit`` items, evenly spaced over the file (the same ones on every run of the same code)."""
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def mutate(source: str, mutant: Mutant) -> str | None:
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.plugins import get_operator

    operator = get_operator(mutant.operator)(**mutant.operator_args)
    mutated: str | None = mutate_code(source, operator, mutant.occurrence)
    return mutated


def unified_diff(module: str, before: str, after: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        f"a/{module}", f"b/{module}", n=1))


# --- equivalents ----------------------------------------------------------------------------------------------


def load_equivalents() -> dict[tuple[str, int, str], str]:
    if not EQUIVALENT.exists():
        return {}
    entries = json.loads(EQUIVALENT.read_text())
    return {(e["file"], int(e["line"]), short(e["operator"])): e["why"] for e in entries}


def short(operator: str) -> str:
    return operator.removeprefix("core/")


# --- the run --------------------------------------------------------------------------------------------------


def run_module(module: str, tests: list[str], args: argparse.Namespace, equivalents: dict[tuple[str, int, str], str],
               result: ModuleResult) -> None:
    path = ROOT / module
    original = path.read_bytes()
    source = original.decode("utf-8")
    every = find_mutants(module)
    spans = [] if args.include_annotations else annotation_spans(source)
    candidates = [m for m in every if not in_annotation(m, spans)]
    chosen = spread(candidates, args.limit)
    result.mutants, result.skipped_annotations = len(every), len(every) - len(candidates)
    print(f"\n{module}: {len(every)} mutants, {result.skipped_annotations} in type annotations skipped, "
          f"trying {len(chosen)} with {' '.join(tests)}", flush=True)

    outcome, result.baseline_s, tail = run_tests(tests, timeout=None)
    if outcome != "passed":
        result.error = "the tests fail without any mutant"
        print(f"  {result.error}; module skipped\n{tail}", flush=True)
        return
    result.timeout_s = args.timeout or max(60.0, 2 * result.baseline_s + 30)
    print(f"  baseline {result.baseline_s:.1f}s, per-mutant timeout {result.timeout_s:.0f}s", flush=True)

    started = time.monotonic()
    for n, mutant in enumerate(chosen, 1):
        mutated = mutate(source, mutant)
        if mutated is None:
            continue
        with applied(path, original, mutated):
            outcome, seconds, _ = run_tests(tests, result.timeout_s)
        result.tried += 1
        result.seconds = time.monotonic() - started
        status = {"failed": "killed", "timeout": "timeout", "passed": "SURVIVED"}[outcome]
        print(f"  [{n}/{len(chosen)}] {status:8} {seconds:6.1f}s  {module}:{mutant.line} {short(mutant.operator)}",
              flush=True)
        if outcome == "failed":
            result.killed += 1
        elif outcome == "timeout":
            result.timeout += 1
        else:
            result.survived += 1
            result.survivors.append({
                "file": module,
                "line": mutant.line,
                "operator": mutant.operator,
                "function": mutant.function,
                "diff": unified_diff(module, source, mutated),
                "why_left": equivalents.get((module, mutant.line, short(mutant.operator)), ""),
            })


def write_report(tool_version: str, started_at: datetime, results: dict[str, ModuleResult], interrupted: bool) -> None:
    totals = {k: sum(getattr(r, k) for r in results.values())
              for k in ("mutants", "skipped_annotations", "tried", "killed", "survived", "timeout")}
    explained = sum(1 for r in results.values() for s in r.survivors if s["why_left"])
    report = {
        "tool": "cosmic-ray",
        "version": tool_version,
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started_at).total_seconds(), 1),
        "interrupted": interrupted,
        "modules": {module: r.as_json() for module, r in results.items()},
        "totals": {**totals, "survived_explained": explained},
        "kill_rate": kill_rate(totals["killed"] + totals["timeout"], totals["tried"]),
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")


def print_summary(results: dict[str, ModuleResult]) -> None:
    def pct(killed: int, tried: int) -> str:
        return f"{100 * killed / tried:5.1f}%" if tried else "    -"

    width = max([len(m) for m in results] + [len("total")])
    print(f"\n{'module':{width}}  {'tried':>5}  {'killed':>6}  {'timeout':>7}  {'survived':>8}  {'kill':>6}  s/mutant")
    for module, r in results.items():
        per = f"{r.seconds / r.tried:8.1f}" if r.tried else "       -"
        print(f"{module:{width}}  {r.tried:5}  {r.killed:6}  {r.timeout:7}  {r.survived:8}  "
              f"{pct(r.killed + r.timeout, r.tried)}  {per}{'  ' + r.error if r.error else ''}")
    tried, killed, timeout, survived = (sum(getattr(r, k) for r in results.values())
                                        for k in ("tried", "killed", "timeout", "survived"))
    print(f"{'total':{width}}  {tried:5}  {killed:6}  {timeout:7}  {survived:8}  {pct(killed + timeout, tried)}")
    unexplained = [s for r in results.values() for s in r.survivors if not s["why_left"]]
    if unexplained:
        print(f"\n{len(unexplained)} survivor(s) without a why_left (diffs in {REPORT.relative_to(ROOT)}):")
        for s in unexplained:
            print(f"  {s['file']}:{s['line']} {s['operator']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", action="append", help="a module of MONEY_PATH (repeatable); default: all")
    parser.add_argument("--limit", type=int, help="try at most N mutants per module, spread evenly over the file")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default: 2 x the clean run + 30, >= 60)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="only 1: mutants are written into the working tree, which holds one at a time")
    parser.add_argument("--include-annotations", action="store_true",
                        help="also try mutants inside type annotations (skipped by default: mypy checks those)")
    args = parser.parse_args(argv)
    if args.jobs != 1:
        parser.error("--jobs must be 1: mutants are applied in place, and one working tree holds one mutant")
    for module in args.module or []:
        if module not in MONEY_PATH:
            parser.error(f"{module} is not in MONEY_PATH ({', '.join(MONEY_PATH)})")
    missing = [p for m in args.module or MONEY_PATH for p in [m, *MONEY_PATH[m]] if not (ROOT / p).is_file()]
    if missing:
        names = ", ".join(sorted(set(missing)))
        parser.error(f"not found (renamed? edit MONEY_PATH in {Path(__file__).name}): {names}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    for restored in restore_inflight():
        print(f"restored {restored} from a run that was killed with a mutant applied", file=sys.stderr)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    modules: list[str] = args.module or list(MONEY_PATH)
    equivalents = load_equivalents()
    started_at = datetime.now(UTC)
    results: dict[str, ModuleResult] = {}
    interrupted = False
    try:
        for module in modules:
            results[module] = ModuleResult(tests=MONEY_PATH[module])
            run_module(module, MONEY_PATH[module], args, equivalents, results[module])
            write_report(version("cosmic-ray"), started_at, results, interrupted=False)
    except Interrupted as signal_name:
        interrupted = True
        print(f"\ninterrupted ({signal_name}); every file is restored", file=sys.stderr)
    finally:
        restore_inflight()
    write_report(version("cosmic-ray"), started_at, results, interrupted)
    print_summary(results)
    used = {(s["file"], s["line"], short(s["operator"])) for r in results.values() for s in r.survivors}
    # With --limit not every mutant ran, so an entry that matched nothing may still be right.
    stale = [] if args.limit else [key for key in equivalents if key[0] in results and key not in used]
    for file, line, operator in stale:
        print(f"note: {EQUIVALENT.name} entry {file}:{line} {operator} matches no survivor of this run")
    print(f"\nreport: {REPORT.relative_to(ROOT)}")
    return 130 if interrupted else 1 if any(r.error for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
