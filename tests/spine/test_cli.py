"""``commitd submit`` and ``commitd schema`` as a user runs them: a subprocess on the private Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.spine.conftest import ROOT, ri_plan
from worker.runtime import Runtime


def commitd(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          input=stdin, capture_output=True, text=True, timeout=60)


def output_rows(result: subprocess.CompletedProcess[str]) -> list[list[str]]:
    return [line.split("\t") for line in result.stdout.splitlines()]


def dead_letter_ids(runtime: Runtime) -> list[str]:
    return [f[b"plan_id"].decode() for _, f in runtime.redis.xrange(runtime.key("rejected"))]


def test_submit_one_plan_from_stdin(runtime: Runtime, env: dict[str, str]) -> None:
    result = commitd(env, "submit", "-", stdin=json.dumps(ri_plan("cli-one"), indent=2))
    assert result.returncode == 0, result.stderr
    assert output_rows(result) == [["cli-one", "queued"]]
    record = runtime.ledger.get("cli-one")
    assert record is not None and record.state.value == "queued"
    assert record.history[0].note == "received from cli"
    assert runtime.redis.llen(runtime.key("celery", "commitd.ec2_reserved_instances")) == 1

    # The same again: nothing changes, the existing state is reported, and that is not a failure.
    again = commitd(env, "submit", "-", stdin=json.dumps(ri_plan("cli-one")))
    assert again.returncode == 0, again.stderr
    assert output_rows(again) == [["cli-one", "queued", "existing", "already recorded; nothing changed"]]
    assert runtime.ledger.get("cli-one") == record
    assert runtime.redis.llen(runtime.key("celery", "commitd.ec2_reserved_instances")) == 1

    conflict = commitd(env, "submit", "-", stdin=json.dumps(ri_plan("cli-one", instance_count=9)))
    assert conflict.returncode == 1
    [row] = output_rows(conflict)
    assert row[:3] == ["cli-one", "queued", "conflict"]
    assert runtime.ledger.get("cli-one") == record


def test_submit_a_json_array_from_a_file(runtime: Runtime, env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "plans.json"
    later = ri_plan("arr-3")
    later["not_before"] = "2099-01-01T00:00:00Z"
    path.write_text(json.dumps([ri_plan("arr-1"), ri_plan("arr-2", instance_count=4), later]))
    result = commitd(env, "submit", str(path))
    assert result.returncode == 0, result.stderr
    assert output_rows(result) == [["arr-1", "queued"], ["arr-2", "queued"], ["arr-3", "scheduled"]]
    assert runtime.ledger.get("arr-2").plan["params"]["instance_count"] == 4
    assert runtime.ledger.ids("queued") == ["arr-1", "arr-2"]


def test_submit_json_lines_with_one_broken_line(runtime: Runtime, env: dict[str, str]) -> None:
    lines = [json.dumps(ri_plan("jl-1")), '{"plan_id": "jl-2", "action": ', json.dumps(ri_plan("jl-3")), "",
             json.dumps(ri_plan("jl-4", instance_count=0))]
    result = commitd(env, "submit", "-", stdin="\n".join(lines) + "\n")
    assert result.returncode == 1, "any rejected plan makes the command fail"
    rows = output_rows(result)
    assert len(rows) == 4, "one output line per plan (the blank line is not a plan)"
    assert rows[0] == ["jl-1", "queued"] and rows[2] == ["jl-3", "queued"]
    broken_id, state, outcome, message = rows[1]
    assert broken_id.startswith("rejected-") and (state, outcome) == ("rejected", "rejected")
    assert message.startswith("not valid JSON")
    assert rows[3] == ["jl-4", "rejected", "rejected", "params.instance_count: must be ≥ 1"]

    assert runtime.ledger.get(broken_id).state.value == "rejected"
    assert sorted(dead_letter_ids(runtime)) == sorted([broken_id, "jl-4"])
    assert runtime.ledger.ids("queued") == ["jl-1", "jl-3"]


def test_submit_an_array_with_invalid_items(runtime: Runtime, env: dict[str, str]) -> None:
    result = commitd(env, "submit", "-", stdin=json.dumps([ri_plan("mix-1"), 7, {"plan_id": "mix-3"}]))
    assert result.returncode == 1
    rows = output_rows(result)
    assert rows[0] == ["mix-1", "queued"]
    assert rows[1][1:3] == ["rejected", "rejected"] and "JSON object" in rows[1][3]
    assert rows[2][:3] == ["mix-3", "rejected", "rejected"] and "is required" in rows[2][3]
    assert len(runtime.ledger.ids()) == 3


def test_submit_empty_input_records_nothing(runtime: Runtime, env: dict[str, str]) -> None:
    result = commitd(env, "submit", "-", stdin="\n  \n")
    assert result.returncode == 0 and result.stdout == ""
    assert runtime.ledger.ids() == []


def test_submit_missing_file(runtime: Runtime, env: dict[str, str], tmp_path: Path) -> None:
    result = commitd(env, "submit", str(tmp_path / "nope.json"))
    assert result.returncode != 0 and "nope.json" in result.stderr


def test_schema_of_envelope_and_actions(env: dict[str, str]) -> None:
    result = commitd(env, "schema")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    envelope = data["envelope"]
    assert envelope["type"] == "object" and envelope["additionalProperties"] is False
    assert set(envelope["required"]) == {"plan_id", "action", "account_id", "region", "params", "requested_by",
                                         "trigger"}
    assert {"not_before", "expires_at", "dry_run", "notes"} <= envelope["properties"].keys()
    assert envelope["properties"]["plan_id"]["pattern"] == r"^[A-Za-z0-9._:-]{1,128}$"
    assert "ec2:PurchaseReservedInstancesOffering" in data["actions"]

    one = commitd(env, "schema", "ec2:PurchaseReservedInstancesOffering")
    assert one.returncode == 0, one.stderr
    params = json.loads(one.stdout)
    assert params == data["actions"]["ec2:PurchaseReservedInstancesOffering"]
    props = params["properties"]
    assert params["additionalProperties"] is False
    assert props["instance_count"]["minimum"] == 1
    assert props["duration_years"]["enum"] == [1, 3]
    assert set(props["offering_type"]["enum"]) == {"No Upfront", "Partial Upfront", "All Upfront"}
    assert {"max_upfront_usd", "max_hourly_usd", "instance_count", "instance_type"} <= set(params["required"])
    assert props["product_description"]["default"] == "Linux/UNIX"

    lower = commitd(env, "schema", "EC2:purchaseReservedInstancesOffering")
    assert lower.returncode == 0 and json.loads(lower.stdout) == params

    unknown = commitd(env, "schema", "ec2:Nothing")
    assert unknown.returncode != 0 and "ec2:Nothing" in unknown.stderr


def test_a_plan_valid_by_the_schema_is_accepted(runtime: Runtime, intake: Any, env: dict[str, str]) -> None:
    """The printed schema and intake agree: a plan built only from the schema's required fields is accepted."""
    params = json.loads(commitd(env, "schema", "ec2:PurchaseReservedInstancesOffering").stdout)
    required = {k: ri_plan("x")["params"][k] for k in params["required"]}
    plan = {**ri_plan("schema-1"), "params": required}
    assert intake.submit_raw(json.dumps(plan), "test").state == "queued"


def test_submit_answers_hostile_files_with_a_message_not_a_traceback(
    runtime: Runtime, env: dict[str, str], tmp_path: Path
) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 30_000 + "]" * 30_000)  # under the size limit, deeper than Python parses
    result = commitd(env, "submit", str(deep))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    [[plan_id, state, outcome, message]] = output_rows(result)
    assert (state, outcome) == ("rejected", "rejected") and "nested too deeply" in message

    surrogate = tmp_path / "surrogate.json"
    surrogate.write_text(json.dumps({**ri_plan("cli-surrogate"), "notes": "cut \ud83d"}))  # escaped as \\ud83d
    result = commitd(env, "submit", str(surrogate))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    [[plan_id, state, outcome, message]] = output_rows(result)
    assert plan_id == "cli-surrogate" and state == "rejected"
    assert message.startswith("notes: contains a lone UTF-16 surrogate")

    latin = tmp_path / "latin.json"
    latin.write_bytes(json.dumps(ri_plan("cli-latin")).replace("planner@test", "caf\u00e9").encode("latin-1"))
    result = commitd(env, "submit", str(latin))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "is not valid UTF-8 (byte" in result.stderr and "nothing was submitted" in result.stderr
    assert runtime.ledger.get("cli-latin") is None


def test_schema_by_contract_version(env: dict[str, str]) -> None:
    assert json.loads(commitd(env, "schema", "--version", "1").stdout)["envelope"]["properties"]["version"]
    unknown = commitd(env, "schema", "--version", "2")
    assert unknown.returncode == 1 and "version 2 is not one this build accepts (accepted: 1)" in unknown.stderr


def test_submit_prints_only_its_own_lines(runtime: Runtime, env: dict[str, str]) -> None:
    quiet_env = {k: v for k, v in env.items() if k != "COMMITD_LOG_LEVEL"}
    result = commitd(quiet_env, "submit", "-", stdin=json.dumps(ri_plan("cli-quiet")))
    assert result.returncode == 0 and result.stdout == "cli-quiet\tqueued\n"
    assert result.stderr == "", "no log lines around the command's output"
