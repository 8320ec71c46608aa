"""Property-based fuzzing of intake: whatever arrives, it ends as exactly one plan record (accepted, existing,
conflict or rejected with a reason), rejections reach the dead-letter stream, and intake never raises."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.spine.conftest import ri_plan
from worker.runtime import Runtime

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
PLAN_FIELDS = [*ri_plan("x"), "not_before", "expires_at", "dry_run", "notes", "surprise"]
PARAM_FIELDS = [*ri_plan("x")["params"], "availability_zone", "offering_id", "purchase_time", "tenancy"]


@st.composite
def mutated_plans(draw: st.DrawFn) -> str:
    """A valid plan with a few fields replaced, removed or added."""
    plan: dict[str, Any] = ri_plan(f"fuzz-{draw(st.integers(0, 10**9))}")
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()) or not isinstance(plan.get("params"), dict):
            field = draw(st.sampled_from(PLAN_FIELDS))
            target = plan
        else:
            field = draw(st.sampled_from(PARAM_FIELDS))
            target = plan["params"]
        if draw(st.booleans()):
            target.pop(field, None)
        else:
            target[field] = draw(json_values)
    return json.dumps(plan)


inputs = mutated_plans() | json_values.map(json.dumps) | st.text(max_size=200) | st.binary(max_size=200)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=inputs)
def test_anything_submitted_ends_as_a_record(runtime: Runtime, intake: Any, raw: str | bytes) -> None:
    dead_letters_before = runtime.redis.xlen(runtime.key("rejected"))
    result = intake.submit_raw(raw, "fuzz")
    record = runtime.ledger.get(result.plan_id)
    assert record is not None, result
    assert result.outcome in {"accepted", "existing", "conflict", "rejected"}
    if result.outcome == "rejected":
        assert record.state.value == "rejected"
        assert record.error and record.error["message"] == result.message and result.message
        assert runtime.redis.xlen(runtime.key("rejected")) == dead_letters_before + 1
    if result.outcome == "accepted":
        assert record.state.value in {"queued", "scheduled", "expired"}
