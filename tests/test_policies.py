"""The IAM documents commitd ships (deploy/iam/) against what the code declares, the production role kept in the
repo (docs/production-role.md), IAM's catalogue and parliament (with an allow-list that gives a reason per entry)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from parliament import analyze_policy_string, expand_action

from config.permissions import EXTRA_PERMISSIONS
from sandbox.iam import is_allowed
from tasks import ACTIONS
from tests.production_role import ROLE_READ_VERBS, ROLE_SERVICES, ROLE_WRITES
from worker import policy
from worker.aws import SOURCE_IDENTITY

ROOT = Path(__file__).resolve().parents[1]
IAM = ROOT / "deploy" / "iam"
ALLOWLIST = json.loads((IAM / "lint-allowlist.json").read_text())["findings"]
ORG_WRITES = [a for a in ROLE_WRITES if a.startswith("organizations:")]


def shipped(name: str) -> dict[str, Any]:
    return dict(json.loads((IAM / f"{name}-policy.json").read_text()))


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def lower(actions: Any) -> set[str]:
    return {a.lower() for a in actions}


def statement(document: dict[str, Any], sid: str) -> dict[str, Any]:
    [found] = [s for s in document["Statement"] if s.get("Sid") == sid]
    return found


def test_the_shipped_files_are_what_the_code_builds() -> None:
    """deploy/iam/ is generated (`commitd policy write deploy/iam`): a stale file fails here."""
    rendered = policy.rendered_files()
    on_disk = {p.name for p in IAM.iterdir() if p.name != "lint-allowlist.json"}
    assert on_disk == set(rendered)
    stale = [name for name, text in rendered.items() if (IAM / name).read_text() != text]
    assert stale == [], "regenerate with: commitd policy write deploy/iam"


def test_writes_are_exactly_the_production_role() -> None:
    production = statement(shipped("production"), "CommitmentWrites")["Action"]
    organizations = statement(shipped("organizations"), "SubAccountTransfer")["Action"]
    assert len(production) == 24 and len(organizations) == 3
    assert lower(production) == lower(ROLE_WRITES) - lower(ORG_WRITES)
    assert lower(organizations) == lower(ORG_WRITES)


def test_every_declared_permission_is_granted_and_nothing_unused() -> None:
    role = {"Statement": shipped("production")["Statement"] + shipped("organizations")["Statement"]}
    declared = {p for action in ACTIONS.values() for p in action.permissions}
    assert [p for p in sorted(declared) if not is_allowed(role, None, p)] == []
    # No write is granted that no registered action declares (reads are the role's wildcards).
    writes = statement(shipped("production"), "CommitmentWrites")["Action"] + \
        statement(shipped("organizations"), "SubAccountTransfer")["Action"]
    assert lower(writes) <= lower(declared)
    # The wildcards are the role document's, on the services used, and never more.
    reads = statement(shipped("production"), "Reads")["Action"] + statement(shipped("organizations"), "Reads")["Action"]
    assert lower(reads) <= {f"{s}:{v}*".lower() for s in ROLE_SERVICES for v in ROLE_READ_VERBS}
    assert lower(a.split(":")[0] for a in reads) == lower(ROLE_SERVICES)


def test_extras_are_exactly_the_optional_permissions() -> None:
    extras = shipped("extras")
    granted = lower(a for s in extras["Statement"] for a in [s["Action"]])
    assert granted == lower(p for action in ACTIONS.values() for p in action.optional_permissions)
    assert granted == lower(EXTRA_PERMISSIONS)
    for s in extras["Statement"]:
        assert s["Effect"] == "Allow" and s["Sid"] in {sid for sids in policy.EXTRA_SIDS.values() for sid in sids}
    # Tagging is never Resource "*", and only commitd's keys.
    for s in extras["Statement"]:
        if s["Action"] == "ec2:CreateTags":
            assert "*" not in as_list(s["Resource"])
            assert s["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"] == sorted(policy.TAG_KEYS)


def test_the_data_denial_never_blocks_a_read_commitd_makes() -> None:
    declared = {p for action in ACTIONS.values() for p in action.permissions | action.optional_permissions}
    for name in ("production", "trial"):
        denied = lower(statement(shipped(name), "NoDataOrCredentials")["Action"])
        assert lower(declared) & denied == set()
        assert denied == lower(policy.DATA_READS)


def test_trial_policy_reads_and_writes_nothing() -> None:
    trial = shipped("trial")
    declared = {p for action in ACTIONS.values() for p in action.permissions}
    reads = [p for p in declared if p.split(":")[1].startswith(policy.READ_VERBS)]
    assert all(is_allowed(trial, None, p) for p in reads)
    assert [w for w in ROLE_WRITES if is_allowed(trial, None, w) and not w.split(":")[1].startswith("Get")] == []


def test_trust_policy_external_id_and_source_identity() -> None:
    trust = policy.trust_policy("arn:aws:iam::123456789012:role/commitd-hub", "an-external-id")
    assume = statement(trust, "CommitdWithExternalId")
    assert assume["Action"] == "sts:AssumeRole"
    assert assume["Condition"] == {"StringEquals": {"sts:ExternalId": "an-external-id"}}
    names = statement(trust, "CommitdNamesItself")
    assert names["Action"] == "sts:SetSourceIdentity"
    assert names["Condition"] == {"StringEquals": {"sts:SourceIdentity": SOURCE_IDENTITY}}
    for s in trust["Statement"]:
        assert s["Principal"] == {"AWS": "arn:aws:iam::123456789012:role/commitd-hub"}
    hub = statement(shipped("hub"), "AssumeCustomerRoles")
    assert lower(hub["Action"]) == {"sts:assumerole", "sts:setsourceidentity"}
    assert hub["Resource"] == f"arn:aws:iam::*:role/{policy.CUSTOMER_ROLE_NAME}"


def test_every_action_is_in_iams_catalogue() -> None:
    """parliament carries AWS's IAM catalogue: every action the code declares (and every write granted) exists,
    except the one the production role grants that IAM does not know (allow-listed with its reason)."""
    known_unknown = {e["action"].lower() for e in ALLOWLIST if e["issue"] == "UNKNOWN_ACTION"}
    names = {p for action in ACTIONS.values() for p in action.permissions | action.optional_permissions}
    names |= set(ROLE_WRITES)
    unknown = set()
    for name in names:
        try:
            expand_action(name)
        except Exception:
            unknown.add(name.lower())
    assert unknown == known_unknown


def _findings(name: str) -> set[tuple[str, str, str]]:
    """(sid, issue, action or "") of every parliament finding on a shipped document, community auditors too."""
    document = shipped(name)
    if name == "trust":  # a trust policy is the role's resource policy: parliament reads it with the role as Resource
        for s in document["Statement"]:
            del s["Principal"]
            s["Resource"] = f"arn:aws:iam::111122223333:role/{policy.CUSTOMER_ROLE_NAME}"
    text = json.dumps(document)
    starts = {text.index(json.dumps(s)) + 1: s.get("Sid", "") for s in document["Statement"]}
    analysed = analyze_policy_string(text, include_community_auditors=True, ignore_private_auditors=True)
    found = set()
    for finding in analysed.findings:
        location = finding.location or {}
        column = location.get("column")
        action = location.get("string", "") if finding.issue == "UNKNOWN_ACTION" else ""
        if column in starts:
            sid = starts[column]
        elif isinstance(column, int):  # a finding inside a statement: the statement that starts before it
            sid = starts[max(c for c in starts if c <= column)]
        else:  # community auditors name the actions: the Allow statements that grant them
            named = lower(location.get("actions", []))
            sid = next(s.get("Sid", "") for s in document["Statement"]
                       if s["Effect"] == "Allow" and named & lower(as_list(s["Action"])))
        found.add((sid, finding.issue, action))
    return found


@pytest.mark.parametrize("name", sorted(policy.DOCUMENTS))
def test_parliament_finds_nothing_but_the_allow_list(name: str) -> None:
    allowed = {(e["sid"], e["issue"], e.get("action", "")) for e in ALLOWLIST if e["document"] == name}
    assert all(e["reason"].strip() for e in ALLOWLIST)
    assert _findings(name) == allowed


def test_customer_role_template_embeds_the_shipped_documents() -> None:
    template = yaml.safe_load((IAM / "customer-role.yaml").read_text())
    role = template["Resources"]["CommitdRole"]["Properties"]
    documents = {}
    for entry in role["Policies"]:
        for branch in entry["Fn::If"][1:]:
            if "PolicyName" in branch:
                documents[branch["PolicyName"]] = branch["PolicyDocument"]
    assert documents["commitd-production"] == shipped("production")
    assert documents["commitd-trial"] == shipped("trial")
    assert documents["commitd-organizations"] == shipped("organizations")
    extras = [s for name, d in documents.items() if name.startswith("commitd-extra-") for s in d["Statement"]]
    assert [s["Sid"] for s in extras] == [s["Sid"] for s in shipped("extras")["Statement"]]
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Action"] for s in trust] == ["sts:AssumeRole", "sts:SetSourceIdentity"]
    assert trust[0]["Condition"]["StringEquals"]["sts:ExternalId"] == {"Ref": "ExternalId"}
    assert template["Parameters"]["ExternalId"]["NoEcho"] is True


@pytest.mark.parametrize("name", sorted(policy.DOCUMENTS))
def test_commitd_policy_prints_the_shipped_document(name: str) -> None:
    printed = CliRunner().invoke(policy.policy, [name])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output) == shipped(name)


def test_docs_explain_every_granted_and_denied_action() -> None:
    """docs/permissions.md, for the customer's security reviewer, names every action the documents name."""
    text = (ROOT / "docs" / "permissions.md").read_text()
    named = {a for name in policy.DOCUMENTS for s in shipped(name)["Statement"] for a in as_list(s["Action"])}
    wildcards = {a for a in named if a.endswith("*")}
    missing = sorted(a for a in named - wildcards if f"`{a}`" not in text)
    assert missing == []
    for wildcard in wildcards:
        service, verb = wildcard.split(":")
        assert f"`{service}`" in text or f"`{wildcard}`" in text, wildcard
    sids = {s["Sid"] for name in policy.DOCUMENTS for s in shipped(name)["Statement"]}
    assert sorted(sid for sid in sids if sid not in text) == []
