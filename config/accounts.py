"""The account registry: which customer accounts commitd may act in, and through which role.

Plans name an account id only; the role, its ExternalId and the account's limits come from here, so a producer
can never point the worker at another role. The ExternalId is read from an environment variable or a file and is
held as a secret: it never reaches a log, an audit record or an error message.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from config.permissions import EXTRA_PERMISSIONS
from config.settings import ConfigurationError


class AccountLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_upfront_usd_per_plan: Decimal | None = Field(
        None, ge=0, description="refuse plans that could pay more upfront"
    )
    max_commitment_usd_per_plan: Decimal | None = Field(
        None, ge=0, description="refuse plans that could commit more in total: upfront plus recurring over the term"
    )
    # Spend caps (worker.budgets): budget reserved atomically across all workers before the mutating call. A day and
    # a month are UTC calendar periods on Redis's clock.
    commitment_usd_per_day: Decimal | None = Field(None, ge=0, description="cap on total commitment made per UTC day")
    commitment_usd_per_month: Decimal | None = Field(None, ge=0, description="cap on total commitment per UTC month")
    upfront_usd_per_day: Decimal | None = Field(None, ge=0, description="cap on upfront payments per UTC day")
    upfront_usd_per_month: Decimal | None = Field(None, ge=0, description="cap on upfront payments per UTC month")
    on_cap: Literal["fail", "wait"] = Field(
        "fail", description="a plan that would cross a cap fails (nothing spent), or waits until budget frees up"
    )

    def caps(self) -> dict[str, Decimal]:
        """The caps in force, by ``<period>_<measure>`` (``day_commitment``, ``month_upfront``...)."""
        named = {"day_commitment": self.commitment_usd_per_day, "month_commitment": self.commitment_usd_per_month,
                 "day_upfront": self.upfront_usd_per_day, "month_upfront": self.upfront_usd_per_month}
        return {name: cap for name, cap in named.items() if cap is not None}


class ApprovalThreshold(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    commitment_usd: Decimal | None = Field(None, ge=0, description="plans committing more than this wait")
    upfront_usd: Decimal | None = Field(None, ge=0, description="plans paying more than this upfront wait")


class ApprovalPolicy(BaseModel):
    """Plans above a threshold wait in ``awaiting_approval`` until enough people approve (worker.approvals)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    above: ApprovalThreshold = Field(default_factory=lambda: ApprovalThreshold(), description="every action")
    per_action: dict[str, ApprovalThreshold] = Field(
        default_factory=dict, description="IAM action name -> a threshold that replaces `above` for that action"
    )
    approvers: Literal[1, 2] = Field(1, description="different people who must approve")
    valid_seconds: float = Field(86_400.0, gt=0, description="an approval not used within this long expires")

    def threshold(self, action: str) -> ApprovalThreshold:
        for name, threshold in self.per_action.items():
            if name.lower() == action.lower():
                return threshold
        return self.above


class AccountConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    account_id: str = Field(pattern=r"^\d{12}$")
    name: str = ""
    role_arn: str = Field(pattern=r"^arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
    external_id_env: str | None = Field(None, description="environment variable holding the ExternalId")
    external_id_file: Path | None = Field(None, description="file holding the ExternalId")
    allowed_actions: list[str] = Field(default_factory=lambda: ["*"], description="IAM action names, or '*'")
    read_only: bool = Field(False, description="a trial role: its plans run as dry runs, or fail (read_only_plans)")
    read_only_plans: Literal["dry_run", "fail"] = Field(
        "dry_run", description="on a read-only (trial) role: run every plan as a dry run, or fail it clearly"
    )
    dry_run: bool = Field(False, description="every plan of this account runs as a dry run")
    extra_permissions: list[str] = Field(
        default_factory=list, description="actions beyond the production role that this customer granted"
    )
    optional_blocks: list[Literal["organizations"]] = Field(
        default_factory=list, description="optional blocks of the production role this customer granted"
    )
    limits: AccountLimits = Field(default_factory=lambda: AccountLimits())
    approvals: ApprovalPolicy | None = Field(None, description="approval thresholds (docs/controls.md)")
    renewal: Any = Field(None, description="scheduled renewals: a worker.renewals.RenewalPolicy (docs/renewals.md)")

    @field_validator("renewal")
    @classmethod
    def _renewal_policy(cls, value: Any) -> Any:
        if value is None:
            return None
        from worker.renewals import RenewalPolicy  # not at the top: worker.renewals imports this module

        return RenewalPolicy.model_validate(value)

    @model_validator(mode="after")
    def _one_external_id_source(self) -> AccountConfig:
        if self.external_id_env and self.external_id_file:
            raise ValueError("give external_id_env or external_id_file, not both")
        known = {a.lower() for a in EXTRA_PERMISSIONS}
        unknown = [a for a in self.extra_permissions if a.lower() not in known]
        if unknown:
            raise ValueError(f"extra_permissions {unknown} are not used by commitd; known: {sorted(EXTRA_PERMISSIONS)}")
        return self

    def external_id(self) -> SecretStr | None:
        if self.external_id_env:
            value = os.environ.get(self.external_id_env)
            if value is None:
                raise ConfigurationError(
                    f"account {self.account_id}: environment variable {self.external_id_env} is not set"
                )
            return SecretStr(value.strip())
        if self.external_id_file:
            try:
                return SecretStr(self.external_id_file.read_text().strip())
            except OSError as exc:
                raise ConfigurationError(
                    f"account {self.account_id}: cannot read external_id_file {self.external_id_file}: "
                    f"{exc.strerror}"
                ) from None
        return None

    def granted(self, action: str) -> bool:
        """Did the customer grant this extra permission (beyond the production role)?"""
        return action.lower() in {a.lower() for a in self.extra_permissions}

    def grants_block(self, block: str) -> bool:
        """Did the customer grant this optional block of the production role (e.g. "organizations")?"""
        return block in self.optional_blocks

    def allows(self, action: str) -> bool:
        return "*" in self.allowed_actions or action.lower() in {a.lower() for a in self.allowed_actions}


class AccountRegistry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    accounts: list[AccountConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> AccountRegistry:
        ids = [a.account_id for a in self.accounts]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"accounts listed twice: {duplicates}")
        return self

    def get(self, account_id: str) -> AccountConfig | None:
        for account in self.accounts:
            if account.account_id == account_id:
                return account
        return None

    def check_secrets(self) -> None:
        """Fail at start, not at the first plan, when an ExternalId cannot be read."""
        for account in self.accounts:
            account.external_id()

    @classmethod
    def load(cls, path: Path | None) -> AccountRegistry:
        if path is None:
            return cls()
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigurationError(f"COMMITD_ACCOUNTS_FILE: cannot read {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigurationError(f"COMMITD_ACCOUNTS_FILE: {path} is not JSON: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigurationError(f"COMMITD_ACCOUNTS_FILE {path}: {problems}") from None


class ReloadingRegistry:
    """The registry as its file is now: read again when the file's modification time, size or inode changes.
    While the file is invalid (a half-written edit), ``current`` raises ConfigurationError: nothing is sent on a
    configuration nobody can read (the executor waits), and the last good one is not silently kept."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._registry = AccountRegistry.load(path)
        self._registry.check_secrets()
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> AccountRegistry:
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return self._registry
        registry = AccountRegistry.load(self.path)
        registry.check_secrets()
        self._registry, self._stamp = registry, stamp
        return registry
