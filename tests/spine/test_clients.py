"""AWS clients shared by every account, with each call's role credentials swapped under them (worker/aws.py).

The sandbox is the judge: every request it receives is recorded with the access key that signed it, and its STS
knows which role session (and so which account and RoleSessionName) each access key belongs to.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import botocore.exceptions
import pytest

from config.accounts import AccountConfig
from config.settings import Settings
from sandbox.control import SandboxControl
from sandbox.server import SandboxServer
from tasks.families import EC2_RESERVED_INSTANCES
from tests.spine.conftest import ACCOUNT, TAGGING_ACCOUNT, ri_plan, wait_for_state
from tests.spine.test_pools import ThreadsWorker, submit_all
from worker.aws import AwsSessions, client_bytes
from worker.runtime import Runtime

POLICY = ["ec2:DescribeReservedInstancesOfferings", "ec2:DescribeReservedInstances",
          "ec2:PurchaseReservedInstancesOffering"]
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


@pytest.fixture
def requests_seen(sandbox_server: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """(access key, IAM action) of every AWS request the sandbox receives, in order."""
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()
    iam = sandbox_server.app.iam
    check = iam.check

    def recording(access_key: str, action: str, *more: Any, **named: Any) -> bool:
        with lock:
            seen.append((access_key, action))
        return bool(check(access_key, action, *more, **named))

    monkeypatch.setattr(iam, "check", recording)
    yield seen


def session_of(sandbox_server: SandboxServer, access_key: str) -> tuple[str, str]:
    """(account, RoleSessionName) the sandbox's STS issued this access key for."""
    session = sandbox_server.app.iam.sessions[access_key]
    return session.role_arn.split(":")[4], session.session_name


def accounts(n: int) -> list[AccountConfig]:
    return [AccountConfig(account_id=f"{400000000000 + i}", role_arn=f"arn:aws:iam::{400000000000 + i}:role/commitd")
            for i in range(n)]


def sessions_on(sandbox: SandboxControl, **kwargs: Any) -> AwsSessions:
    return AwsSessions(Settings(aws_endpoint_url=sandbox.url), **kwargs)


def read(sessions: AwsSessions, account: AccountConfig, region: str, plan_id: str = "probe") -> Any:
    return sessions.call(account, region, "ec2", EC2_RESERVED_INSTANCES, "read", plan_id, POLICY,
                         "describe_reserved_instances", {})


def test_clients_are_shared_by_accounts_and_regions_and_bounded_in_bytes(
    sandbox: SandboxControl, sandbox_server: SandboxServer, requests_seen: list[tuple[str, str]]
) -> None:
    sessions = sessions_on(sandbox)
    many = accounts(40)
    for account in many:
        for region in REGIONS:
            read(sessions, account, region)
    stats = sessions.stats()
    # 120 account-regions, one client per region: what grows with accounts is credentials, one session each.
    assert stats["clients"] == 3 and stats["client_misses"] == 3 and stats["client_hits"] == 117
    assert stats["assume_role_calls"] == 40 and stats["read_credentials"] == 40
    assert stats["client_bytes"] == 3 * client_bytes(765) < 4 * 2**20
    # Each describe was signed by its own account's read session, although all went through 3 clients.
    described = [key for key, action in requests_seen if action == "ec2:DescribeReservedInstances"]
    assert [session_of(sandbox_server, key) for key in described] == [
        (a.account_id, "commitd-reads") for a in many for _ in REGIONS]

    # A budget of two EC2 clients: the third region evicts the least recently used, and calls go on.
    small = sessions_on(sandbox, client_cache_bytes=2 * client_bytes(765) + 1)
    for _ in range(2):
        for region in REGIONS:
            read(small, many[0], region)
    stats = small.stats()
    assert stats["clients"] == 2 and stats["client_evictions"] == 4
    assert stats["client_bytes"] <= small.clients.max_bytes
    assert stats["assume_role_calls"] == 1  # eviction drops a client, never credentials


def test_concurrent_plans_of_many_accounts_each_buy_with_their_own_session(
    sandbox: SandboxControl, sandbox_server: SandboxServer, requests_seen: list[tuple[str, str]]
) -> None:
    """16 threads, 16 accounts, one shared write client per region: every purchase lands in its plan's account,
    signed by the session named after its plan."""
    sessions = sessions_on(sandbox)
    many = accounts(16)
    offering = read_offering(sessions, many[0])

    def buy(n: int) -> str:
        account = many[n % len(many)]
        response = sessions.call(account, "us-east-1", "ec2", EC2_RESERVED_INSTANCES, "write", f"plan-{n}", POLICY,
                                 "purchase_reserved_instances_offering",
                                 {"ReservedInstancesOfferingId": offering, "InstanceCount": 1})
        return str(response["ReservedInstancesId"])

    with ThreadPoolExecutor(16) as pool:
        bought = list(pool.map(buy, range(64)))
    assert sessions.stats()["clients"] == 2  # one read client and one write client, for 16 accounts
    owners = {r["id"]: r["account_id"] for r in sandbox.resources()}
    assert [owners[ri_id] for ri_id in bought] == [many[n % len(many)].account_id for n in range(64)]
    purchases = [key for key, action in requests_seen if action == "ec2:PurchaseReservedInstancesOffering"]
    assert sorted(session_of(sandbox_server, key) for key in purchases) == sorted(
        (many[n % len(many)].account_id, f"commitd-plan-{n}") for n in range(64))


def read_offering(sessions: AwsSessions, account: AccountConfig) -> str:
    offerings = sessions.call(account, "us-east-1", "ec2", EC2_RESERVED_INSTANCES, "read", "probe", POLICY,
                              "describe_reserved_instances_offerings",
                              {"InstanceType": "m5.large", "OfferingClass": "standard", "OfferingType": "No Upfront",
                               "ProductDescription": "Linux/UNIX", "IncludeMarketplace": False,
                               "Filters": [{"Name": "duration", "Values": ["31536000"]},
                                           {"Name": "scope", "Values": ["Region"]}]})
    return str(offerings["ReservedInstancesOfferings"][0]["ReservedInstancesOfferingId"])


def test_a_shared_client_signs_nothing_outside_a_call(sandbox: SandboxControl) -> None:
    sessions = sessions_on(sandbox)
    [account] = accounts(1)
    read(sessions, account, "us-east-1")
    client, identity = sessions.client(account, "us-east-1", "ec2", EC2_RESERVED_INSTANCES, "read", "probe", POLICY)
    assert identity.role_session_name == "commitd-reads"
    # The credentials were bound to that call only: the client itself holds none to leak to another plan.
    with pytest.raises(botocore.exceptions.NoCredentialsError):
        client.describe_reserved_instances()
    assert "commitd-" not in repr(client._request_signer._credentials)


def test_a_threads_worker_signs_each_plans_purchase_with_the_plans_session(
    runtime: Runtime, intake: Any, env: dict[str, str], sandbox_server: SandboxServer,
    requests_seen: list[tuple[str, str]],
) -> None:
    """Through a real worker (threads pool, 8 plans at once, two accounts and two regions on shared clients): the
    sandbox saw each plan's purchase signed by the session CloudTrail would name ``commitd-<plan_id>``, in the plan's
    account, and the audit says the same."""
    plans = []
    for n, (account, region) in enumerate([(a, r) for a in (ACCOUNT, TAGGING_ACCOUNT) for r in REGIONS[:2]] * 3):
        plan = ri_plan(f"signed-{n}", instance_type=("m5.large", "c5.large", "r5.large")[n // 4],
                       instance_count=1, max_hourly_usd="1.00")
        plans.append({**plan, "account_id": account, "region": region})
    worker = ThreadsWorker(env, "signed", 8)
    try:
        submit_all(intake, plans)
        for plan in plans:
            wait_for_state(runtime, plan["plan_id"], {"succeeded"}, timeout=60)
    finally:
        worker.stop()
    purchases = [session_of(sandbox_server, key) for key, action in requests_seen
                 if action == "ec2:PurchaseReservedInstancesOffering"]
    assert sorted(purchases) == sorted((p["account_id"], f"commitd-{p['plan_id']}") for p in plans)
    for plan in plans:
        [call] = [e for e in runtime.audit.records(plan_id=plan["plan_id"])
                  if e["event"] == "aws_call" and e.get("mutating") and e["operation"].startswith("purchase")]
        assert call["cloudtrail"]["roleSessionName"] == f"commitd-{plan['plan_id']}"
        assert call["cloudtrail"]["arn"].startswith(f"arn:aws:sts::{plan['account_id']}:assumed-role/")
