"""AWS sessions: the customer's role, assumed with its ExternalId, and the one audited AWS call.

Reads share one role session per (account, family). The mutating call of a plan gets a session of its own,
named ``commitd-<plan_id>``, so the ``roleSessionName`` CloudTrail shows for a purchase names the plan that made it
(the audit records what CloudTrail will show).

Clients do not belong to an account. A botocore client costs about 1.3 MB (its generated class and its own copy of
the service model), and rebuilding one takes 10-18 ms, so one client per (service, region, purpose) is shared by
every account and plan, and the credentials are swapped under it: ``call`` binds the plan's role credentials in a
context variable for the duration of the call, and the clients sign with whatever is bound (nothing bound: botocore
refuses to sign). What grows with accounts × regions is the credentials cache (about 1 KB per account and family),
not clients. The client cache is bounded in bytes (``client_bytes``: what a client of the service holds) and in
count.
Credentials stay in this process's memory: they are never shared with other processes (docs/performance.md).

Mutating clients have botocore's retries off: a re-sent purchase without an idempotency token could buy twice
(aws-commitment-apis.md §2); commitd's executor decides when a re-send is safe. Reads keep standard retries.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import boto3
import botocore.exceptions
import botocore.session
from botocore import xform_name
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from cachetools import LRUCache

from config.accounts import AccountConfig
from config.settings import Settings
from worker.audit import AuditLog
from worker.errors import classify, describe
from worker.family import Family
from worker.logs import get_logger, redact

log = get_logger("commitd.aws")
Purpose = Literal["read", "write"]

# Connections per shared client: one client serves every concurrent plan of a process for its service and region
# (a threads pool runs up to 64), and botocore's default of 10 would make the others queue for a connection.
POOL_CONNECTIONS = 64
READ_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=30,
                     max_pool_connections=POOL_CONNECTIONS)
SANDBOX_CREDENTIALS = {"aws_access_key_id": "commitd-sandbox", "aws_secret_access_key": "commitd-sandbox"}
SOURCE_IDENTITY = "commitd"
READ_SESSION_NAME = "commitd-reads"
# The client cache's budget: 48 clients of EC2's size, which is more than all the services of the 13 families in
# 3 regions for both purposes need (docs/performance.md). COMMITD_CLIENT_CACHE_SIZE bounds the count as well.
CLIENT_CACHE_BYTES = 64 * 1024 * 1024
# Role credentials kept: read sessions per (account, family), write sessions per plan (the plans in flight).
READ_CREDENTIALS_KEPT = 65536
WRITE_CREDENTIALS_KEPT = 1024

def write_config(settings: Settings) -> Config:
    """No retries, and the timeouts the executor's send window is computed from (Settings.send_window)."""
    return Config(
        retries={"total_max_attempts": 1},
        connect_timeout=settings.write_connect_timeout,
        read_timeout=settings.write_read_timeout,
        max_pool_connections=POOL_CONNECTIONS,
    )


def role_session_name(plan_id: str) -> str:
    """``commitd-<plan_id>`` made valid for STS: [\\w+=,.@-], at most 64 characters."""
    cleaned = re.sub(r"[^\w+=,.@-]", "-", f"commitd-{plan_id}")
    return cleaned[:64]


def aws_date(response: Any) -> datetime | None:
    """AWS's own time: the ``Date`` header of a response (or of an error's response)."""
    if not isinstance(response, dict):
        return None
    header = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if not header:
        return None
    try:
        return parsedate_to_datetime(header).astimezone(UTC)
    except (TypeError, ValueError):
        return None


def request_id(response: Any) -> str | None:
    if not isinstance(response, dict):
        return None
    value = response.get("ResponseMetadata", {}).get("RequestId")
    return str(value) if value else None


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def audited_call(audit: AuditLog | None, entry: dict[str, Any], call: Callable[[], Any]) -> Any:
    """Make one AWS call and append what happened to the audit trail: outcome, request id, AWS's time, duration.
    The one implementation every AWS call goes through (AssumeRole included)."""
    started = time.monotonic()
    entry = {"event": "aws_call", **entry}
    try:
        response = call()
    except Exception as exc:
        error_response = getattr(exc, "response", None)
        entry.update(outcome=classify(exc).value, error=describe(exc), request_id=request_id(error_response))
        raise
    else:
        entry.update(outcome="ok", request_id=request_id(response))
        return response
    finally:
        entry["duration_ms"] = round((time.monotonic() - started) * 1000, 2)
        if audit is not None:
            audit.append(entry)


@dataclass(frozen=True)
class RoleCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime
    session_name: str

    def __repr__(self) -> str:  # never print the secret parts
        return f"RoleCredentials(session_name={self.session_name}, expiration={self.expiration.isoformat()})"


@dataclass(frozen=True)
class SessionIdentity:
    """What CloudTrail shows for a call made with these credentials."""

    role_arn: str
    role_session_name: str
    source_identity: str
    access_key_id: str


# The credentials the current call signs with (per thread, per greenlet: each has its own context).
_BOUND: ContextVar[RoleCredentials | None] = ContextVar("commitd_bound_credentials", default=None)


@contextmanager
def bound(credentials: RoleCredentials) -> Iterator[None]:
    """Sign every customer-client call made inside this block with ``credentials``."""
    token = _BOUND.set(credentials)
    try:
        yield
    finally:
        _BOUND.reset(token)


class BoundCredentials:
    """What every customer client signs with: the role credentials bound to the call in progress (``bound``).
    Outside a call nothing is bound and botocore is refused credentials (``NoCredentialsError``), so a shared client
    never signs with credentials another plan left behind."""

    method = "commitd-bound"

    @staticmethod
    def _bound() -> RoleCredentials:
        credentials = _BOUND.get()
        if credentials is None:
            raise botocore.exceptions.NoCredentialsError()
        return credentials

    @property
    def access_key(self) -> str:
        return self._bound().access_key_id

    @property
    def secret_key(self) -> str:
        return self._bound().secret_access_key

    @property
    def token(self) -> str:
        return self._bound().session_token

    account_id = None

    def get_frozen_credentials(self) -> ReadOnlyCredentials:
        c = self._bound()
        return ReadOnlyCredentials(c.access_key_id, c.secret_access_key, c.session_token, None)

    def get_deferred_property(self, name: str) -> Callable[[], Any]:
        return lambda: getattr(self, name, None)

    def __repr__(self) -> str:  # never print the secret parts
        return "BoundCredentials()"


class _BoundCredentialProvider:
    """The credential provider of the botocore session customer clients are built from (a public component)."""

    def load_credentials(self) -> BoundCredentials:
        return BoundCredentials()


class ClientCache:
    """An LRU of shared clients bounded in bytes (each charged ``client_bytes`` of its service) and in count."""

    def __init__(self, max_bytes: int, max_count: int) -> None:
        self.max_bytes = max_bytes
        self.max_count = max_count
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Hashable) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, client: Any, size: int) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (client, size)
        self.bytes += size
        while len(self._entries) > 1 and (self.bytes > self.max_bytes or len(self._entries) > self.max_count):
            _, (evicted, evicted_size) = self._entries.popitem(last=False)
            self.bytes -= evicted_size
            self.evictions += 1
            evicted.close()  # its connection pool

    def __len__(self) -> int:
        return len(self._entries)


def client_bytes(operations: int) -> int:
    """What a botocore client of a service with this many operations holds: its generated class (a method and a
    docstring object per operation) and its own service model. tracemalloc on botocore 1.43, one client at a time:
    EC2 (765 operations) 1,266 KB, RDS (164) 350 KB, Organizations (63) 201 KB, STS (11) 128 KB; this line lies
    on or above each. Estimated rather than measured in the worker: tracemalloc there would count every other
    thread's allocations (34 MB for one EC2 client under load) and cost memory itself."""
    return 128 * 1024 + 1600 * operations


class AwsSessions:
    def __init__(self, settings: Settings, audit: AuditLog | None = None,
                 client_cache_bytes: int = CLIENT_CACHE_BYTES) -> None:
        self.settings = settings
        self.audit = audit
        # The daemon's own identity (AssumeRole) comes from boto3's standard chain.
        self._botocore = botocore.session.get_session()
        self._boto3 = boto3.Session(botocore_session=self._botocore)
        # Customer clients: the same loader (the service models are read and parsed once), credentials bound per call.
        customer = botocore.session.get_session()
        customer.register_component("data_loader", self._botocore.get_component("data_loader"))
        customer.register_component("credential_provider", _BoundCredentialProvider())
        self._customer = boto3.Session(botocore_session=customer)
        self._read_credentials: LRUCache[tuple[str, ...], RoleCredentials] = LRUCache(READ_CREDENTIALS_KEPT)
        self._write_credentials: LRUCache[tuple[str, ...], RoleCredentials] = LRUCache(WRITE_CREDENTIALS_KEPT)
        self._assuming: dict[tuple[str, ...], threading.Lock] = {}
        self.clients = ClientCache(client_cache_bytes, settings.client_cache_size)
        self._client_bytes: dict[str, int] = {}  # by service
        self._write_config = write_config(settings)
        # Held for cache lookups and client builds (CPU only), never across a network call: concurrent plans of a
        # threads pool assume roles in parallel; one AssumeRole per key at a time (``_assuming``).
        self._lock = threading.RLock()
        self.assume_role_calls = 0
        self.credential_hits = 0
        self._sts: Any = None
        self._pagination_cache: dict[tuple[str, str], dict[str, Any] | None] = {}

    def _endpoint(self) -> dict[str, Any]:
        return {"endpoint_url": self.settings.aws_endpoint_url} if self.settings.aws_endpoint_url else {}

    def _base_kwargs(self) -> dict[str, Any]:
        kwargs = self._endpoint()
        if kwargs and self._botocore.get_credentials() is None:
            kwargs.update(SANDBOX_CREDENTIALS)
        return kwargs

    def _fresh(self, cached: RoleCredentials | None) -> bool:
        margin = timedelta(seconds=self.settings.credential_refresh_margin)
        return cached is not None and cached.expiration - margin > datetime.now(UTC)

    def _sts_client(self) -> Any:
        with self._lock:
            if self._sts is None:  # one STS client for the daemon's own identity, built once
                self._sts = self._boto3.client("sts", region_name="us-east-1", config=READ_CONFIG,
                                               **self._base_kwargs())
            return self._sts

    def _assume(
        self, account: AccountConfig, family: Family, session_name: str, policy_actions: list[str], plan_id: str
    ) -> RoleCredentials:
        sts = self._sts_client()
        request: dict[str, Any] = {
            "RoleArn": account.role_arn,
            "RoleSessionName": session_name,
            "SourceIdentity": SOURCE_IDENTITY,
            "Policy": json.dumps(Family.session_policy(policy_actions), separators=(",", ":")),
            "DurationSeconds": 3600,
        }
        external_id = account.external_id()
        if external_id is not None:
            request["ExternalId"] = external_id.get_secret_value()
        entry = {
            "plan_id": plan_id,
            "account_id": account.account_id,
            "region": "us-east-1",
            "service": "sts",
            "operation": "assume_role",
            "mutating": False,
            "params": {**request, "ExternalId": "[redacted]"} if "ExternalId" in request else dict(request),
        }
        response = audited_call(self.audit, entry, lambda: sts.assume_role(**request))
        with self._lock:
            self.assume_role_calls += 1
        creds = response["Credentials"]
        expiration = creds["Expiration"]
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=UTC)
        log.info("role_assumed", account_id=account.account_id, family=family.name, session_name=session_name)
        return RoleCredentials(
            creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"], expiration, session_name
        )

    def credentials(
        self, account: AccountConfig, family: Family, purpose: Purpose, plan_id: str, policy_actions: list[str]
    ) -> RoleCredentials:
        """Read credentials per (account, family); write credentials per plan (CloudTrail names the plan)."""
        cache: LRUCache[tuple[str, ...], RoleCredentials]
        if purpose == "write":
            key: tuple[str, ...] = (account.account_id, family.name, plan_id)
            cache, session_name = self._write_credentials, role_session_name(plan_id)
        else:
            key, cache, session_name = (account.account_id, family.name), self._read_credentials, READ_SESSION_NAME
        with self._lock:
            cached = cache.get(key)
            if self._fresh(cached):
                self.credential_hits += 1
                assert cached is not None
                return cached
            assuming = self._assuming.setdefault(key, threading.Lock())
        with assuming:  # one AssumeRole per key at a time; other keys go on in parallel
            with self._lock:
                cached = cache.get(key)
                if self._fresh(cached):  # another thread assumed it meanwhile
                    self.credential_hits += 1
                    assert cached is not None
                    return cached
            fresh = self._assume(account, family, session_name, policy_actions, plan_id)
            with self._lock:
                cache[key] = fresh
                self._assuming.pop(key, None)
            return fresh

    def _shared_client(self, region: str, service: str, purpose: Purpose) -> Any:
        """The client every account shares for this service, region and purpose."""
        key = (service, region, purpose)
        with self._lock:
            client = self.clients.get(key)
            if client is not None:
                return client
            config = self._write_config if purpose == "write" else READ_CONFIG
            client = self._customer.client(service, region_name=region, config=config, **self._endpoint())
            size = self._client_bytes.setdefault(service, client_bytes(len(client.meta.service_model.operation_names)))
            self.clients.put(key, client, size)
            log.info("aws_client_built", service=service, region=region, purpose=purpose, size_kb=size // 1024,
                     clients=len(self.clients), cache_kb=self.clients.bytes // 1024)
            return client

    def client(
        self,
        account: AccountConfig,
        region: str,
        service: str,
        family: Family,
        purpose: Purpose,
        plan_id: str,
        policy_actions: list[str],
    ) -> tuple[Any, SessionIdentity]:
        """The shared client and the identity of the role session to bind while calling it (``call`` does both)."""
        credentials = self.credentials(account, family, purpose, plan_id, policy_actions)
        identity = SessionIdentity(account.role_arn, credentials.session_name, SOURCE_IDENTITY,
                                   credentials.access_key_id)
        return self._shared_client(region, service, purpose), identity

    def call(
        self,
        account: AccountConfig,
        region: str,
        service: str,
        family: Family,
        purpose: Purpose,
        plan_id: str,
        policy_actions: list[str],
        operation: str,
        params: dict[str, Any],
    ) -> Any:
        """One audited AWS call through the customer's role. Mutating calls record the identity CloudTrail shows."""
        credentials = self.credentials(account, family, purpose, plan_id, policy_actions)
        client = self._shared_client(region, service, purpose)
        entry: dict[str, Any] = {
            "plan_id": plan_id,
            "account_id": account.account_id,
            "region": region,
            "service": service,
            "operation": operation,
            "mutating": purpose == "write",
            "params": redact(jsonable(params)),
        }
        if purpose == "write":
            role_name = account.role_arn.rsplit("/", 1)[-1]
            entry["cloudtrail"] = {  # userIdentity as CloudTrail records it for this call
                "arn": f"arn:aws:sts::{account.account_id}:assumed-role/{role_name}/{credentials.session_name}",
                "roleSessionName": credentials.session_name,
                "sourceIdentity": SOURCE_IDENTITY,
                "roleArn": account.role_arn,
            }

        def make_call() -> Any:
            with bound(credentials):
                return getattr(client, operation)(**params)

        return audited_call(self.audit, entry, make_call)

    def stats(self) -> dict[str, Any]:
        """The caches' sizes and hit counts (the bench reports them)."""
        with self._lock:
            return {"clients": len(self.clients), "client_bytes": self.clients.bytes,
                    "client_hits": self.clients.hits, "client_misses": self.clients.misses,
                    "client_evictions": self.clients.evictions, "client_size_by_service": dict(self._client_bytes),
                    "read_credentials": len(self._read_credentials),
                    "write_credentials": len(self._write_credentials),
                    "credential_hits": self.credential_hits, "assume_role_calls": self.assume_role_calls}

    def pagination(self, service: str, operation: str) -> dict[str, Any] | None:
        key = (service, operation)
        if key not in self._pagination_cache:
            self._pagination_cache[key] = self._pagination(service, operation)
        return self._pagination_cache[key]

    def _api_name(self, service: str, operation: str) -> tuple[Any, str]:
        """The service model (from the shared loader, no client built) and the API name of a boto3 method name."""
        model = self._botocore.get_service_model(service)
        names = {xform_name(name): name for name in model.operation_names}
        return model, names.get(operation, operation)

    def _pagination(self, service: str, operation: str) -> dict[str, Any] | None:
        """botocore's pagination model for a read operation: its own input and output token names (``NextToken``,
        ``Marker``, ``nextToken``, ...) and result key; None when the operation does not page."""
        try:
            model = self._botocore.get_paginator_model(service)
            _, api_name = self._api_name(service, operation)
            return dict(model.get_paginator(api_name))
        except (ValueError, KeyError, botocore.exceptions.UnknownServiceError, botocore.exceptions.DataNotFoundError):
            return self._token_members(service, operation)

    def _token_members(self, service: str, operation: str) -> dict[str, Any] | None:
        """Operations without a botocore paginator (Savings Plans): a token member both in the input and the
        output shape is followed the same way."""
        service_model, api_name = self._api_name(service, operation)
        op_model = service_model.operation_model(api_name)
        inputs = set(op_model.input_shape.members) if op_model.input_shape else set()
        outputs = set(op_model.output_shape.members) if op_model.output_shape else set()
        for name in ("NextToken", "nextToken", "Marker", "marker", "NextMarker"):
            if name in inputs and name in outputs:
                return {"input_token": name, "output_token": name, "result_key": None}
        return None
