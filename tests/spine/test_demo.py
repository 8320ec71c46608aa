"""`commitd demo` end to end, as a user runs it: no Redis answers, so it starts (and stops) its own.

The assertions read what the demo reports *after* the plans ran — its final table (the state the ledger holds
for each plan), the sandbox's ground truth and the audit verification — never the lines it prints when it
submits a plan, which say only what it expects."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.spine.conftest import ROOT, free_port

# plan id → (final state, pattern its "result" cell must match), as the final table reports them.
OUTCOMES = {
    "demo-regional-no-upfront": ("succeeded", r"\S+  2 x, upfront \S+ USD, \S+ USD/h each"),
    "demo-zonal-all-upfront": ("succeeded", r"\S+  1 x, upfront \S+ USD, \S+ USD/h each"),
    "demo-above-ceiling": ("failed", r"PriceAboveCeiling: .*nothing was bought"),
    "demo-dry-run": ("succeeded", r"dry run: would buy 5 x \S+ \(AWS answer: DryRunOperation\); nothing bought"),
    "demo-invalid-count": ("rejected", r"InvalidPlan: params\.instance_count: .*"),
    "demo-throttled-once": ("succeeded", r"\S+  4 x, upfront \S+ USD, \S+ USD/h each"),
}
BOUGHT = 3  # reserved instances really bought: the regional, the zonal and the throttled-once plans
TABLE_ROW = re.compile(r"^(?P<plan_id>\S+) +(?P<expected>\S+) +(?P<actual>\S+) +(?P<ok>[✓✗]) +(?P<result>.*)$")


def final_table(out: str) -> dict[str, dict[str, str]]:
    """The rows of the table the demo prints once every plan has settled, by plan id."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if re.match(r"^plan id +expected +actual +ok +result$", line))
    rows: dict[str, dict[str, str]] = {}
    for line in lines[header + 2:]:
        if not line.strip():
            break
        match = TABLE_ROW.match(line)
        assert match, f"not a row of the final table: {line!r}"
        rows[match["plan_id"]] = match.groupdict()
    return rows


@pytest.mark.timeout(150)
def test_demo_runs_the_whole_path_with_a_private_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)", pytrace=False)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "COMMITD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "started a private redis-server" in out

    table = final_table(out)
    assert sorted(table) == sorted(OUTCOMES), out
    for plan_id, (state, result) in OUTCOMES.items():
        row = table[plan_id]
        assert row["actual"] == state, f"{plan_id} ended {row['actual']}, not {state}:\n{out}"
        assert row["ok"] == "✓", out
        assert re.fullmatch(result, row["result"]), f"{plan_id}: {row['result']!r} does not match {result!r}"

    # The throttled plan: its purchase throttled once, then sent again and accepted (from the audit trail).
    calls = re.search(r"^demo-throttled-once, its AWS calls from the audit trail:\n((?:  .*\n)+)", out, re.M)
    assert calls, out
    purchases = [c.strip() for c in calls[1].splitlines() if c.strip().startswith("purchase_")]
    assert purchases == ["purchase_reserved_instances_offering throttled", "purchase_reserved_instances_offering ok"]

    # What the sandbox holds: only the three real purchases, and the ledger claims exactly those.
    assert (f"sandbox ground truth: {BOUGHT} reserved instances bought; {BOUGHT} successful purchases in the ledger "
            "— they match") in out, out
    audit = re.search(r"^audit trail intact: (\d+) entries, each chained", out, re.M)
    assert audit and int(audit[1]) > 0, out
    assert "audit trail BROKEN" not in out
    assert done.stdout.rstrip().endswith("demo passed: every plan reached the state it should"), out
