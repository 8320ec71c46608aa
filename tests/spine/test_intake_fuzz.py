"""Property-based fuzzing of the intake (issue 13): whatever arrives, it ends as exactly one plan record, accepted
(queued, scheduled, awaiting approval, expired) or ``rejected`` with a reason that names the offending field and a
copy in the dead-letter stream; the intake never raises and never stalls.

The mutated plans start from every registered action's example plan (``examples/plans/``) and go through the Redis
stream exactly as the intake daemon reads it (``consume_once``), each followed by a good plan in the same batch:
that plan must be queued (no stall), and every entry must be accounted for (records + dead letters = entries)."""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks import ACTIONS
from tests.spine.conftest import ROOT, ri_plan
from worker.plans import PLAN_ID_CHARS
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


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
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


@pytest.fixture(autouse=True)
def quiet_intake_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """The intake's log without rendering: this process's default console renderer prints an exception with its
    locals (rich), which for a plan nested 900 deep takes minutes. The daemon's renderer is configured apart."""
    import worker.intake

    quiet = structlog.wrap_logger(structlog.ReturnLogger(), processors=[],
                                  wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    monkeypatch.setattr(worker.intake, "log", quiet)


# --- every action's params and the envelope, through the stream ----------------------------------------------------
EXAMPLES_DIR = ROOT / "examples" / "plans"
ACCEPTED_STATES = {"queued", "scheduled", "awaiting_approval", "expired"}
# Reasons about the whole entry, where there is no field to name (the text was not parsed, or not kept).
WHOLE_ENTRY_REASONS = ("not valid JSON", "plan is not valid UTF-8", "a plan is a JSON object", "stream entry has no")
UNFORESEEN = "the intake could not process this entry"
_nonces = itertools.count()  # plan ids never repeat, not even when hypothesis replays an example while shrinking


def _examples() -> dict[str, dict[str, Any]]:
    plans: dict[str, dict[str, Any]] = {}
    for path in sorted(EXAMPLES_DIR.glob("*.json")):
        plan = json.loads(path.read_text())
        plans.setdefault(plan["action"], plan)
    return plans


EXAMPLES = _examples()
# Envelope fields the examples leave out, added with valid values so that mutations reach them too.
OPTIONAL_ENVELOPE = {"not_before": "2020-01-01T00:00:00Z", "expires_at": "2999-01-01T00:00:00Z", "dry_run": False,
                     "notes": "fuzzed", "version": 1}

Path_ = tuple[str | int, ...]


def _paths(value: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every field and list item of a plan, as paths from its root."""
    found: list[Path_] = []
    items: list[tuple[str | int, Any]] = (
        list(value.items()) if isinstance(value, dict) else list(enumerate(value)) if isinstance(value, list) else []
    )
    for key, child in items:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


def _at(plan: Any, path: Path_) -> Any:
    for part in path:
        plan = plan[part]
    return plan


def _named(path: Path_) -> str:
    """The field a reason must name for a change at ``path``: the nearest key (a list item is its list's)."""
    return next((part for part in reversed(path) if isinstance(part, str)), "plan")


def _stored(name: str) -> str:
    """A name as the intake writes it in a reason (a lone surrogate kept visible as ``\\udXXX``)."""
    return name.encode("utf-8", "backslashreplace").decode()


LONE_SURROGATES = ["\ud83d", "\udc00", "\udfff", "a\ud800b"]
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3", b"\x80", b"caf\xe9", b"\xed\xa0\xbd", b"\xf4\x90\x80\x80", b"\xc0\xaf"]
ODD_NUMBERS = ["0", "-1", "-0", "-0.0", "1.5", "2147483648", "-9223372036854775809", "18446744073709551616",
               "1" + "0" * 30, "1e308", "-1e308", "5e-324", "1e999", "NaN", "Infinity", "-Infinity",
               "1" + "0" * 5000]  # the last: more digits than Python converts to an int
ODD_STRINGS = ["", " ", "\t\n", "NaN", "nan", "Infinity", "-Infinity", "-1", "-0", "0", "1e309", "1e-400",
               "99999999999999.9999", "999999999999999", "0.00001", "1,200.00", "0x1F", "١٢٠٠.٠٠", "1200.00\n",
               "2026-13-45T99:99:99Z", "2026-12-01T00:00:00", "\x00", "\u202e", "😀", "null", "true",
               "' OR 1=1 --", "../../etc/passwd", "x" * 129, "x" * 257, "y" * 4097, "z" * 70_000]


@dataclass(frozen=True)
class Mutation:
    op: str
    path: Path_
    names: frozenset[str]  # one of these must appear in a rejection's reason
    must_reject: bool


@dataclass(frozen=True)
class Garbage:
    payload: bytes
    plan_id: str | None  # the id the plan keeps (None: not a valid id any more; the intake names it from the entry)
    mutation: Mutation


RAW = "\x00raw-json\x00"  # stands for text written into the JSON as it is (bytes, tokens, deep nesting)


def _deep(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"n":' * depth + b"1" + b"}" * depth


@st.composite
def mutated_example(draw: st.DrawFn, action: str) -> Garbage:
    """One action's example plan with one change hypothesis chooses: a field dropped, a value of another type, an
    out-of-range number, an odd or huge string, a lone surrogate, bytes that are not UTF-8, deep nesting, or an
    extra field."""
    plan: dict[str, Any] = json.loads(json.dumps(EXAMPLES[action]))
    plan_id: str | None = f"fuzz-{next(_nonces)}"
    plan["plan_id"] = plan_id
    for optional in draw(st.lists(st.sampled_from(sorted(OPTIONAL_ENVELOPE)), unique=True, max_size=2)):
        plan[optional] = OPTIONAL_ENVELOPE[optional]
    op = draw(st.sampled_from(["drop", "retype", "number", "string", "surrogate", "invalid_utf8", "deep", "extra"]))
    raw: bytes | None = None
    path: Path_
    if op == "extra":
        containers = [(), *(p for p in _paths(plan) if isinstance(_at(plan, p), dict))]
        path = draw(st.sampled_from(containers))
        name = draw(st.sampled_from(["surprise", "", "plan_id ", "PARAMS", "a.b", "caf\u00e9", "\ud83d"])
                    | st.text(min_size=1, max_size=12))
        target = _at(plan, path)
        if name in target:
            name = f"{name}-extra"
        target[name] = draw(json_values)
        # Every model of a plan refuses unknown fields: the envelope's and each action's params model.
        mutation = Mutation(op, (*path, name), frozenset({_stored(name)}), must_reject=True)
    else:
        # The params first: hypothesis shrinks towards the first choice, and the params are what differ by action.
        path = draw(st.sampled_from(sorted(_paths(plan), key=lambda p: p[0] != "params")))
        parent, key = _at(plan, path[:-1]), path[-1]
        current = parent[key]
        if op == "drop":
            del parent[key]
        elif op == "retype":
            parent[key] = draw(json_values.filter(lambda v: _json_kind(v) != _json_kind(current)))
        elif op == "string":
            parent[key] = draw(st.sampled_from(ODD_STRINGS) | st.text(max_size=40))
        elif op == "surrogate":
            parent[key] = draw(st.sampled_from(LONE_SURROGATES))
        else:  # written into the JSON text as it is
            parent[key] = RAW
            if op == "number":
                raw = draw(st.sampled_from(ODD_NUMBERS)).encode()
            elif op == "invalid_utf8":
                raw = b'"ok ' + draw(st.sampled_from(INVALID_UTF8)) + b'"'
            else:
                raw = _deep(draw(st.sampled_from([2, 64, 65, 199, 200, 201, 500, 900, 990, 1000, 1100, 3000])),
                            draw(st.sampled_from(["list", "dict"])))
        names = {_named(path)}
        if path[0] == "action":  # another action's name makes the params the problem
            names.add("params")
        if path[0] == "account_id":  # another configured account may not allow the action
            names.add("action")
        mutation = Mutation(op, path, frozenset(names), must_reject=op in {"surrogate", "invalid_utf8"})
    if path[:1] == ("plan_id",) and isinstance(plan.get("plan_id"), str) and PLAN_ID_CHARS.fullmatch(plan["plan_id"]):
        plan["plan_id"] = plan_id = f"{plan['plan_id'][:100]}-{next(_nonces)}"  # a valid id: kept unique
    elif not isinstance(plan.get("plan_id"), str) or not PLAN_ID_CHARS.fullmatch(plan["plan_id"]):
        plan_id = None
    try:
        payload = json.dumps(plan, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate goes as the JSON escape a JavaScript producer sends
        payload = json.dumps(plan).encode()
    if raw is not None:
        payload = payload.replace(json.dumps(RAW).encode(), raw)
    return Garbage(payload, plan_id, mutation)


def _nesting(payload: bytes) -> int:
    """How deeply JSON text nests, counted on the text (no parser: it may be deeper than Python parses)."""
    deepest = depth = 0
    in_string = escaped = False
    for byte in payload:
        if in_string:
            escaped, in_string = (False, True) if escaped else (byte == 0x5C, byte != 0x22)
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def _json_kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


@dataclass(frozen=True)
class Settled:
    plan_id: str
    state: str
    reason: str


class StreamHarness:
    """Entries into the intake's stream, read by ``consume_once`` as the daemon does, and the books kept on them."""

    def __init__(self, runtime: Runtime, intake: Any) -> None:
        self.runtime = runtime
        self.intake = intake
        self.stream = runtime.key("plans")
        self.dead_letter = runtime.key("rejected")

    def push(self, entries: list[dict[Any, Any]]) -> list[str]:
        pipe = self.runtime.redis.pipeline(transaction=False)
        for fields in entries:
            pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
        return [i.decode() if isinstance(i, bytes) else str(i) for i in pipe.execute()]

    def drain(self) -> None:
        """Consume until nothing is pending. ``consume_once`` raising is the crash this file looks for."""
        for _ in range(20):
            self.intake.consume_once("fuzz", block_ms=10, count=50)
            group = self.runtime.redis.xinfo_groups(self.stream)[0]
            if int(group["pending"]) == 0 and group.get("lag", 0) == 0:
                return
        raise AssertionError("the intake stalled: entries are still pending or unread")

    def books(self) -> tuple[int, int]:
        return len(self.runtime.ledger.ids()), int(self.runtime.redis.xlen(self.dead_letter))

    def settled(self, entry_id: str, plan_id: str | None) -> Settled:
        """The record an entry ended as: under the plan's own id, or ``rejected-<entry id>`` when it had none."""
        candidates = [plan_id] if plan_id else []
        candidates.append(f"rejected-{entry_id.replace('-', '.')}")
        for candidate in candidates:
            record = self.runtime.ledger.get(candidate)
            if record is not None:
                reason = record.error["message"] if record.error else ""
                return Settled(candidate, record.state.value, reason)
        raise AssertionError(f"entry {entry_id} ended as no record (looked for {candidates})")

    def dead_letter_reasons(self, newest: int) -> dict[str, str]:
        """The ``newest`` dead letters' reasons by plan id."""
        letters = self.runtime.redis.xrevrange(self.dead_letter, count=newest) if newest else []
        reasons = {fields[b"plan_id"].decode(): fields[b"reason"].decode() for _, fields in letters}
        assert len(reasons) == newest, "one dead letter per rejected plan"
        return reasons


def good_plan(action: str) -> bytes:
    plan = {**EXAMPLES[action], "plan_id": f"good-{next(_nonces)}"}
    return json.dumps(plan).encode()


def check_entries(harness: StreamHarness, garbage: list[tuple[bytes | dict[Any, Any], str | None]]) -> list[Settled]:
    """Push the garbage, then a good plan; every entry ends recorded (the good one queued: nothing stalled) and the
    books balance. Returns what each garbage entry ended as."""
    records_before, letters_before = harness.books()
    follow = good_plan("ec2:PurchaseReservedInstancesOffering")
    *entries, follow_entry = harness.push(
        [{"plan": entry} if isinstance(entry, bytes) else entry for entry, _ in garbage] + [{"plan": follow}])
    harness.drain()
    outcomes = [harness.settled(entry, plan_id) for entry, (_, plan_id) in zip(entries, garbage, strict=True)]
    assert harness.settled(follow_entry, json.loads(follow)["plan_id"]).state == "queued", \
        "the good plan after the garbage was not queued"
    records, letters = harness.books()
    # Every entry is one new record; each rejection also one dead letter, and nothing else writes one.
    assert records == records_before + len(garbage) + 1, (records_before, records, outcomes)
    rejected = [outcome for outcome in outcomes if outcome.state == "rejected"]
    assert letters == letters_before + len(rejected), (letters_before, letters, outcomes)
    letter_reasons = harness.dead_letter_reasons(len(rejected))
    for outcome in outcomes:
        assert UNFORESEEN not in outcome.reason, f"the intake failed on an entry: {outcome.reason}"
        if outcome.state == "rejected":
            assert outcome.reason, "a rejection carries its reason"
            assert letter_reasons[outcome.plan_id] == outcome.reason
        else:
            assert outcome.state in ACCEPTED_STATES, outcome
            assert outcome.reason == ""
    return outcomes


def names_field(outcome: Settled, names: frozenset[str], payload: bytes, limit: int) -> bool:
    """Whether a rejection names the field, or is about the whole entry in a way that holds for this payload."""
    if any(name in outcome.reason for name in names):
        return True
    if outcome.reason.startswith("plan is ") and "the limit is" in outcome.reason:
        return len(payload) > limit  # too large to parse: refused whole
    if outcome.reason.startswith("plan is not valid UTF-8 (byte "):
        # Refused before parsing, so no field is named (test_invalid_utf8_names_the_field wants one): the byte it
        # names is where the text stops being UTF-8.
        try:
            payload.decode()
        except UnicodeDecodeError as exc:
            return outcome.reason.startswith(f"plan is not valid UTF-8 (byte {exc.start} is ")
        return False
    if outcome.reason == "not valid JSON: nested too deeply":
        return _nesting(payload) > 500  # deeper than Python's parser goes from where the intake calls it
    if outcome.reason.startswith("not valid JSON"):
        try:
            json.loads(payload)
        except (ValueError, RecursionError):
            return True  # the text itself is not JSON Python parses: there is no field to name
    return False


ACTION_NAMES = sorted(ACTIONS)
EXAMPLES_PER_ACTION = 20  # each example mutates every action's plan once: 26 entries and a good plan after them


def test_every_registered_action_has_an_example_to_fuzz() -> None:
    assert set(ACTIONS) <= set(EXAMPLES), sorted(set(ACTIONS) - set(EXAMPLES))


def test_a_mutated_plan_of_every_action_is_recorded_or_rejected_naming_the_field(
    runtime: Runtime, intake: Any
) -> None:
    harness = StreamHarness(runtime, intake)
    limit = runtime.settings.max_plan_bytes
    # Each example as it is is accepted: what a mutated plan ends as is the mutation's doing.
    plans = [good_plan(action) for action in ACTION_NAMES]
    examples: list[tuple[bytes | dict[Any, Any], str | None]] = [(p, json.loads(p)["plan_id"]) for p in plans]
    assert [o.state for o in check_entries(harness, examples)] == ["queued"] * len(ACTION_NAMES)
    seen: Counter[str] = Counter()

    @given(batch=st.tuples(*(mutated_example(action) for action in ACTION_NAMES)))
    def prop(batch: tuple[Garbage, ...]) -> None:
        outcomes = check_entries(harness, [(garbage.payload, garbage.plan_id) for garbage in batch])
        for action, garbage, outcome in zip(ACTION_NAMES, batch, outcomes, strict=True):
            mutation = garbage.mutation
            seen[f"{mutation.op}:{outcome.state}"] += 1
            if mutation.must_reject:
                assert outcome.state == "rejected", (action, mutation, outcome)
            if outcome.state == "rejected":
                assert names_field(outcome, mutation.names, garbage.payload, limit), (
                    f"{action}: the reason does not name {sorted(mutation.names)} ({mutation.op} at "
                    f"{mutation.path}): {outcome.reason!r}")

    settings(max_examples=EXAMPLES_PER_ACTION, deadline=None, derandomize=True, database=None,
             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                    HealthCheck.filter_too_much, HealthCheck.data_too_large])(prop)()
    # Not vacuous: most mutations are refused, some leave a plan that is still valid, every kind was tried.
    rejected = sum(n for key, n in seen.items() if key.endswith(":rejected"))
    assert rejected >= len(ACTION_NAMES) * EXAMPLES_PER_ACTION // 2, seen
    assert rejected < sum(seen.values()), seen
    assert {key.split(":")[0] for key in seen} == {"drop", "retype", "number", "string", "surrogate",
                                                    "invalid_utf8", "deep", "extra"}, seen


# --- wholly arbitrary entries ----------------------------------------------------------------------------------------
ENVELOPE_FIELDS = ["version", "plan_id", "action", "account_id", "region", "params", "requested_by", "trigger",
                   "not_before", "expires_at", "dry_run", "notes"]


def _unique_id(plan: dict[str, Any]) -> dict[str, Any]:
    """A valid plan id is made unique, so that an entry is never a resubmission of an earlier example's."""
    if isinstance(plan.get("plan_id"), str) and PLAN_ID_CHARS.fullmatch(plan["plan_id"]):
        plan["plan_id"] = f"{plan['plan_id'][:100]}-{next(_nonces)}"
    return plan


some_envelope = st.dictionaries(st.sampled_from(ENVELOPE_FIELDS) | st.text(max_size=8), json_values,
                                max_size=8).map(_unique_id)
arbitrary_plan_field = (
    some_envelope.map(lambda d: json.dumps(d).encode())
    | json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode())
    | st.text(max_size=200).map(lambda t: t.encode())
    | st.binary(max_size=200)
    | st.sampled_from([b"", b"{", b"[]", b"null", b'{"plan_id": "\\ud83d"}', b"\xff", _deep(5000, "list"),
                       b'{"a": ' + b"1" * 5000 + b"}", b"\xef\xbb\xbf{}"])
)
arbitrary_entries = (
    st.fixed_dictionaries({"plan": arbitrary_plan_field},
                          optional={"source": st.binary(max_size=20), b"\xff": st.binary(max_size=20)})
    | st.dictionaries(st.binary(max_size=8).filter(lambda k: k != b"plan"), st.binary(max_size=40),
                      min_size=1, max_size=3)
)


def test_wholly_arbitrary_entries_end_recorded_and_never_stall_the_next(runtime: Runtime, intake: Any) -> None:
    harness = StreamHarness(runtime, intake)
    seen: Counter[str] = Counter()

    @given(fields=arbitrary_entries)
    def prop(fields: dict[Any, bytes]) -> None:
        raw = fields.get("plan")
        try:
            parsed = json.loads(raw) if raw is not None else None
        except (ValueError, RecursionError):
            parsed = None
        plan_id = parsed.get("plan_id") if isinstance(parsed, dict) else None
        valid_id = isinstance(plan_id, str) and PLAN_ID_CHARS.fullmatch(plan_id) is not None
        outcome, = check_entries(harness, [(fields, plan_id if valid_id else None)])
        seen[outcome.state] += 1
        if outcome.state != "rejected":
            return
        if not outcome.reason.startswith((*WHOLE_ENTRY_REASONS, "plan is ")):
            # A parsed object: the reason names a field of the envelope or one the object has.
            keys = set(parsed) if isinstance(parsed, dict) else set()
            assert any(_stored(name) in outcome.reason for name in {*ENVELOPE_FIELDS, *keys}), outcome.reason

    settings(max_examples=80, deadline=None, derandomize=True, database=None,
             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                    HealthCheck.data_too_large])(prop)()
    assert seen["rejected"] >= 50, seen


def test_nesting_around_the_parsers_limit_is_rejected_naming_the_field(runtime: Runtime, intake: Any) -> None:
    """Depths where the JSON parser still succeeds but anything recursive after it may not (copying, dumping,
    validating the parsed value): each plan ends rejected, naming the field or refused as too deep to parse."""
    harness = StreamHarness(runtime, intake)
    limit = runtime.settings.max_plan_bytes
    plans: list[tuple[bytes | dict[Any, Any], str | None]] = []
    for depth in range(820, 1000):  # every depth: the window where parsing works and dumping fails is narrow
        plan_id = f"deep-{depth}-{next(_nonces)}"
        plan = {**EXAMPLES["ec2:PurchaseReservedInstancesOffering"], "plan_id": plan_id}
        plan["params"] = {**plan["params"], "nested": RAW}
        plans.append((json.dumps(plan).encode().replace(json.dumps(RAW).encode(), _deep(depth, "list")), plan_id))
    outcomes = check_entries(harness, plans)
    for (payload, _), outcome in zip(plans, outcomes, strict=True):
        assert outcome.state == "rejected", outcome
        assert isinstance(payload, bytes) and names_field(outcome, frozenset({"params.nested"}), payload, limit), \
            outcome
    assert any("params.nested: unknown field" in outcome.reason for outcome in outcomes), outcomes


def test_bytes_that_are_not_utf8_are_rejected_naming_the_field(runtime: Runtime, intake: Any) -> None:
    harness = StreamHarness(runtime, intake)
    plan = {**EXAMPLES["ec2:PurchaseReservedInstancesOffering"], "plan_id": f"latin-1-{next(_nonces)}"}
    plan["params"] = {**plan["params"], "instance_type": RAW}
    payload = json.dumps(plan).encode().replace(json.dumps(RAW).encode(), b'"m5.large caf\xe9"')
    outcome, = check_entries(harness, [(payload, plan["plan_id"])])
    assert outcome.state == "rejected"
    assert "params.instance_type" in outcome.reason, outcome.reason
