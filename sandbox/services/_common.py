"""Helpers shared by the service modules."""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sandbox.errors import AwsError

YEAR_SECONDS = 31_536_000


def dry_run(params: dict[str, Any]) -> None:
    """EC2's DryRun contract: a permitted call with DryRun=true answers DryRunOperation (HTTP 412)."""
    if params.get("DryRun"):
        raise AwsError("DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412)


def price(value: Any, name: str) -> Decimal:
    """A price as an exact decimal. AWS reckons prices in decimal; binary floats do not add up
    (234.61 * 5 == 1173.0500000000002), which would refuse a LimitPrice equal to the total."""
    try:
        # Through str: a float parsed from the wire ("1173.05") prints back as the shortest decimal it came from.
        amount = Decimal(str(value))
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite():
        raise AwsError("InvalidParameterValue", f"{name} '{value}' is not a number.")
    return amount


def refuse_over_limit(total: Decimal, limit: Decimal, what: str) -> None:
    """``LimitPriceExceeded`` when ``total`` is above the caller's limit; a limit equal to the total is enough."""
    if total > limit:
        raise AwsError("LimitPriceExceeded", f"The {what} {total} USD exceeds the limit price {limit} USD.")


def public(data: dict[str, Any]) -> dict[str, Any]:
    """The AWS-visible part of a resource's data: keys starting with '_' are the sandbox's own."""
    return {k: v for k, v in data.items() if not k.startswith("_")}


def ec2_filters(params: dict[str, Any]) -> dict[str, list[str]]:
    return {f["Name"]: [str(v) for v in f.get("Values", [])] for f in params.get("Filters", []) or []}


def value_matches(actual: Any, wanted: list[str]) -> bool:
    if isinstance(actual, bool):
        actual = str(actual).lower()
    elif isinstance(actual, datetime):
        actual = actual.isoformat()
    return any(fnmatch.fnmatchcase(str(actual), w) for w in wanted)


def tags_match(tags: list[dict[str, str]], name: str, wanted: list[str]) -> bool | None:
    """EC2 tag filters (`tag:<key>`, `tag-key`, `tag-value`); None when `name` is not a tag filter."""
    if name.startswith("tag:"):
        key = name[4:]
        return any(t["Key"] == key and value_matches(t["Value"], wanted) for t in tags)
    if name == "tag-key":
        return any(value_matches(t["Key"], wanted) for t in tags)
    if name == "tag-value":
        return any(value_matches(t["Value"], wanted) for t in tags)
    return None


def apply_ec2_filters(
    items: Iterable[dict[str, Any]],
    filters: dict[str, list[str]],
    fields: dict[str, Callable[[dict[str, Any]], Any]],
) -> list[dict[str, Any]]:
    """Keep items matching every filter. ``fields`` maps a filter name to the value it tests."""
    out = []
    for item in items:
        keep = True
        for name, wanted in filters.items():
            tag_result = tags_match(item.get("Tags", []) or [], name, wanted)
            if tag_result is not None:
                keep = tag_result
            elif name in fields:
                keep = value_matches(fields[name](item), wanted)
            else:
                raise AwsError("InvalidParameterValue", f"The filter '{name}' is invalid")
            if not keep:
                break
        if keep:
            out.append(item)
    return out


def paginate(items: list[Any], params: dict[str, Any], default_size: int = 100,
             token_key: str = "NextToken", size_key: str = "MaxResults") -> tuple[list[Any], str | None]:
    start = int(params.get(token_key) or 0)
    size = int(params.get(size_key) or default_size)
    page = items[start : start + size]
    nxt = str(start + size) if start + size < len(items) else None
    return page, nxt


def new_uuid() -> str:
    return str(uuid.uuid4())


def ec2_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:17]}"


def term_advancer(pending: str = "payment-pending", start_key: str = "StartTime") -> Callable[[Any, datetime], bool]:
    """The life of a reservation with a term: ``pending`` until ``data['_PendingUntil']``, then active, then
    retired at ``data[start_key] + data['Duration']`` seconds. Returns True while it can still change."""

    def advance(resource: Any, now: datetime) -> bool:
        data = resource.data
        if resource.state == pending and now >= data["_PendingUntil"]:
            resource.state = "active"
        if resource.state == "active" and now >= data[start_key] + timedelta(seconds=data["Duration"]):
            resource.state = "retired"
        return resource.state in (pending, "active")

    return advance
