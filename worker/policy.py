"""The IAM documents a customer and a platform team grant commitd, built from what the code declares.

Nothing here is written by hand: the write actions come from the registered actions' ``permissions`` (and the
family table, ``tasks/families.py``), the extra permissions from their ``optional_permissions`` and
``config/permissions.py``. ``deploy/iam/`` holds these documents as files (``commitd policy write deploy/iam``
regenerates them; a test fails when they differ), and ``commitd policy NAME`` prints one:

- ``production``     the customer role's policy: wildcard reads and the 24 commitment writes
- ``organizations``  the optional block (the sub-account transfer): 3 writes and Organizations' reads
- ``trial``          read-only: every plan runs as a dry run, or fails clearly (``read_only`` in the registry)
- ``extras``         one statement per extra permission, each scoped as narrowly as AWS allows
- ``hub``            the daemon's own identity: AssumeRole (with SourceIdentity) into customer roles of one name
- ``trust``          the customer role's trust policy: the hub principal, an ExternalId, SourceIdentity ``commitd``

docs/permissions.md explains each action for a customer's security reviewer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import click

from config.permissions import EXTRA_PERMISSIONS

VERSION = "2012-10-17"
# The production role's reads (docs/production-role.md §1): wildcards, so a new read endpoint needs no role edit.
READ_VERBS = ("List", "Get", "Describe")
# Reads the wildcards would match that return credentials or customer data rather than usage and cost metadata:
# denied explicitly, so the role document's "no access to data" holds whatever the wildcards catch (instance user
# data, console output and screenshots, launch templates' user data, Windows passwords, database credentials).
# None is a read commitd makes (a test checks the declared reads stay allowed).
DATA_READS = (
    "ec2:DescribeInstanceAttribute",
    "ec2:GetConsoleOutput",
    "ec2:GetConsoleScreenshot",
    "ec2:GetInstanceUefiData",
    "ec2:GetLaunchTemplateData",
    "ec2:GetPasswordData",
    "redshift:GetClusterCredentials",
    "redshift:GetClusterCredentialsWithIAM",
)
# The tags commitd writes (tasks/*: PLAN_TAG and the managed-by tag): the only keys ec2:CreateTags may set.
TAG_KEYS = ("commitd:managed-by", "commitd:plan-id")
# Resource types commitd creates with tags (TagSpecifications), by the call that creates them.
TAG_ON_CREATE = {
    "ec2:CreateCapacityReservation": "capacity-reservation",
    "ec2:PurchaseHostReservation": "host-reservation",
    "ec2:RequestSpotInstances": "spot-instances-request",
}
# AWS's default name for the spot fleet role (the console creates it); the CloudFormation template takes another.
SPOT_FLEET_ROLE = "aws-ec2-spot-fleet-tagging-role"
CUSTOMER_ROLE_NAME = "commitd"
HUB_ROLE_NAME = "commitd-hub"
# Placeholders of the shipped files: account 000000000000 does not exist, so a file pasted unchanged into IAM is
# refused (invalid principal) instead of trusting somebody's account. The CloudFormation template takes both.
EXAMPLE_PRINCIPAL = f"arn:aws:iam::000000000000:role/{HUB_ROLE_NAME}"
EXAMPLE_EXTERNAL_ID = "REPLACE-WITH-THE-EXTERNAL-ID-COMMITD-GAVE-YOU"
# Statement ids of the extras policy, one per extra permission (the CloudFormation template has a switch each).
EXTRA_SIDS = {
    "ec2:CreateTags": ("TagReservedInstancesWithPlanId", "TagOnCreateWithPlanId"),
    "iam:PassRole": ("PassSpotFleetRole",),
    "es:PurchaseReservedInstanceOffering": ("BuyOpenSearchReservedInstances",),
}


def _actions() -> list[Any]:
    from tasks import ACTIONS

    return list(ACTIONS.values())


def _declared(block: str | None) -> tuple[list[str], list[str]]:
    """(writes, reads) the registered actions of the families with this optional block (None: the production
    role's) declare. A write is a declared permission that is a write action of its family in tasks/families.py
    (redshift:GetReservedNodeExchangeOfferings is one of the role's 24, though IAM calls it a read)."""
    writes: dict[str, str] = {}
    reads: dict[str, str] = {}
    for action in _actions():
        if action.family.optional_block != block:
            continue
        family_writes = {a.lower() for a in action.family.write_actions}
        for permission in action.permissions:
            target = writes if permission.lower() in family_writes else reads
            target.setdefault(permission.lower(), permission)
    return sorted(writes.values(), key=str.lower), sorted(reads.values(), key=str.lower)


# IAM prefix → the botocore services whose operations it authorizes (OpenSearch's API shares "es").
BOTOCORE_SERVICES = {"es": ("es", "opensearch")}


@cache
def _verbs(service: str) -> tuple[str, ...]:
    """The read verbs the service has operations for: ``rds:Get*`` would match no action today, and a wildcard
    that matches nothing now could match anything AWS adds later."""
    import botocore.session

    session = botocore.session.get_session()
    names = [op for s in BOTOCORE_SERVICES.get(service, (service,))
             for op in session.get_service_model(s).operation_names]
    return tuple(verb for verb in READ_VERBS if any(name.startswith(verb) for name in names))


def read_wildcards(services: list[str]) -> list[str]:
    return [f"{service}:{verb}*" for service in services for verb in _verbs(service)]


def _services(actions: list[str]) -> list[str]:
    return sorted({a.split(":", 1)[0] for a in actions})


def _uncovered(reads: list[str], wildcards: list[str]) -> list[str]:
    patterns = [re.compile(re.escape(w[:-1]) + ".*", re.I) for w in wildcards]
    return [r for r in reads if not any(p.fullmatch(r) for p in patterns)]


def _role_policy(block: str | None, sid: str) -> dict[str, Any]:
    writes, reads = _declared(block)
    wildcards = read_wildcards(_services(writes + reads))
    missing = _uncovered(reads, wildcards)
    if missing:  # a read an action declares must be granted: by a wildcard, or it is a write
        raise RuntimeError(f"reads {missing} are declared but not covered by {wildcards}")
    return _document(
        {"Sid": "Reads", "Effect": "Allow", "Action": wildcards, "Resource": "*"},
        {"Sid": sid, "Effect": "Allow", "Action": writes, "Resource": "*"},
        _no_data(wildcards),
    )


def _no_data(wildcards: list[str]) -> dict[str, Any]:
    covered = [a for a in DATA_READS if not _uncovered([a], wildcards)]
    return {"Sid": "NoDataOrCredentials", "Effect": "Deny", "Action": covered, "Resource": "*"}


def _document(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": VERSION, "Statement": [s for s in statements if s.get("Action") or s.get("NotAction")]}


def production_policy() -> dict[str, Any]:
    """The customer role's policy: reads on the services used, and exactly the production role's writes."""
    return _role_policy(None, "CommitmentWrites")


def organizations_policy() -> dict[str, Any]:
    """The optional block: the sub-account transfer's writes and Organizations' reads."""
    return _role_policy("organizations", "SubAccountTransfer")


def trial_policy() -> dict[str, Any]:
    """Read-only: the same reads as the production role and its organizations block, and no write at all."""
    writes, reads = _declared(None)
    org_writes, org_reads = _declared("organizations")
    wildcards = read_wildcards(_services(writes + reads + org_writes + org_reads))
    return _document({"Sid": "Reads", "Effect": "Allow", "Action": wildcards, "Resource": "*"},
                     _no_data(wildcards))


def extra_statements(spot_fleet_role: str = SPOT_FLEET_ROLE) -> dict[str, list[dict[str, Any]]]:
    """Per extra permission, its statements. Tags: only commitd's keys, only on the resources commitd tags (the RIs
    it bought, by ARN; the ones it creates, on creation only). PassRole: only the spot fleet role, only to EC2's
    spot fleet service. OpenSearch's purchase has no resource-level permission (Resource "*")."""
    tag_conditions: dict[str, dict[str, Any]] = {
        "ForAllValues:StringEquals": {"aws:TagKeys": list(TAG_KEYS)},
        "StringEquals": {"aws:RequestTag/commitd:managed-by": "commitd"},
    }
    on_create = dict(tag_conditions)
    on_create["StringEquals"] = {**tag_conditions["StringEquals"],
                                 "ec2:CreateAction": [a.split(":")[1] for a in TAG_ON_CREATE]}
    sids = {p: iter(s) for p, s in EXTRA_SIDS.items()}
    statements: dict[str, list[dict[str, Any]]] = {
        "ec2:CreateTags": [
            {"Sid": next(sids["ec2:CreateTags"]), "Effect": "Allow", "Action": "ec2:CreateTags",
             "Resource": "arn:aws:ec2:*:*:reserved-instances/*", "Condition": tag_conditions},
            {"Sid": next(sids["ec2:CreateTags"]), "Effect": "Allow", "Action": "ec2:CreateTags",
             "Resource": [f"arn:aws:ec2:*:*:{kind}/*" for kind in sorted(TAG_ON_CREATE.values())],
             "Condition": on_create},
        ],
        "iam:PassRole": [
            {"Sid": next(sids["iam:PassRole"]), "Effect": "Allow", "Action": "iam:PassRole",
             "Resource": f"arn:aws:iam::*:role/{spot_fleet_role}",
             "Condition": {"StringEquals": {"iam:PassedToService": "spotfleet.amazonaws.com"}}},
        ],
        "es:PurchaseReservedInstanceOffering": [
            {"Sid": next(sids["es:PurchaseReservedInstanceOffering"]), "Effect": "Allow",
             "Action": "es:PurchaseReservedInstanceOffering", "Resource": "*"},
        ],
    }
    declared = {p.lower() for a in _actions() for p in a.optional_permissions}
    if {p.lower() for p in statements} != declared or set(statements) != set(EXTRA_PERMISSIONS):
        raise RuntimeError(f"extras {sorted(statements)} differ from what actions declare ({sorted(declared)}) "
                           f"or config/permissions.py lists ({sorted(EXTRA_PERMISSIONS)})")
    return statements


def extras_policy(spot_fleet_role: str = SPOT_FLEET_ROLE) -> dict[str, Any]:
    """Every extra permission the code can use; a customer grants each or not (``extra_permissions``)."""
    return _document(*(s for group in extra_statements(spot_fleet_role).values() for s in group))


def _source_identity() -> str:
    from worker.aws import SOURCE_IDENTITY  # what the daemon sends on every AssumeRole (boto3: imported late)

    return SOURCE_IDENTITY


def hub_policy(role_name: str = CUSTOMER_ROLE_NAME) -> dict[str, Any]:
    """The daemon's own identity may only assume customer roles of this name, naming itself (SourceIdentity)."""
    return _document({
        "Sid": "AssumeCustomerRoles", "Effect": "Allow", "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"],
        "Resource": f"arn:aws:iam::*:role/{role_name}",
        "Condition": {"StringEquals": {"sts:SourceIdentity": _source_identity()}},
    })


def trust_policy(principal: str = EXAMPLE_PRINCIPAL, external_id: str = EXAMPLE_EXTERNAL_ID) -> dict[str, Any]:
    """The customer role's trust policy: only the commitd principal, only with the ExternalId, and the
    SourceIdentity commitd sends on every AssumeRole (AWS refuses a SourceIdentity the trust policy does not
    allow with sts:SetSourceIdentity)."""
    return _document(
        {"Sid": "CommitdWithExternalId", "Effect": "Allow", "Principal": {"AWS": principal},
         "Action": "sts:AssumeRole", "Condition": {"StringEquals": {"sts:ExternalId": external_id}}},
        {"Sid": "CommitdNamesItself", "Effect": "Allow", "Principal": {"AWS": principal},
         "Action": "sts:SetSourceIdentity",
         "Condition": {"StringEquals": {"sts:SourceIdentity": _source_identity()}}},
    )


# --- the CloudFormation template the customer deploys -------------------------------------------------------
def _switch(description: str) -> dict[str, Any]:
    return {"Type": "String", "AllowedValues": ["false", "true"], "Default": "false", "Description": description}


EXTRA_SWITCHES = {
    "ec2:CreateTags": "GrantTagging",
    "iam:PassRole": "GrantSpotFleetPassRole",
    "es:PurchaseReservedInstanceOffering": "GrantOpenSearchApi",
}


def customer_role_template() -> dict[str, Any]:
    """The role, its policies and its trust policy; the optional block and each extra permission a switch."""
    parameters: dict[str, Any] = {
        "CommitdPrincipalArn": {
            "Type": "String", "AllowedPattern": r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$",
            "Description": "the role commitd runs as (its hub role): the only principal the role trusts"},
        "ExternalId": {
            "Type": "String", "NoEcho": True, "MinLength": 16, "MaxLength": 1224,
            "AllowedPattern": r"^[\w+=,.@:/-]+$",
            "Description": "the ExternalId commitd gave you: AssumeRole without it is refused"},
        "RoleName": {"Type": "String", "Default": CUSTOMER_ROLE_NAME, "AllowedPattern": r"^[\w+=,.@-]{1,64}$",
                     "Description": "the role's name (commitd's hub policy allows only this name)"},
        "Access": {"Type": "String", "AllowedValues": ["production", "trial"], "Default": "production",
                   "Description": "trial: read-only, every plan runs as a dry run (set read_only in commitd's "
                                  "account registry)"},
        "GrantOrganizations": _switch("the optional organizations block (sub-account transfer, 3 actions): only in "
                                      "an organization's management account"),
        "SpotFleetRoleName": {"Type": "String", "Default": SPOT_FLEET_ROLE, "AllowedPattern": r"^[\w+=,.@-]{1,64}$",
                              "Description": "with GrantSpotFleetPassRole: the fleet role spot fleets may pass"},
    }
    for permission, switch in EXTRA_SWITCHES.items():
        parameters[switch] = _switch(f"{permission}: {EXTRA_PERMISSIONS[permission]}")
    conditions: dict[str, Any] = {
        "Production": {"Fn::Equals": [{"Ref": "Access"}, "production"]},
        "Organizations": {"Fn::And": [{"Condition": "Production"},
                                      {"Fn::Equals": [{"Ref": "GrantOrganizations"}, "true"]}]},
    }
    for switch in EXTRA_SWITCHES.values():
        conditions[switch] = {"Fn::And": [{"Condition": "Production"}, {"Fn::Equals": [{"Ref": switch}, "true"]}]}
    extras = extra_statements()  # the fleet role's name is a parameter here
    extras["iam:PassRole"][0]["Resource"] = {
        "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${SpotFleetRoleName}"}
    policies: list[Any] = [
        {"Fn::If": ["Production", {"PolicyName": "commitd-production", "PolicyDocument": production_policy()},
                    {"PolicyName": "commitd-trial", "PolicyDocument": trial_policy()}]},
        {"Fn::If": ["Organizations", {"PolicyName": "commitd-organizations",
                                      "PolicyDocument": organizations_policy()}, {"Ref": "AWS::NoValue"}]},
    ]
    for permission, switch in EXTRA_SWITCHES.items():
        name = "commitd-extra-" + permission.replace(":", "-").lower()
        policies.append({"Fn::If": [switch, {"PolicyName": name, "PolicyDocument": _document(*extras[permission])},
                                    {"Ref": "AWS::NoValue"}]})
    trust = trust_policy(principal="PRINCIPAL", external_id="EXTERNAL_ID")
    for statement in trust["Statement"]:
        statement["Principal"] = {"AWS": {"Ref": "CommitdPrincipalArn"}}
    trust["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"] = {"Ref": "ExternalId"}
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "commitd's role in your account: commitments only (docs/permissions.md explains each action)",
        "Parameters": parameters,
        "Conditions": conditions,
        "Resources": {
            "CommitdRole": {
                "Type": "AWS::IAM::Role",
                "Metadata": {
                    # The production role grants es:PurchaseReservedElasticsearchInstance (docs/production-role.md),
                    # which IAM's catalogue does not list: cfn-lint's unknown-action warning, for that one action.
                    "cfn-lint": {"config": {"ignore_checks": ["W3037"]}},
                },
                "Properties": {
                    "RoleName": {"Ref": "RoleName"},
                    "Description": "commitd: buys, modifies, exchanges and resells commitments; no data access",
                    "MaxSessionDuration": 3600,
                    "AssumeRolePolicyDocument": trust,
                    "Policies": policies,
                },
            },
        },
        "Outputs": {"RoleArn": {"Description": "give this to commitd (role_arn in its account registry)",
                                "Value": {"Fn::GetAtt": ["CommitdRole", "Arn"]}}},
    }


# --- the files in deploy/iam/ -----------------------------------------------------------------------------------
DOCUMENTS: dict[str, Callable[[], dict[str, Any]]] = {
    "production": production_policy,
    "organizations": organizations_policy,
    "trial": trial_policy,
    "extras": extras_policy,
    "hub": hub_policy,
    "trust": trust_policy,
}
FILES = {f"{name}-policy.json": name for name in DOCUMENTS}


def render(name: str) -> str:
    return json.dumps(DOCUMENTS[name](), indent=2) + "\n"


def render_template() -> str:
    import yaml  # a development dependency: the daemon itself never writes the template

    header = ("# commitd's role in your account, generated by `commitd policy write deploy/iam` from the code's\n"
              "# declarations (do not edit by hand). docs/permissions.md explains every action.\n")
    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True  # CloudFormation refuses YAML aliases: every shared statement is written out in full

    return header + yaml.dump(customer_role_template(), Dumper=Dumper, sort_keys=False, width=90)


def rendered_files() -> dict[str, str]:
    files = {filename: render(name) for filename, name in FILES.items()}
    files["customer-role.yaml"] = render_template()
    return files


# --- commitd policy ---------------------------------------------------------------------------------------------
@click.group()
def policy() -> None:
    """Print the IAM policies commitd needs (built from the actions' declarations; docs/permissions.md)."""


def _printer(name: str, help_text: str) -> click.Command:
    def show() -> None:
        click.echo(render(name), nl=False)

    return click.Command(name, callback=show, help=help_text)


for _name, _help in (
    ("production", "The customer role's policy: reads, and the 24 commitment writes."),
    ("organizations", "The optional organizations block: the sub-account transfer's 3 writes."),
    ("trial", "The read-only trial role: plans run as dry runs (read_only) or fail clearly."),
    ("extras", "Extra permissions, one statement each: tagging with the plan id, the spot fleet role, OpenSearch."),
    ("hub", "The daemon's own policy: AssumeRole and SetSourceIdentity on customer roles named commitd."),
):
    policy.add_command(_printer(_name, _help))


@policy.command("trust")
@click.option("--principal", default=EXAMPLE_PRINCIPAL, show_default=True, help="the role commitd runs as")
@click.option("--external-id-file", type=click.File("r"), default=None,
              help="read the ExternalId from this file (kept out of the shell's history)")
def policy_trust(principal: str, external_id_file: Any) -> None:
    """The customer role's trust policy: the commitd principal, the ExternalId, SourceIdentity commitd."""
    external_id = external_id_file.read().strip() if external_id_file is not None else EXAMPLE_EXTERNAL_ID
    click.echo(json.dumps(trust_policy(principal, external_id), indent=2))


@policy.command("write")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def policy_write(directory: Path) -> None:
    """Write every policy and the CloudFormation template into DIRECTORY (deploy/iam in a checkout)."""
    directory.mkdir(parents=True, exist_ok=True)
    for filename, text in rendered_files().items():
        (directory / filename).write_text(text)
        click.echo(f"wrote {directory / filename}")
