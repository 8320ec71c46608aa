"""The sandbox's asynchronous Redshift DC1 → DC2 exchange (a node seeded with ``exchange_seconds``), over HTTP with
real boto3 clients (shapes checked): IN_PROGRESS until the sandbox clock says otherwise, then SUCCEEDED, or FAILED
and reverted."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox.control import SandboxControl, SandboxControlError

ACCOUNT = "240000000021"


def _code(caught: pytest.ExceptionInfo[ClientError]) -> str:
    return str(caught.value.response["Error"]["Code"])


def _seed(sandbox: SandboxControl, node_id: str, **entry: Any) -> None:
    sandbox.seed([{"kind": "redshift:reserved-node", "account_id": ACCOUNT, "region": "us-east-1",
                   "node_type": "dc1.large", "offering_type": "No Upfront", "node_count": 2,
                   "start_days_ago": 30, "id": node_id, **entry}])


def _states(redshift: Any) -> dict[str, str]:
    return {n["ReservedNodeId"]: n["State"] for n in redshift.describe_reserved_nodes()["ReservedNodes"]}


def _accept(redshift: Any, node_id: str) -> dict[str, Any]:
    [target] = redshift.get_reserved_node_exchange_offerings(ReservedNodeId=node_id)["ReservedNodeOfferings"]
    node: dict[str, Any] = redshift.accept_reserved_node_exchange(
        ReservedNodeId=node_id, TargetReservedNodeOfferingId=target["ReservedNodeOfferingId"]
    )["ExchangedReservedNode"]
    return node


def test_an_asynchronous_exchange_is_in_progress_until_the_clock_ends_it(sandbox: SandboxControl, aws: Any) -> None:
    _seed(sandbox, "dc1-slow", exchange_seconds=600)
    redshift = aws("redshift", account_id=ACCOUNT)
    exchanged = _accept(redshift, "dc1-slow")
    assert exchanged["State"] == "exchanging" and exchanged["NodeType"] == "dc2.large" and exchanged["NodeCount"] == 2
    assert _states(redshift) == {"dc1-slow": "exchanging", exchanged["ReservedNodeId"]: "exchanging"}
    [status] = redshift.describe_reserved_node_exchange_status(ReservedNodeId="dc1-slow")[
        "ReservedNodeExchangeStatusDetails"]
    assert status["Status"] == "IN_PROGRESS" and status["TargetReservedNodeCount"] == 2
    # A replay, or asking for offerings again, while it is under way: already migrated.
    for call in (lambda: _accept(redshift, "dc1-slow"),
                 lambda: redshift.get_reserved_node_exchange_offerings(ReservedNodeId="dc1-slow")):
        with pytest.raises(ClientError) as caught:
            call()
        assert _code(caught) == "ReservedNodeAlreadyMigrated"

    sandbox.advance_clock(599)
    assert _states(redshift)["dc1-slow"] == "exchanging"
    sandbox.advance_clock(1)
    assert _states(redshift) == {"dc1-slow": "retired", exchanged["ReservedNodeId"]: "active"}
    [status] = redshift.describe_reserved_node_exchange_status(
        ReservedNodeExchangeRequestId=status["ReservedNodeExchangeRequestId"])["ReservedNodeExchangeStatusDetails"]
    assert status["Status"] == "SUCCEEDED"
    truth = {t["id"]: t["state"] for t in sandbox.resources(account_id=ACCOUNT, service="redshift")}
    assert truth == {"dc1-slow": "retired", exchanged["ReservedNodeId"]: "active"}


def test_a_failed_exchange_is_reverted_and_may_be_tried_again(sandbox: SandboxControl, aws: Any) -> None:
    _seed(sandbox, "dc1-failing", exchange_seconds=60, exchange_outcome="FAILED")
    redshift = aws("redshift", account_id=ACCOUNT)
    first = _accept(redshift, "dc1-failing")
    sandbox.advance_clock(60)
    assert _states(redshift) == {"dc1-failing": "active", first["ReservedNodeId"]: "retired"}
    [status] = redshift.describe_reserved_node_exchange_status(ReservedNodeId="dc1-failing")[
        "ReservedNodeExchangeStatusDetails"]
    assert status["Status"] == "FAILED"
    second = _accept(redshift, "dc1-failing")  # the node is exchangeable again (and fails again)
    assert second["ReservedNodeId"] != first["ReservedNodeId"]
    statuses = redshift.describe_reserved_node_exchange_status(ReservedNodeId="dc1-failing")[
        "ReservedNodeExchangeStatusDetails"]
    assert [s["Status"] for s in statuses] == ["FAILED", "IN_PROGRESS"]


def test_an_exchange_failing_at_once_and_a_bad_seed(sandbox: SandboxControl, aws: Any) -> None:
    _seed(sandbox, "dc1-refused", exchange_outcome="FAILED")
    redshift = aws("redshift", account_id=ACCOUNT)
    exchanged = _accept(redshift, "dc1-refused")
    assert _states(redshift) == {"dc1-refused": "active", exchanged["ReservedNodeId"]: "retired"}
    with pytest.raises(SandboxControlError, match="exchange_outcome"):
        _seed(sandbox, "dc1-bad", exchange_outcome="MAYBE")
