"""AWS sessions: the customer's role, assumed with its ExternalId, one session per (account, family).

Clients are built from one shared botocore session (its loader and model caches are the expensive part) and
kept in a bounded LRU cache per (account, region, service, family, purpose). Mutating clients have botocore's
retries off: a re-sent purchase without an idempotency token could buy twice (aws-commitment-apis.md §2);
commitd's own loop decides when a re-send is safe. Reads keep botocore's standard retries.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import boto3
import botocore.session
from botocore.config import Config
from cachetools import LRUCache

from config.accounts import AccountConfig
from config.settings import Settings
from worker.actions import Family
from worker.audit import AuditLog
from worker.errors import classify, describe
from worker.logs import get_logger

log = get_logger("commitd.aws")
Purpose = Literal["read", "write"]

READ_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=30)
WRITE_CONFIG = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=60)
SANDBOX_CREDENTIALS = {"aws_access_key_id": "commitd-sandbox", "aws_secret_access_key": "commitd-sandbox"}


def role_session_name(plan_id: str) -> str:
    """``commitd-<plan_id>`` made valid for STS: [\\w+=,.@-], at most 64 characters."""
    cleaned = re.sub(r"[^\w+=,.@-]", "-", f"commitd-{plan_id}")
    return cleaned[:64]


@dataclass(frozen=True)
class RoleCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime

    def __repr__(self) -> str:  # never print the secret parts
        return f"RoleCredentials(expiration={self.expiration.isoformat()})"


class AwsSessions:
    def __init__(self, settings: Settings, audit: AuditLog | None = None) -> None:
        self.settings = settings
        self.audit = audit
        self._botocore = botocore.session.get_session()
        self._boto3 = boto3.Session(botocore_session=self._botocore)
        self._credentials: dict[tuple[str, str], RoleCredentials] = {}
        self._clients: LRUCache[tuple[str, ...], Any] = LRUCache(maxsize=settings.client_cache_size)
        self._lock = threading.RLock()
        self.assume_role_calls = 0
        self._sts: Any = None

    def _base_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.settings.aws_endpoint_url:
            kwargs["endpoint_url"] = self.settings.aws_endpoint_url
            if self._botocore.get_credentials() is None:
                kwargs.update(SANDBOX_CREDENTIALS)
        return kwargs

    def _assume(self, account: AccountConfig, family: Family, plan_id: str) -> RoleCredentials:
        key = (account.account_id, family.name)
        margin = timedelta(seconds=self.settings.credential_refresh_margin)
        cached = self._credentials.get(key)
        if cached and cached.expiration - margin > datetime.now(UTC):
            return cached
        if self._sts is None:  # one STS client for the daemon's own identity, built once
            self._sts = self._boto3.client("sts", region_name="us-east-1", config=READ_CONFIG, **self._base_kwargs())
        sts = self._sts
        request: dict[str, Any] = {
            "RoleArn": account.role_arn,
            "RoleSessionName": role_session_name(plan_id),
            "SourceIdentity": "commitd",
            "Policy": json.dumps(family.session_policy(account.extra_permissions), separators=(",", ":")),
            "DurationSeconds": 3600,
        }
        external_id = account.external_id()
        if external_id is not None:
            request["ExternalId"] = external_id.get_secret_value()
        response = self._audited_assume(sts, request, account, plan_id)
        self.assume_role_calls += 1
        creds = response["Credentials"]
        expiration = creds["Expiration"]
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=UTC)
        result = RoleCredentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"], expiration)
        self._credentials[key] = result
        log.info("role_assumed", account_id=account.account_id, family=family.name, plan_id=plan_id)
        return result

    def _audited_assume(self, sts: Any, request: dict[str, Any], account: AccountConfig, plan_id: str) -> Any:
        """AssumeRole is an AWS call like any other: audited, with the ExternalId redacted."""
        started = time.monotonic()
        entry: dict[str, Any] = {
            "event": "aws_call",
            "plan_id": plan_id,
            "account_id": account.account_id,
            "region": "us-east-1",
            "service": "sts",
            "operation": "assume_role",
            "mutating": False,
            "params": {**request, "ExternalId": "[redacted]"} if "ExternalId" in request else dict(request),
        }
        try:
            response = sts.assume_role(**request)
        except Exception as exc:
            entry.update(outcome=classify(exc).value, error=describe(exc))
            raise
        else:
            entry.update(outcome="ok", request_id=response.get("ResponseMetadata", {}).get("RequestId"))
            return response
        finally:
            entry["duration_ms"] = round((time.monotonic() - started) * 1000, 2)
            if self.audit is not None:
                self.audit.append(entry)

    def client(
        self, account: AccountConfig, region: str, service: str, family: Family, purpose: Purpose, plan_id: str
    ) -> Any:
        with self._lock:
            credentials = self._assume(account, family, plan_id)
            key = (account.account_id, region, service, family.name, purpose, credentials.access_key_id)
            client = self._clients.get(key)
            if client is None:
                kwargs = self._base_kwargs()
                kwargs.update(
                    aws_access_key_id=credentials.access_key_id,
                    aws_secret_access_key=credentials.secret_access_key,
                    aws_session_token=credentials.session_token,
                )
                client = self._boto3.client(
                    service,
                    region_name=region,
                    config=WRITE_CONFIG if purpose == "write" else READ_CONFIG,
                    **kwargs,
                )
                self._clients[key] = client
            return client
