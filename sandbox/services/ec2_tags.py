"""EC2 CreateTags, DeleteTags and DescribeTags across the sandbox's own resources and moto's.

Resources the sandbox serves itself (Reserved Instances, capacity and host reservations, sandbox-tracked
spot requests, ...) keep their tags in ``resource.data["Tags"]`` as ``[{Key, Value}]``; everything else
(instances, volumes, ...) is moto's. A call naming only moto's resources is forwarded to moto unchanged.
A call naming some of ours is answered here, and the rest of its ids are tagged through moto's EC2 backend,
so a mixed call works as it does on AWS. DescribeTags merges both sets of tags.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from sandbox.errors import AwsError
from sandbox.protocol import WireResponse, service_model
from sandbox.registry import CallContext, handles
from sandbox.services._common import dry_run, ec2_filters, paginate, value_matches
from sandbox.state import Resource

SERVICE = "ec2"
MAX_TAGS = 50
# moto knows Reserved Instances ids (bare uuids) only to fail with a NotImplementedError, so an unknown one is
# refused here with the error AWS gives for a missing RI.
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


@cache
def taggable_types() -> frozenset[str]:
    """The resource types EC2's tagging API names (the ``ResourceType`` enum of botocore's model)."""
    return frozenset(service_model(SERVICE).shape_for("ResourceType").enum)


def _tags_of(resource: Resource) -> list[dict[str, str]] | None:
    tags = resource.data.get("Tags")
    return tags if isinstance(tags, list) else None


def _own_resources(ctx: CallContext) -> list[Resource]:
    """The caller's sandbox-served EC2 resources that carry tags."""
    return [
        r
        for r in ctx.state.all()
        if r.service == SERVICE
        and r.account_id == ctx.account_id
        and r.region == ctx.region
        and r.type in taggable_types()
        and _tags_of(r) is not None
    ]


def _split(ctx: CallContext, ids: list[str]) -> tuple[list[Resource], list[str]]:
    ours = {r.id: r for r in _own_resources(ctx)}
    mine = [ours[i] for i in dict.fromkeys(ids) if i in ours]
    theirs = [i for i in dict.fromkeys(ids) if i not in ours]
    for resource_id in theirs:
        if _UUID.match(resource_id):
            raise AwsError("InvalidReservedInstancesId", f"The Reserved Instances ID '{resource_id}' does not exist.")
    return mine, theirs


def _moto_backend(ctx: CallContext) -> Any:
    from moto.ec2.models import ec2_backends

    return ec2_backends[ctx.account_id][ctx.region]


def _moto_call(fn: Any, *args: Any) -> Any:
    """Run a moto backend call, turning moto's EC2 errors into the sandbox's."""
    from moto.core.exceptions import ServiceException

    try:
        return fn(*args)
    except ServiceException as exc:
        raise AwsError(str(exc.code), str(exc.message)) from exc


def _check_tags(tags: list[dict[str, Any]]) -> None:
    for tag in tags:
        key = tag.get("Key")
        if not key:
            raise AwsError("InvalidParameterValue", "Tag keys must not be empty.")
        if key.lower().startswith("aws:"):
            raise AwsError("InvalidParameterValue", "Tag keys starting with 'aws:' are reserved for internal use")


@handles(SERVICE, "CreateTags")
def create_tags(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any] | WireResponse:
    ids = params.get("Resources") or []
    mine, theirs = _split(ctx, ids)
    if not mine:
        return ctx.call_moto()
    tags = params.get("Tags") or []
    _check_tags(tags)
    dry_run(params)
    for resource in mine:
        current = {t["Key"]: t["Value"] for t in _tags_of(resource) or []}
        new_keys = {t["Key"] for t in tags} - set(current)
        if len(current) + len(new_keys) > MAX_TAGS:
            raise AwsError("TagLimitExceeded", f"The maximum number of tags per resource ({MAX_TAGS}) was exceeded.")
    if theirs:
        from moto.ec2.models import validate_resource_ids

        backend = _moto_backend(ctx)
        _moto_call(validate_resource_ids, theirs)
        _moto_call(backend.do_resources_exist, theirs)
        _moto_call(backend.create_tags, theirs, {t["Key"]: t.get("Value", "") for t in tags})
    for resource in mine:
        current = {t["Key"]: t["Value"] for t in _tags_of(resource) or []}
        current.update({t["Key"]: t.get("Value", "") for t in tags})
        resource.data["Tags"] = [{"Key": k, "Value": v} for k, v in current.items()]
    return {}


@handles(SERVICE, "DeleteTags")
def delete_tags(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any] | WireResponse:
    ids = params.get("Resources") or []
    mine, theirs = _split(ctx, ids)
    if not mine:
        return ctx.call_moto()
    dry_run(params)
    wanted = params.get("Tags")
    if theirs:
        from moto.ec2.models import validate_resource_ids

        _moto_call(validate_resource_ids, theirs)
        by_key = {t["Key"]: t.get("Value") for t in wanted} if wanted else None
        backend = _moto_backend(ctx)
        if by_key is None:  # no Tags: delete every tag of those resources
            by_key = {k: None for i in theirs for k in backend.tags.get(i, {})}
        _moto_call(backend.delete_tags, theirs, by_key)
    for resource in mine:
        resource.data["Tags"] = [t for t in _tags_of(resource) or [] if not _deleted(t, wanted)]
    return {}


def _deleted(tag: dict[str, str], wanted: list[dict[str, Any]] | None) -> bool:
    """AWS: no Tags deletes all; a Key alone deletes that key; Key and Value delete it only if the value
    matches."""
    if not wanted:
        return True
    for spec in wanted:
        if spec.get("Key") == tag["Key"] and ("Value" not in spec or spec["Value"] == tag["Value"]):
            return True
    return False


_FILTERS = ("key", "resource-id", "resource-type", "value")


def _tag_matches(item: dict[str, str], name: str, wanted: list[str]) -> bool:
    if name.startswith("tag:"):
        return item["Key"] == name[4:] and value_matches(item["Value"], wanted)
    field = {"key": "Key", "resource-id": "ResourceId", "resource-type": "ResourceType", "value": "Value"}[name]
    return value_matches(item.get(field, ""), wanted)


@handles(SERVICE, "DescribeTags")
def describe_tags(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    filters = ec2_filters(params)
    for name in filters:
        if name not in _FILTERS and not name.startswith("tag:"):
            raise AwsError("InvalidParameterValue", f"The filter '{name}' is invalid")
    own = _own_resources(ctx)
    items = [
        {"Key": t["Key"], "ResourceId": r.id, "ResourceType": r.type, "Value": t["Value"]}
        for r in own
        for t in _tags_of(r) or []
    ]
    own_ids = {r.id for r in own}
    for tag in _moto_backend(ctx).describe_tags():
        if tag["resource_id"] in own_ids:  # the sandbox's copy is the one that CreateTags keeps current
            continue
        item = {"Key": tag["key"], "ResourceId": tag["resource_id"], "Value": tag["value"]}
        if tag.get("resource_type"):
            item["ResourceType"] = tag["resource_type"]
        items.append(item)
    items = [i for i in items if all(_tag_matches(i, n, w) for n, w in filters.items())]
    items.sort(key=lambda i: (i["ResourceId"], i["Key"]))
    page, next_token = paginate(items, params)
    out: dict[str, Any] = {"Tags": page}
    if next_token:
        out["NextToken"] = next_token
    return out
