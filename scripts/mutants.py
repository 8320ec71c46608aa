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
    .venv/bin/python scripts/mutants.py --sample 40 --seed 14            # 40 random mutants over the money path
    .venv/bin/python scripts/mutants.py --mutant worker/lease.py:144     # the mutants of one line (a survivor)

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
import random
import re
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
    "worker/lease.py": ["tests/spine/test_mutant_guards.py", "tests/spine/test_guards.py",
                        "tests/spine/test_exactly_once.py"],
    "worker/ledger.py": ["tests/spine/test_ledger_and_audit.py", "tests/spine/test_guards.py"],
    "worker/intake.py": ["tests/spine/test_mutant_guards.py", "tests/spine/test_money.py", "tests/spine/test_intake.py",
                         "tests/spine/test_execution.py", "tests/spine/test_guards.py",
                         "tests/spine/test_exactly_once.py"],
    "worker/execution.py": ["tests/spine/test_money.py", "tests/spine/test_guards.py", "tests/spine/test_execution.py",
                            "tests/spine/test_exactly_once.py", "tests/spine/test_purchase.py",
                            "tests/spine/test_spend_caps.py", "tests/spine/test_controls.py"],
    # The controls a person sets: spend caps (reserved before the intent and the send), approvals, cancel and pause.
    "worker/budgets.py": ["tests/spine/test_spend_caps.py", "tests/spine/test_controls.py"],
    "worker/approvals.py": ["tests/spine/test_controls.py"],
    "worker/controls.py": ["tests/spine/test_controls.py", "tests/spine/test_spend_caps.py",
                           "tests/spine/test_dry_run_config.py"],
    "worker/settle.py": ["tests/spine/test_money.py", "tests/spine/test_guards.py", "tests/spine/test_exactly_once.py",
                         "tests/spine/test_purchase.py"],
    "worker/claims.py": ["tests/spine/test_money.py", "tests/spine/test_exactly_once.py"],
    "worker/durability.py": ["tests/spine/test_exactly_once.py", "tests/spine/test_redis_sentinel.py"],
    "worker/verify.py": ["tests/spine/test_guards.py", "tests/spine/test_exactly_once.py"],
    "tasks/ec2_reserved_instances.py": ["tests/spine/test_mutant_guards.py", "tests/families/test_ceilings_bite.py",
                                        "tests/spine/test_money.py", "tests/spine/test_guards.py",
                                        "tests/spine/test_exactly_once.py", "tests/spine/test_purchase.py",
                                        "tests/families/test_ec2_ri_lifecycle.py"],
    # Every other action: its ceilings and price checks (prepare), what it sends (submit) and reconciliation, with
    # the family's tests (each runs the action's plans through intake, a worker and the sandbox).
    "tasks/_reserved_by_id.py": ["tests/families/test_ceilings_bite.py", "tests/families/test_rds_elasticache.py",
                                 "tests/families/test_savings_plans.py"],
    "tasks/rds_reservations.py": ["tests/families/test_ceilings_bite.py", "tests/families/test_rds_elasticache.py"],
    "tasks/elasticache_reservations.py": ["tests/families/test_rds_elasticache.py"],
    "tasks/savings_plans.py": ["tests/families/test_savings_plans.py"],
    "tasks/ec2_ri_exchange.py": ["tests/families/test_reconcile_bites.py", "tests/families/test_ec2_ri_lifecycle.py"],
    "tasks/ec2_ri_marketplace.py": ["tests/families/test_ec2_ri_lifecycle.py"],
    "tasks/ec2_capacity_reservations.py": ["tests/families/test_ec2_capacity_reservations.py"],
    "tasks/ec2_host_reservations.py": ["tests/families/test_ec2_host_reservations.py"],
    "tasks/ec2_scheduled_instances.py": ["tests/families/test_ec2_scheduled_instances.py"],
    "tasks/ec2_spot.py": ["tests/families/test_ec2_spot.py"],
    "tasks/opensearch_reservations.py": ["tests/families/test_ceilings_bite.py",
                                         "tests/families/test_opensearch_reservations.py"],
    "tasks/redshift_reservations.py": ["tests/families/test_ceilings_bite.py",
                                       "tests/families/test_redshift_reservations.py"],
    "tasks/org_transfer.py": ["tests/families/test_org_transfer.py"],
}
# Functions left out of the money path: an action's dry run reads and reports, it never sends.
NOT_MONEY_FUNCTIONS = frozenset({"dry_run"})

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

    @property
    def key(self) -> str:
        return f"{self.file}:{self.line}:{short(self.operator)}:{self.occurrence}"


@dataclass
class ModuleResult:
    tests: list[str]
    mutants: int = 0
    skipped_annotations: int = 0
    tried: int = 0
    killed: int = 0
    survived: int = 0
    timeout: int = 0
    invalid: int = 0  # mutants that are not Python (cosmic-ray's parso edits, e.g. ``{**d}`` -> ``{%d}``): not tried
    baseline_s: float = 0.0
    timeout_s: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    survivors: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)  # every mutant tried: outcome, seconds, failing test

    def as_json(self) -> dict[str, Any]:
        return {
            "tests": self.tests,
            "mutants": self.mutants,
            "skipped_annotations": self.skipped_annotations,
            "tried": self.tried,
            "killed": self.killed,
            "survived": self.survived,
            "timeout": self.timeout,
            "invalid": self.invalid,
            "kill_rate": kill_rate(self.killed + self.timeout, self.tried),
            "baseline_s": round(self.baseline_s, 1),
            "timeout_s": round(self.timeout_s, 1),
            "seconds_per_mutant": round(self.seconds / self.tried, 1) if self.tried else None,
            "error": self.error,
            "survivors": self.survivors,
            "runs": self.runs,
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
    # No .pyc of a mutant may outlive it; every process the tests start imports this tree (not an editable
    # install of another checkout).
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
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


def function_spans(source: str, names: frozenset[str]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(line, column) spans of every function or method called one of ``names``, decorators included."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in names:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            spans.append(((first, 0), ((node.end_lineno or node.lineno) + 1, 0)))
    return spans


def in_annotation(mutant: Mutant, spans: list[tuple[tuple[int, int], tuple[int, int]]]) -> bool:
    return any(start <= (mutant.line, mutant.column) < end for start, end in spans)


def candidates(module: str, include_annotations: bool) -> tuple[list[Mutant], int]:
    """The module's mutants on the money path (not in a type annotation, not in NOT_MONEY_FUNCTIONS), and how many
    mutants it has in all."""
    source = (ROOT / module).read_text(encoding="utf-8")
    every = find_mutants(module)
    spans = [] if include_annotations else annotation_spans(source)
    spans += function_spans(source, NOT_MONEY_FUNCTIONS)
    return [m for m in every if not in_annotation(m, spans)], len(every)


def matches(mutant: Mutant, wanted: list[str]) -> bool:
    """``wanted``: FILE:LINE[:OPERATOR] (operator without ``core/``), e.g. worker/lease.py:144:ReplaceComparisonOp"""
    for spec in wanted:
        file, line, *operator = spec.split(":")
        if (mutant.file == file and mutant.line == int(line)
                and (not operator or short(mutant.operator).startswith(operator[0]))):
            return True
    return False


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


def parses(source: str) -> bool:
    try:
        ast.parse(source)
    except SyntaxError:
        return False
    return True


def unified_diff(module: str, before: str, after: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        f"a/{module}", f"b/{module}", n=1))


def survivor_key(survivor: dict[str, Any]) -> str:
    """The key of the mutant a survivor entry describes (as in its run's ``mutant``)."""
    return f"{survivor['file']}:{survivor['line']}:{short(survivor['operator'])}:{survivor.get('occurrence')}"


def changed_lines(diff: str) -> list[str]:
    """A diff's body: the lines removed and added with their context, without the headers (line numbers)."""
    return [line for line in diff.splitlines() if line[:1] in "-+ " and not line.startswith(("---", "+++"))]


def moved_mutant(module: str, survivor: dict[str, Any], mutants: list[Mutant]) -> Mutant | None:
    """The survivor's mutant in code that changed above it (its line moved): the same operator and the same edit of
    the same text between the same neighbours. None when there is no such mutant, or more than one."""
    source = (ROOT / module).read_text(encoding="utf-8")
    wanted = changed_lines(survivor.get("diff", ""))
    found = []
    for mutant in mutants:
        if mutant.operator != survivor["operator"]:
            continue
        mutated = mutate(source, mutant)
        if mutated is not None and changed_lines(unified_diff(module, source, mutated)) == wanted:
            found.append(mutant)
    return found[0] if len(found) == 1 else None


# --- equivalents ----------------------------------------------------------------------------------------------


def load_equivalents() -> dict[tuple[str, int, str], str]:
    if not EQUIVALENT.exists():
        return {}
    entries = json.loads(EQUIVALENT.read_text())
    return {(e["file"], int(e["line"]), short(e["operator"])): e["why"] for e in entries}


def is_equivalent(survivor: dict[str, Any]) -> bool:
    """The equivalents file's reasons start with "equivalent:" (the same program) or "harmless:" (a real
    difference that cannot cost money); only the first are left out of the score."""
    return str(survivor.get("why_left", "")).startswith("equivalent")


def short(operator: str) -> str:
    return operator.removeprefix("core/")


# --- the run --------------------------------------------------------------------------------------------------


_CLEAN_RUNS: dict[tuple[str, ...], float] = {}  # test files seen passing without a mutant in this run: seconds


def prepare_module(module: str, args: argparse.Namespace, result: ModuleResult, chosen: int) -> bool:
    """The module's clean run (its tests must pass without a mutant; once per list of test files) and the
    per-mutant timeout from it."""
    print(f"\n{module}: {result.mutants} mutants, {result.skipped_annotations} skipped (type annotations, "
          f"{', '.join(sorted(NOT_MONEY_FUNCTIONS))}), trying {chosen} with {' '.join(result.tests)}", flush=True)
    if args.no_baseline:
        result.timeout_s = args.timeout
    elif tuple(result.tests) in _CLEAN_RUNS:
        result.baseline_s = _CLEAN_RUNS[tuple(result.tests)]
        result.timeout_s = args.timeout or max(60.0, 2 * result.baseline_s + 30)
    else:
        outcome, result.baseline_s, tail = run_tests(result.tests, timeout=None)
        if outcome != "passed":
            result.error = "the tests fail without any mutant"
            print(f"  {result.error}; module skipped\n{tail}", flush=True)
            return False
        _CLEAN_RUNS[tuple(result.tests)] = result.baseline_s
        result.timeout_s = args.timeout or max(60.0, 2 * result.baseline_s + 30)
    print(f"  baseline {result.baseline_s:.1f}s, per-mutant timeout {result.timeout_s:.0f}s", flush=True)
    return True


def run_mutant(mutant: Mutant, equivalents: dict[tuple[str, int, str], str], result: ModuleResult,
               label: str) -> None:
    module = mutant.file
    path = ROOT / module
    original = path.read_bytes()
    source = original.decode("utf-8")
    mutated = mutate(source, mutant)
    if mutated is None:
        return
    if not parses(mutated):
        # Not a bug anyone could write: the import fails and every test with it, which would count as a kill.
        result.invalid += 1
        print(f"  {label} invalid  (not Python)  {module}:{mutant.line} {short(mutant.operator)}", flush=True)
        return
    with applied(path, original, mutated):
        outcome, seconds, tail = run_tests(result.tests, result.timeout_s)
    result.tried += 1
    result.seconds += seconds
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", tail, re.MULTILINE)
    result.runs.append({"mutant": mutant.key, "outcome": outcome, "seconds": round(seconds, 1),
                        "killed_by": failed[0] if failed else None})
    status = {"failed": "killed", "timeout": "timeout", "passed": "SURVIVED"}[outcome]
    print(f"  {label} {status:8} {seconds:6.1f}s  {module}:{mutant.line} {short(mutant.operator)}", flush=True)
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
            "occurrence": mutant.occurrence,
            "function": mutant.function,
            "diff": unified_diff(module, source, mutated),
            "why_left": equivalents.get((module, mutant.line, short(mutant.operator)), ""),
        })


def write_report(tool_version: str, started_at: datetime, results: dict[str, ModuleResult], interrupted: bool,
                 selection: dict[str, Any]) -> None:
    totals = {k: sum(getattr(r, k) for r in results.values())
              for k in ("mutants", "skipped_annotations", "tried", "killed", "survived", "timeout", "invalid")}
    explained = sum(1 for r in results.values() for s in r.survivors if s["why_left"])
    equivalent = sum(1 for r in results.values() for s in r.survivors if is_equivalent(s))
    report = {
        "tool": "cosmic-ray",
        "version": tool_version,
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started_at).total_seconds(), 1),
        "interrupted": interrupted,
        "selection": selection,
        "modules": {module: r.as_json() for module, r in results.items()},
        "totals": {**totals, "survived_explained": explained, "survived_equivalent": equivalent},
        "kill_rate": kill_rate(totals["killed"] + totals["timeout"], totals["tried"]),
        # An equivalent mutant is the same program: no test can kill it, so the score leaves it out.
        "kill_rate_excluding_equivalent": kill_rate(totals["killed"] + totals["timeout"], totals["tried"] - equivalent),
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
    parser.add_argument("--sample", type=int, metavar="N",
                        help="try N mutants drawn at random from the whole money path (or the --module ones)")
    parser.add_argument("--seed", type=int, default=14, help="the random seed of --sample (default 14)")
    parser.add_argument("--mutant", action="append", metavar="FILE:LINE[:OPERATOR]",
                        help="only the mutants of this line (and operator, a prefix without core/); repeatable")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help=f"try again each unexplained survivor of {REPORT.name} (of --module only, if given) with "
                             "MONEY_PATH's tests as they are now, after new tests were written, and update that report")
    parser.add_argument("--rematch", action="store_true",
                        help=f"run nothing: copy the reasons of {EQUIVALENT.name} into {REPORT.name}'s survivors")
    parser.add_argument("--list", action="store_true", help="print the chosen mutants (diffs) and run nothing")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip each module's clean run (only when its tests were just seen to pass); "
                             "needs --timeout")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default: 2 x the clean run + 30, >= 60)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="only 1: mutants are written into the working tree, which holds one at a time")
    parser.add_argument("--include-annotations", action="store_true",
                        help="also try mutants inside type annotations (skipped by default: mypy checks those)")
    args = parser.parse_args(argv)
    if args.no_baseline and not args.timeout:
        parser.error("--no-baseline needs --timeout (the clean run is what the timeout is derived from)")
    if args.sample is not None and args.limit is not None:
        parser.error("--sample and --limit choose mutants in two different ways: give one")
    for spec in args.mutant or []:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit():
            parser.error(f"--mutant {spec}: expected FILE:LINE[:OPERATOR]")
    if args.mutant and not args.module:
        args.module = sorted({spec.split(":")[0] for spec in args.mutant})
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


def rematch() -> int:
    """After triage: the reasons now in the equivalents file onto the last report's survivors."""
    equivalents = load_equivalents()
    report = json.loads(REPORT.read_text())
    for name, module in report["modules"].items():
        source = (ROOT / name).read_text(encoding="utf-8")
        by_key = {m.key: m for m in find_mutants(name)} if module["runs"] else {}
        for run in module["runs"]:
            mutant = by_key.get(run["mutant"])
            if run["outcome"] != "invalid" and mutant is not None and not parses(mutate(source, mutant) or source):
                bucket = {"failed": "killed", "timeout": "timeout", "passed": "survived"}[run["outcome"]]
                module[bucket] -= 1
                module["tried"] -= 1
                module["invalid"] = module.get("invalid", 0) + 1
                run["outcome"] = "invalid"
        module["kill_rate"] = kill_rate(module["killed"] + module["timeout"], module["tried"])
    for key in ("tried", "killed", "survived", "timeout", "invalid"):
        report["totals"][key] = sum(m.get(key, 0) for m in report["modules"].values())
    report["kill_rate"] = kill_rate(report["totals"]["killed"] + report["totals"]["timeout"],
                                    report["totals"]["tried"])
    for module in report["modules"].values():
        for survivor in module["survivors"]:
            survivor["why_left"] = equivalents.get(
                (survivor["file"], survivor["line"], short(survivor["operator"])), survivor["why_left"])
    survivors = [s for m in report["modules"].values() for s in m["survivors"]]
    report["totals"]["survived_explained"] = sum(1 for s in survivors if s["why_left"])
    report["totals"]["survived_equivalent"] = equivalent = sum(1 for s in survivors if is_equivalent(s))
    report["kill_rate_excluding_equivalent"] = kill_rate(
        report["totals"]["killed"] + report["totals"]["timeout"], report["totals"]["tried"] - equivalent)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    for s in survivors:
        print(f"{s['file']}:{s['line']} {short(s['operator'])}: {s['why_left'] or 'NO REASON YET'}")
    print(f"{report['totals']['survived_explained']} of {len(survivors)} survivors explained; kill rate "
          f"{report['kill_rate']}, {report['kill_rate_excluding_equivalent']} without the {equivalent} equivalent")
    return 0


def rerun_survivors(args: argparse.Namespace) -> int:
    """The triage loop: a survivor whose new test now kills it becomes a kill (``rerun`` in its run); the others
    stay, with the reasons of the equivalents file."""
    equivalents = load_equivalents()
    report = json.loads(REPORT.read_text())
    report.setdefault("reruns", []).append(datetime.now(UTC).isoformat(timespec="seconds"))
    explained = {(s["file"], s["line"], short(s["operator"])) for m in report["modules"].values()
                 for s in m["survivors"] if s["why_left"]} | set(equivalents)
    for name, module in report["modules"].items():
        if args.module and name not in args.module:
            continue
        # A survivor already explained (equivalent or harmless) is not tried again: no test is meant to kill it.
        pending = [run for run in module["runs"] if run["outcome"] == "passed"
                   and tuple(run["mutant"].split(":")[:3]) not in {(f, str(n), o) for f, n, o in explained}]
        if args.mutant:
            pending = [run for run in pending
                       if any(run["mutant"].startswith(":".join(spec.split(":")[:2]) + ":") for spec in args.mutant)]
        if not pending:
            continue
        result = ModuleResult(tests=MONEY_PATH[name], mutants=module["mutants"])
        if not prepare_module(name, args, result, len(pending)):
            continue
        found = find_mutants(name)
        by_key = {m.key: m for m in found}
        survivors = {survivor_key(s): s for s in module["survivors"]}
        for run in pending:
            reported = run["mutant"]
            mutant = by_key.get(reported)
            if mutant is None and reported in survivors:  # code added above it since: find it by its edit
                mutant = moved_mutant(name, survivors[reported], found)
                if mutant is not None:
                    print(f"  {run['mutant']}: now at line {mutant.line}", flush=True)
            if mutant is None:
                print(f"  {run['mutant']}: no such mutant in the code as it is now; left as it was", flush=True)
                continue
            again = ModuleResult(tests=result.tests, timeout_s=result.timeout_s)
            run_mutant(mutant, equivalents, again, "[rerun]")
            if again.survived:
                continue
            outcome = again.runs[-1]
            module["survived"] -= 1
            module["killed" if outcome["outcome"] == "failed" else "timeout"] += 1
            run.update(outcome, rerun=True, **({"first_run_as": reported} if outcome["mutant"] != reported else {}))
            module["survivors"] = [s for s in module["survivors"] if survivor_key(s) != reported]
        module["tests"] = result.tests
        module["kill_rate"] = kill_rate(module["killed"] + module["timeout"], module["tried"])
        REPORT.write_text(json.dumps(report, indent=2) + "\n")
    for key in ("tried", "killed", "survived", "timeout"):
        report["totals"][key] = sum(m.get(key, 0) for m in report["modules"].values())
    report["kill_rate"] = kill_rate(report["totals"]["killed"] + report["totals"]["timeout"],
                                    report["totals"]["tried"])
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    return rematch()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rematch:
        return rematch()
    if args.rerun_survivors:
        os.chdir(ROOT)
        for restored in restore_inflight():
            print(f"restored {restored} from a run that was killed with a mutant applied", file=sys.stderr)
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        try:
            return rerun_survivors(args)
        except Interrupted:
            print("\ninterrupted; every file is restored", file=sys.stderr)
            return 130
        finally:
            restore_inflight()
    os.chdir(ROOT)
    for restored in restore_inflight():
        print(f"restored {restored} from a run that was killed with a mutant applied", file=sys.stderr)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    modules: list[str] = [m for m in MONEY_PATH if m in (args.module or MONEY_PATH)]
    equivalents = load_equivalents()
    started_at = datetime.now(UTC)
    results: dict[str, ModuleResult] = {}
    chosen: dict[str, list[Mutant]] = {}
    population = 0
    for module in modules:
        found, every = candidates(module, args.include_annotations)
        results[module] = ModuleResult(tests=MONEY_PATH[module], mutants=every, skipped_annotations=every - len(found))
        if args.mutant:
            found = [m for m in found if matches(m, args.mutant)]
        population += len(found)
        chosen[module] = found if args.sample is not None else spread(found, args.limit)
    selection: dict[str, Any] = {"modules": len(modules), "population": population, "mutant": args.mutant}
    if args.sample is not None:
        # One draw over every module's mutants: each mutant of the money path is as likely as any other. They run
        # in the order drawn, so a run cut short is still a random sample (of fewer mutants).
        pool = [m for module in modules for m in chosen[module]]
        order = random.Random(args.seed).sample(pool, min(args.sample, len(pool)))
        chosen = {module: [m for m in order if m.file == module] for module in modules}
        selection |= {"sample": args.sample, "seed": args.seed}
    else:
        order = [m for module in modules for m in chosen[module]]
        selection |= {"limit_per_module": args.limit}

    if args.list:
        for module in modules:
            source = (ROOT / module).read_text(encoding="utf-8")
            for m in chosen[module]:
                print(f"{m.key}  ({m.function})\n{unified_diff(module, source, mutate(source, m) or source)}")
        print(f"{sum(map(len, chosen.values()))} chosen of {population}")
        return 0

    def checkpoint() -> None:  # after each mutant: a run cut short still leaves its figures
        write_report(version("cosmic-ray"), started_at, results, False, selection)

    for module in modules:
        if not chosen[module] and (args.sample is not None or args.mutant):
            del results[module]  # not drawn: no clean run, no line in the report
    ready: dict[str, bool] = {}
    interrupted = False
    try:
        for n, mutant in enumerate(order, 1):
            result = results[mutant.file]
            if mutant.file not in ready:
                ready[mutant.file] = prepare_module(mutant.file, args, result, len(chosen[mutant.file]))
                checkpoint()
            if ready[mutant.file]:
                run_mutant(mutant, equivalents, result, f"[{n}/{len(order)}]")
                checkpoint()
    except Interrupted as signal_name:
        interrupted = True
        print(f"\ninterrupted ({signal_name}); every file is restored", file=sys.stderr)
    finally:
        restore_inflight()
    write_report(version("cosmic-ray"), started_at, results, interrupted, selection)
    print_summary(results)
    used = {(s["file"], s["line"], short(s["operator"])) for r in results.values() for s in r.survivors}
    # With --limit, --sample or --mutant not every mutant ran, so an entry that matched nothing may still be right.
    partial = args.limit or args.sample is not None or args.mutant
    stale = [] if partial else [key for key in equivalents if key[0] in results and key not in used]
    for file, line, operator in stale:
        print(f"note: {EQUIVALENT.name} entry {file}:{line} {operator} matches no survivor of this run")
    print(f"\nreport: {REPORT.relative_to(ROOT)}")
    return 130 if interrupted else 1 if any(r.error for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
