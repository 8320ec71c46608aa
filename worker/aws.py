"""AWS sessions: the customer's role, assumed with its ExternalId, and the one audited AWS call.

Reads share one role session per (account, family). The mutating call of a plan gets a session of its own,
named ``commitd-<plan_id>``, so the ``roleSessionName`` CloudTrail shows for a purchase names the plan that made it
(the audit records what CloudTrail will show). Clients are built from one shared botocore session (its loader and
model caches are the expensive part); read clients are kept in a bounded LRU, per-plan write clients in a small one.
Mutating clients have botocore's retries off: a re-sent purchase without an idempotency token could buy twice
(aws-commitment-apis.md §2); commitd's executor decides when a re-send is safe. Reads keep standard retries.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import boto3
import botocore.exceptions
import botocore.session
from botocore.config import Config
from cachetools import LRUCache

from config.accounts import AccountConfig
from config.settings import Settings
from worker.audit import AuditLog
from worker.errors import classify, describe
from worker.family import Family
from worker.logs import get_logger, redact

log = get_logger("commitd.aws")
Purpose = Literal["read", "write"]

READ_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=30)
SANDBOX_CREDENTIALS = {"aws_access_key_id": "commitd-sandbox", "aws_secret_access_key": "commitd-sandbox"}
SOURCE_IDENTITY = "commitd"
READ_SESSION_NAME = "commitd-reads"


def write_config(settings: Settings) -> Config:
    """No retries, and the timeouts the executor's send window is computed from (Settings.send_window)."""
    return Config(
        retries={"total_max_attempts": 1},
        connect_timeout=settings.write_connect_timeout,
        read_timeout=settings.write_read_timeout,
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


class AwsSessions:
    def __init__(self, settings: Settings, audit: AuditLog | None = None) -> None:
        self.settings = settings
        self.audit = audit
        self._botocore = botocore.session.get_session()
        self._boto3 = boto3.Session(botocore_session=self._botocore)
        self._read_credentials: dict[tuple[str, str], RoleCredentials] = {}
        self._write_credentials: LRUCache[tuple[str, str, str], RoleCredentials] = LRUCache(maxsize=64)
        self._clients: LRUCache[tuple[str, ...], Any] = LRUCache(maxsize=settings.client_cache_size)
        self._write_clients: LRUCache[tuple[str, ...], Any] = LRUCache(maxsize=8)
        self._write_config = write_config(settings)
        self._lock = threading.RLock()
        self.assume_role_calls = 0
        self._sts: Any = None
        self._pagination_cache: dict[tuple[str, str], dict[str, Any] | None] = {}

    def _base_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.settings.aws_endpoint_url:
            kwargs["endpoint_url"] = self.settings.aws_endpoint_url
            if self._botocore.get_credentials() is None:
                kwargs.update(SANDBOX_CREDENTIALS)
        return kwargs

    def _fresh(self, cached: RoleCredentials | None) -> bool:
        margin = timedelta(seconds=self.settings.credential_refresh_margin)
        return cached is not None and cached.expiration - margin > datetime.now(UTC)

    def _assume(
        self, account: AccountConfig, family: Family, session_name: str, policy_actions: list[str], plan_id: str
    ) -> RoleCredentials:
        if self._sts is None:  # one STS client for the daemon's own identity, built once
            self._sts = self._boto3.client("sts", region_name="us-east-1", config=READ_CONFIG, **self._base_kwargs())
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
        response = audited_call(self.audit, entry, lambda: self._sts.assume_role(**request))
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
        with self._lock:
            if purpose == "write":
                wkey = (account.account_id, family.name, plan_id)
                cached = self._write_credentials.get(wkey)
                if not self._fresh(cached):
                    cached = self._assume(account, family, role_session_name(plan_id), policy_actions, plan_id)
                    self._write_credentials[wkey] = cached
                assert cached is not None
                return cached
            rkey = (account.account_id, family.name)
            cached = self._read_credentials.get(rkey)
            if not self._fresh(cached):
                cached = self._assume(account, family, READ_SESSION_NAME, policy_actions, plan_id)
                self._read_credentials[rkey] = cached
            assert cached is not None
            return cached

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
        with self._lock:
            credentials = self.credentials(account, family, purpose, plan_id, policy_actions)
            key = (account.account_id, region, service, family.name, purpose, credentials.access_key_id)
            cache = self._write_clients if purpose == "write" else self._clients
            client = cache.get(key)
            if client is None:
                kwargs = self._base_kwargs()
                kwargs.update(
                    aws_access_key_id=credentials.access_key_id,
                    aws_secret_access_key=credentials.secret_access_key,
                    aws_session_token=credentials.session_token,
                )
                config = self._write_config if purpose == "write" else READ_CONFIG
                client = self._boto3.client(service, region_name=region, config=config, **kwargs)
                cache[key] = client
            identity = SessionIdentity(account.role_arn, credentials.session_name, SOURCE_IDENTITY,
                                       credentials.access_key_id)
            return client, identity

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
        client, identity = self.client(account, region, service, family, purpose, plan_id, policy_actions)
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
            role_name = identity.role_arn.rsplit("/", 1)[-1]
            entry["cloudtrail"] = {  # userIdentity as CloudTrail records it for this call
                "arn": f"arn:aws:sts::{account.account_id}:assumed-role/{role_name}/{identity.role_session_name}",
                "roleSessionName": identity.role_session_name,
                "sourceIdentity": identity.source_identity,
                "roleArn": identity.role_arn,
            }
        return audited_call(self.audit, entry, lambda: getattr(client, operation)(**params))

    def pagination(self, service: str, operation: str) -> dict[str, Any] | None:
        key = (service, operation)
        if key not in self._pagination_cache:
            self._pagination_cache[key] = self._pagination(service, operation)
        return self._pagination_cache[key]

    def _pagination(self, service: str, operation: str) -> dict[str, Any] | None:
        """botocore's pagination model for a read operation: its own input and output token names (``NextToken``,
        ``Marker``, ``nextToken``, ...) and result key; None when the operation does not page."""
        try:
            model = self._botocore.get_paginator_model(service)
            client_meta = self._boto3.client(service, region_name="us-east-1", **SANDBOX_CREDENTIALS).meta
            api_name = client_meta.method_to_api_mapping.get(operation, operation)
            return dict(model.get_paginator(api_name))
        except (ValueError, KeyError, botocore.exceptions.UnknownServiceError):
            return self._token_members(service, operation)

    def _token_members(self, service: str, operation: str) -> dict[str, Any] | None:
        """Operations without a botocore paginator (Savings Plans): a token member both in the input and the
        output shape is followed the same way."""
        client = self._boto3.client(service, region_name="us-east-1", **SANDBOX_CREDENTIALS)
        api_name = client.meta.method_to_api_mapping.get(operation, operation)
        op_model = client.meta.service_model.operation_model(api_name)
        inputs = set(op_model.input_shape.members) if op_model.input_shape else set()
        outputs = set(op_model.output_shape.members) if op_model.output_shape else set()
        for name in ("NextToken", "nextToken", "Marker", "marker", "NextMarker"):
            if name in inputs and name in outputs:
                return {"input_token": name, "output_token": name, "result_key": None}
        return None
