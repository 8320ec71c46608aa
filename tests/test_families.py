"""The permission table checked against the production role and botocore's models (as cloud-custodian does)."""

from __future__ import annotations

import json

import botocore.session

from tasks import ACTIONS
from tasks.families import FAMILIES, family_of
from tests.production_role import production_role_actions

# IAM prefix → botocore service names whose operations the IAM actions name.
SERVICES = {"ec2": ["ec2"], "rds": ["rds"], "redshift": ["redshift"], "elasticache": ["elasticache"],
            "es": ["es", "opensearch"], "savingsplans": ["savingsplans"], "organizations": ["organizations"]}
# production-role.md: an IAM action that is not an API name.
NOT_AN_API = {"es:PurchaseReservedElasticsearchInstance"}


def operations(prefix: str) -> set[str]:
    session = botocore.session.get_session()
    names: set[str] = set()
    for service in SERVICES[prefix]:
        names |= {op.lower() for op in session.get_service_model(service).operation_names}
    return names


def test_every_write_action_of_the_role_is_in_exactly_one_family() -> None:
    actions = production_role_actions()
    assert len(actions) == 27
    declared = [a.lower() for f in FAMILIES for a in f.write_actions]
    assert sorted(declared) == sorted(a.lower() for a in actions)
    for action in actions:
        assert family_of(action) is not None


def test_every_declared_action_exists_in_botocore() -> None:
    for family in FAMILIES:
        for action in family.write_actions + family.read_actions:
            if action in NOT_AN_API:
                continue
            prefix, name = action.split(":")
            assert name.lower() in operations(prefix), f"{family.name}: {action} is not an AWS API"


def test_session_policies_fit_sts_limit() -> None:
    for family in FAMILIES:
        everything = [*family.write_actions, *family.read_actions, *family.optional_actions]
        packed = json.dumps(family.session_policy(everything), separators=(",", ":"))
        assert len(packed) < 2048, family.name


def test_implemented_actions_declare_their_family() -> None:
    for name, action in ACTIONS.items():
        assert name in action.family.write_actions
        assert action.family.queue.startswith("commitd.")
