"""`commitd demo` end to end, as a user runs it: no Redis answers, so it starts (and stops) its own.

The assertions read what the demo reports *after* the plans ran — its final tables (the state the ledger holds
for each plan: the RI purchases, then one plan of every family), the sandbox's ground truth and the audit
verification — never the lines it prints when it submits a plan, which say only what it expects."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tasks.families import FAMILIES
from tests.spine.conftest import ROOT

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
# The tour of every family: family → (plan id, final state, pattern its "result" cell must match).
COMMITS = r"; commitment \d+(\.\d+)? USD"
FAMILY_OUTCOMES = {
    "ec2_reserved_instances": ("demo-ri-modify", "succeeded", r"modified: \S+, \S+; state fulfilled"),
    "ec2_ri_exchange": ("demo-ri-exchange", "succeeded", rf"exchanged: \S+{COMMITS}; state active"),
    "ec2_ri_marketplace": ("demo-ri-listing", "succeeded", r"listed: \S+; state active"),
    # future-dated: assessed by AWS, then scheduled
    "ec2_capacity_reservations": ("demo-capacity-reservation", "succeeded",
                                  rf"reserved: cr-\w+{COMMITS}; state scheduled"),
    "ec2_host_reservations": ("demo-host-reservation", "succeeded", rf"bought: hr-\w+{COMMITS}; state active"),
    # AWS no longer sells Scheduled Instances: expected to fail, nothing bought
    "ec2_scheduled_instances": ("demo-scheduled-purchase", "failed", r"NoScheduledInstanceAvailability: .+"),
    "ec2_spot": ("demo-spot-fleet", "succeeded", rf"requested: sfr-\S+{COMMITS}; state active"),
    "savings_plans": ("demo-savings-plan", "succeeded", rf"bought: \S+{COMMITS}.*"),
    "rds_reservations": ("demo-rds-reservation", "succeeded", rf"bought: \S+{COMMITS}.*"),
    "redshift_reservations": ("demo-redshift-exchange", "succeeded", rf"exchanged: \S+{COMMITS}.*"),
    "elasticache_reservations": ("demo-elasticache-reservation", "succeeded", rf"bought: \S+{COMMITS}.*"),
    "opensearch_reservations": ("demo-opensearch-reservation", "succeeded", rf"bought: \S+{COMMITS}.*"),
    "org_transfer": ("demo-org-create-account", "succeeded", r"created: \d{12}"),
}
FAMILY_ROW = re.compile(r"^(?P<family>\S+) +(?P<plan_id>\S+) +(?P<expected>\S+) +(?P<actual>\S+) +(?P<ok>[✓✗]) +"
                        r"(?P<result>.*)$")


def table(out: str, header: str, row: re.Pattern[str], key: str) -> dict[str, dict[str, str]]:
    """The rows of a table the demo prints once its plans have settled, by ``key``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(header, line))
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        match = row.match(line)
        assert match, f"not a row of the table: {line!r}"
        rows[match[key]] = match.groupdict()
    return rows


def final_table(out: str) -> dict[str, dict[str, str]]:
    """The RI purchases' table, by plan id."""
    return table(out, r"^plan id +expected +actual +ok +result$", TABLE_ROW, "plan_id")


def family_table(out: str) -> dict[str, dict[str, str]]:
    """The tour's table: one row per family, by family."""
    return table(out, r"^family +plan id +expected +actual +ok +result$", FAMILY_ROW, "family")


@pytest.mark.timeout(150)
def test_demo_runs_the_whole_path_with_a_private_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)", pytrace=False)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
    }  # no COMMITD_REDIS_URL: the demo must start its own Redis, never use one that happens to listen on 6379
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

    # One plan of every family, each ending as expected (the Scheduled Instances purchase fails: AWS sells none).
    families = family_table(out)
    assert sorted(families) == sorted(f.name for f in FAMILIES) == sorted(FAMILY_OUTCOMES), out
    for family, (plan_id, state, result) in FAMILY_OUTCOMES.items():
        row = families[family]
        assert row["plan_id"] == plan_id, f"{family}: {row}"
        assert row["expected"] == row["actual"] == state, f"{family} ended {row['actual']}, not {state}:\n{out}"
        assert row["ok"] == "✓", out
        assert re.fullmatch(result, row["result"]), f"{family}: {row['result']!r} does not match {result!r}"

    # What the sandbox holds: only the three real purchases, and the ledger claims exactly those; every succeeded
    # plan's resources exist; every resource a call made is one a succeeded plan recorded (nothing made twice).
    assert (f"sandbox ground truth: {BOUGHT} reserved instances bought; {BOUGHT} successful purchases in the ledger "
            "— they match") in out, out
    succeeded = BOUGHT + sum(1 for _, state, _ in FAMILY_OUTCOMES.values() if state == "succeeded")
    exist = re.search(r"^sandbox ground truth: (\d+) plans succeeded; each of their (\d+) resources is in the "
                      r"sandbox$", out, re.M)
    assert exist and int(exist[1]) == succeeded and int(exist[2]) >= succeeded, out
    made = re.search(r"^sandbox ground truth: (\d+) resources made by the demo's calls, each recorded by the plan "
                     r"that made it — nothing made twice$", out, re.M)
    assert made and int(made[1]) >= int(exist[2]), out
    audit = re.search(r"^audit trail intact: (\d+) entries, each chained", out, re.M)
    assert audit and int(audit[1]) > 0, out
    assert "audit trail BROKEN" not in out
    assert done.stdout.rstrip().endswith("demo passed: every plan reached the state it should"), out
