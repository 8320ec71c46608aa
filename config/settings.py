"""Daemon settings: ``COMMITD_*`` environment variables, then an optional TOML file, then defaults.

The file is named by ``COMMITD_CONFIG_FILE``; its keys are the field names below (``redis_url = "..."``).
A bad value stops the daemon at start with a message that names the setting.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, FilePath, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class ConfigurationError(RuntimeError):
    """A setting is missing or invalid; the message names it."""


class Settings(BaseSettings):
    # hide_input_in_errors: a bad value (a URL with its password, say) is never repeated in an error message.
    model_config = SettingsConfigDict(env_prefix="COMMITD_", extra="forbid", frozen=True, hide_input_in_errors=True)

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis for the ledger, intake, audit, broker: redis://, rediss:// "
        "(TLS), unix://, or sentinel://[user:password@]host1:26379,host2:26379/<master name>[/<db>] (sentinels:// "
        "with TLS); the URL's credentials are the data nodes'"
    )
    redis_tls_ca_file: FilePath | None = Field(
        None, description="rediss:// or sentinels://: the CA certificates that sign the servers' (default: the "
        "system's); a server certificate is always verified"
    )
    redis_tls_cert_file: FilePath | None = Field(None, description="client certificate, for tls-auth-clients")
    redis_tls_key_file: FilePath | None = Field(None, description="the client certificate's private key")
    redis_tls_check_hostname: bool = Field(True, description="the server's certificate must name the host dialled")
    redis_sentinel_username: str | None = Field(None, description="the sentinels' own ACL user, if they have one")
    redis_sentinel_password: SecretStr | None = Field(
        None, description="the sentinels' own password (their requirepass), if they have one"
    )
    redis_socket_timeout: float = Field(
        5.0, gt=0, description="seconds a Redis command may wait for its reply: a half-open connection fails instead "
        "of hanging a lease's heartbeat"
    )
    redis_connect_timeout: float = Field(2.0, gt=0, description="seconds to open a Redis connection")
    redis_health_check_interval: int = Field(
        10, ge=0, description="a Redis connection idle this long is checked with PING before it is used"
    )
    key_prefix: str = Field("commitd:", description="prefix of every Redis key and stream")
    accounts_file: Path | None = Field(None, description="JSON file: the customer accounts and their roles")
    aws_endpoint_url: str | None = Field(
        None, description="send every AWS call here (the sandbox); unset means real AWS endpoints"
    )
    log_format: Literal["auto", "json", "console"] = Field("auto", description="auto: console on a terminal")
    log_level: str = "INFO"
    lease_seconds: float = Field(
        60.0, gt=0, description="how long a worker holds a running plan without renewal; must exceed the send window"
    )
    max_attempts: int = Field(5, ge=1, description="task executions per plan before it needs attention")
    call_attempts: int = Field(4, ge=1, description="sends or failed reconciling reads per plan run before giving up")
    retry_base_seconds: float = Field(0.5, ge=0, description="first backoff of the AWS retry loop")
    retry_max_seconds: float = Field(8.0, ge=0)
    write_connect_timeout: float = Field(5.0, gt=0, description="connect timeout of the mutating AWS client")
    write_read_timeout: float = Field(30.0, gt=0, description="read timeout of the mutating AWS client")
    send_margin_seconds: float = Field(
        15.0, ge=0, description="slack beyond the client timeouts: a send starts only with this much lease to spare, "
        "and a worker taking over waits this long past the old lease"
    )
    consistency_delay_seconds: float = Field(
        20.0, ge=0, description="AWS's describe calls may lag a call by this long; absence is conclusive only after "
        "the last send's timeouts plus this delay"
    )
    reconcile_interval_seconds: float = Field(
        5.0, gt=0, description="between the spread-out reconciling reads of a plan whose outcome is not known yet"
    )
    max_pending_seconds: float = Field(
        86_400.0, gt=0, description="an asynchronous AWS operation (a modification, an account creation) still in "
        "progress after this long puts its plan in needs_attention instead of following it forever"
    )
    send_record_durability: Literal["auto", "waitaof", "replicas", "fsync_always", "none"] = Field(
        "auto", description="how a send record is made durable before a call without a token: auto picks WAITAOF "
        "(Redis 7.2+ with AOF), WAIT on replicas, or appendfsync always, and refuses to send without any of them; "
        "none is for throwaway setups only"
    )
    durability_replicas: int = Field(1, ge=1, description="replicas that must acknowledge (replicas mode)")
    durability_timeout_ms: int = Field(2000, ge=1, description="how long to wait for durability before not sending")
    visibility_timeout: int = Field(
        3600, ge=10, description="seconds before Redis redelivers an unacknowledged task message"
    )
    sweep_interval: float = Field(5.0, gt=0, description="seconds between scans for stalled and due plans")
    stalled_after: float = Field(300.0, gt=0, description="a queued plan with no worker for this long is re-sent")
    retention_plans_days: float | None = Field(
        None, ge=0, description="terminal plans settled longer ago are replaced by their tombstone; unset: kept"
    )
    retention_stream_days: float | None = Field(
        None, ge=0, description="intake stream entries (once recorded) and dead letters (once archived) older than "
        "this are trimmed; unset: kept"
    )
    retention_interval: float = Field(3600.0, gt=0, description="seconds between the intake's retention runs")
    results_maxlen: int = Field(10_000, ge=100, description="entries kept in the results stream (approximate)")
    heartbeat_seconds: float = Field(5.0, gt=0, description="how often each worker process says it is alive")
    notify_webhook_url: SecretStr | None = Field(None, description="webhook for notifications (docs/observability.md)")
    notify_events: str = Field("needs_attention,failed,awaiting_approval,succeeded",
                               description="which plan outcomes are notified, comma-separated")
    notify_timeout_seconds: float = Field(5.0, gt=0)
    notify_attempts: int = Field(5, ge=1)
    notify_backoff_seconds: float = Field(1.0, gt=0)
    notify_reclaim_seconds: float = Field(60.0, gt=0)
    notify_max_deliveries: int = Field(10, ge=1)
    dry_run: bool = Field(False, description="every plan of every account runs as a dry run (nothing is sent)")
    pause_recheck_seconds: float = Field(10.0, gt=0, description="how often a paused plan looks at its switch again")
    cap_recheck_seconds: float = Field(
        300.0, gt=0, description="how often a plan waiting for budget (limits.on_cap = wait) looks again"
    )
    rate_limit_per_second: float = Field(
        10.0, ge=0, description="AWS calls per second per account, region and service, shared by all workers (0: off)"
    )
    rate_limit_burst: int = Field(20, ge=1, description="calls that may go at once before the rate applies")
    rate_limit_max_wait_seconds: float = Field(
        30.0, gt=0, description="a call waits this long at most for its turn; then the plan is given back to its queue"
    )
    max_plan_bytes: int = Field(64 * 1024, ge=1024, description="larger plans are rejected at intake")
    credential_refresh_margin: int = Field(300, ge=0, description="renew assumed-role credentials this early")
    client_cache_size: int = Field(128, ge=1, description="boto3 clients kept (LRU); an EC2 client holds about 1.4 MB")
    audit_key_file: FilePath | None = Field(
        None, description="keyed audit trail: a file of at least 16 random bytes; every entry and checkpoint carries "
        "its HMAC-SHA256, so no one without the file can rewrite the trail unnoticed (docs/audit.md)"
    )
    audit_retention_days: float = Field(
        30.0, ge=0, description="audit entries older than this are archived and trimmed from Redis (only with "
        "COMMITD_AUDIT_ARCHIVE_DIR set: nothing is trimmed without being exported)"
    )
    audit_archive_dir: Path | None = Field(
        None, description="where the archive step writes trimmed audit entries as JSON Lines, each file with its "
        "checkpoint; unset: the audit trail is never trimmed"
    )

    def redis_options(self) -> dict[str, Any]:
        """Timeouts and health checks every Redis connection of commitd's uses (redis-py and Celery's broker)."""
        return {"socket_timeout": self.redis_socket_timeout, "socket_connect_timeout": self.redis_connect_timeout,
                "health_check_interval": self.redis_health_check_interval, "socket_keepalive": True}

    def redis_target(self) -> RedisTarget:
        """``redis_url`` parsed: a plain URL for redis-py, or the sentinels and the master's name
        (``worker.redis_connect`` builds every client of commitd's from it)."""
        return parse_redis_url(self.redis_url)

    @property
    def send_window(self) -> float:
        """Longest a send may take to reach AWS once started: the write client's timeouts plus the margin."""
        return self.write_connect_timeout + self.write_read_timeout + self.send_margin_seconds

    @model_validator(mode="after")
    def _lease_covers_a_send(self) -> Settings:
        if self.lease_seconds <= self.send_window:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds}) must exceed write_connect_timeout + write_read_timeout + "
                f"send_margin_seconds ({self.send_window}): otherwise no send could ever start"
            )
        return self

    @model_validator(mode="after")
    def _rate_limit_wait_covers_a_token(self) -> Settings:
        # A run needs a token for its reading call and then one for its send: a wait shorter than one token's
        # refill would give a plan alone on a bucket of one back after every read, for ever.
        if self.rate_limit_per_second > 0 and self.rate_limit_max_wait_seconds < 1 / self.rate_limit_per_second:
            raise ValueError(
                f"rate_limit_max_wait_seconds ({self.rate_limit_max_wait_seconds}) must be at least one token's "
                f"refill (1 / rate_limit_per_second = {1 / self.rate_limit_per_second:g} s): otherwise a plan may "
                "never get the token of its send after that of its read"
            )
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parse_redis_url(value)  # its errors never repeat the URL (it may hold a password)
        return value

    @model_validator(mode="after")
    def _redis_tls(self) -> Settings:
        target = self.redis_target()
        given = [name for name in ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
                 if getattr(self, name) is not None]
        if given and not target.tls:
            raise ValueError(
                f"{', '.join('COMMITD_' + n.upper() for n in given)} set, but COMMITD_REDIS_URL is not a TLS URL "
                "(rediss:// or sentinels://): commitd would connect without TLS"
            )
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError("COMMITD_REDIS_TLS_CERT_FILE and COMMITD_REDIS_TLS_KEY_FILE go together")
        if (self.redis_sentinel_password or self.redis_sentinel_username) and not target.sentinels:
            raise ValueError("COMMITD_REDIS_SENTINEL_USERNAME/PASSWORD set, but COMMITD_REDIS_URL is not a "
                             "sentinel URL")
        return self

    @field_validator("audit_key_file")
    @classmethod
    def _audit_key(cls, value: Path | None) -> Path | None:
        if value is not None:
            from worker.audit import read_key_file

            read_key_file(value)  # too short or unreadable stops the daemon at start; the error never shows the key
        return value

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or " " in value:
            raise ValueError("must be non-empty without spaces")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("COMMITD_CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    def key(self, *parts: str) -> str:
        return self.key_prefix + ":".join(parts)

    def masked(self) -> dict[str, Any]:
        """The effective configuration for display: credentials in URLs are masked."""
        data = self.model_dump(mode="json")
        data["redis_url"] = mask_url(self.redis_url)
        if self.redis_sentinel_password is not None:
            data["redis_sentinel_password"] = "***"
        if self.aws_endpoint_url:
            data["aws_endpoint_url"] = mask_url(self.aws_endpoint_url)
        return data


# Query parameters of a URL whose values are masked for display.
SECRET_QUERY_KEYS = re.compile(r"(password|passwd|secret|token|credential|key)", re.I)


# Hosts after a URL's credentials: host[:port], comma-separated (a sentinel URL lists several), then the end, a
# path, a query or a fragment.
_HOST = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d+)?"
_HOSTS = re.compile(rf"{_HOST}(,{_HOST})*(?=$|[/?#])")


def mask_url(url: str) -> str:
    """Mask credentials in the netloc and in the query (redis-py also reads ``?password=``)."""
    from urllib.parse import parse_qsl, urlencode, urlunsplit

    scheme, sep, rest = url.partition("://")
    # Credentials end at the last "@" that is followed by hosts: a password may hold "#", "/", "?" or "@" that
    # were not percent-encoded, which would make urlsplit put part of it in the path, query or fragment.
    for at in (m.start() for m in reversed(list(re.finditer("@", rest)))):
        if _HOSTS.match(rest, at + 1):
            rest = "***" + rest[at:]
            break
    parts = urlsplit(f"{scheme}{sep}{rest}")
    if parts.query:
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(SECRET_QUERY_KEYS.search(k) for k, _ in query):
            masked = [(k, "***" if SECRET_QUERY_KEYS.search(k) else v) for k, v in query]
            parts = parts._replace(query=urlencode(masked, safe="*"))
    return urlunsplit(parts)


PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("sentinel", "sentinels")
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisTarget:
    """Where commitd's Redis is. ``url`` for a single server (redis-py parses it); else the sentinels, the name of
    the master they watch, and the master's credentials and database."""

    tls: bool
    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``COMMITD_REDIS_URL``. Errors say what is wrong, never the URL itself (it may hold a password)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in PLAIN_SCHEMES + SENTINEL_SCHEMES:
        raise ValueError("must start with redis://, rediss://, unix://, sentinel:// or sentinels://")
    if scheme in PLAIN_SCHEMES:
        return RedisTarget(tls=scheme == "rediss", url=url)
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError("a sentinel URL takes no query: TLS and timeouts have settings of their own (COMMITD_REDIS_*)")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username, password = unquote(user) or None, (unquote(secret) if colon else None)
    sentinels = tuple(_host_port(h) for h in hostlist.split(","))
    path = [p for p in parts.path.split("/") if p]
    if not 1 <= len(path) <= 2:
        raise ValueError("a sentinel URL names the master after the hosts: sentinel://host:26379/<master name>[/<db>]")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError("the database after the master's name must be a number")
    return RedisTarget(tls=scheme == "sentinels", sentinels=sentinels, master_name=unquote(path[0]),
                       db=int(path[1]) if len(path) == 2 else 0, username=username, password=password)


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.partition(":")
    if not host or (port and not port.isdigit()) or not 0 < int(port or SENTINEL_PORT) < 65536:
        raise ValueError("each sentinel is host[:port], comma-separated (an empty host or a bad port here)")
    return host, int(port or SENTINEL_PORT)


def load_settings(**overrides: Any) -> Settings:
    config_file = os.environ.get("COMMITD_CONFIG_FILE")
    if config_file and not Path(config_file).is_file():
        raise ConfigurationError(f"COMMITD_CONFIG_FILE: no such file {config_file}")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            (f"{'COMMITD_' + '_'.join(str(p) for p in err['loc']).upper()}: " if err["loc"] else "") + err["msg"]
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
