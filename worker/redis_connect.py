"""Every Redis client of commitd's, built from the settings in one place: redis-py's for the ledger, intake, audit
and send records, and the equivalent configuration of Celery's broker (kombu).

``COMMITD_REDIS_URL`` is one of:

- ``redis://`` / ``unix://``: one server;
- ``rediss://``: one server over TLS; the server's certificate is verified against ``COMMITD_REDIS_TLS_CA_FILE``
  (or the system's CAs), with an optional client certificate (``COMMITD_REDIS_TLS_CERT_FILE`` / ``_KEY_FILE``);
- ``sentinel://[user:password@]host1:26379,host2:26379/<master name>[/<db>]``: the master the sentinels name,
  asked again after every broken connection (so a failover is followed); ``sentinels://`` speaks TLS to the
  sentinels and the data nodes alike. The URL's credentials are the data nodes'; the sentinels' own, if they
  have any, are ``COMMITD_REDIS_SENTINEL_USERNAME`` / ``COMMITD_REDIS_SENTINEL_PASSWORD``.

Every connection has the timeouts, health checks and keepalive of ``Settings.redis_options``, and no client
retries a command on a new connection by itself: a ``WAIT`` retried on a fresh connection would count none of
the writes it is asked about (a failover surfaces as a ``ConnectionError``; the executor decides again).

Redis Cluster is not supported: Celery's Redis transport cannot use it as a broker.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

from config.settings import RedisTarget, Settings


def redis_client(settings: Settings, *, single_connection: bool = False) -> redis.Redis:
    """A redis-py client on commitd's Redis. ``single_connection``: every command over one connection, which is
    what ``WAIT`` needs (it counts the writes of the connection that asks)."""
    target = settings.redis_target()
    options: dict[str, Any] = {**settings.redis_options(), **_tls_options(settings, target)}
    if target.url is not None:
        return redis.Redis.from_url(target.url, single_connection_client=single_connection, **options)
    assert target.master_name is not None
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(settings, target))
    # What master_for() builds, except that it cannot make a single-connection client. The pool asks the
    # sentinels for the master's address whenever a connection (re)connects.
    pool = SentinelConnectionPool(target.master_name, sentinel, is_master=True, check_connection=False,
                                  ssl=target.tls, db=target.db, username=target.username, password=target.password,
                                  **options)
    return redis.Redis(connection_pool=pool, single_connection_client=single_connection)


@dataclass(frozen=True)
class BrokerConfig:
    """Celery's ``broker_url``, the connection part of ``broker_transport_options``, and ``broker_use_ssl``."""

    url: str = field(repr=False)
    transport_options: dict[str, Any] = field(repr=False)
    use_ssl: dict[str, Any] | None = None


def broker_config(settings: Settings) -> BrokerConfig:
    """The kombu configuration equivalent to ``redis_client``: the same server (or sentinels and master), TLS
    and credentials."""
    target = settings.redis_target()
    use_ssl = _tls_options(settings, target) or None
    if target.url is not None:
        return BrokerConfig(target.url, {}, use_ssl)
    userinfo = ""
    if target.username or target.password:
        userinfo = f"{quote(target.username or '', safe='')}:{quote(target.password or '', safe='')}@"
    # kombu's sentinel transport: one URL per sentinel, joined by ';'. Each carries the master's credentials and
    # database, because kombu reads them from whichever URL it is on (it moves to the next on a failed connect).
    url = ";".join(f"sentinel://{userinfo}{_bracket(host)}:{port}/{target.db}" for host, port in target.sentinels)
    options: dict[str, Any] = {"master_name": target.master_name,
                               "sentinel_kwargs": _sentinel_kwargs(settings, target)}
    return BrokerConfig(url, options, use_ssl)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _tls_options(settings: Settings, target: RedisTarget) -> dict[str, Any]:
    """redis-py's TLS arguments (kombu passes the same names through to redis-py). A server certificate is always
    verified: without these, kombu would accept any certificate on a rediss:// URL."""
    if not target.tls:
        return {}
    options: dict[str, Any] = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_check_hostname": settings.redis_tls_check_hostname,
    }
    if settings.redis_tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings.redis_tls_cert_file is not None and settings.redis_tls_key_file is not None:
        options["ssl_certfile"] = str(settings.redis_tls_cert_file)
        options["ssl_keyfile"] = str(settings.redis_tls_key_file)
    return options


def _sentinel_kwargs(settings: Settings, target: RedisTarget) -> dict[str, Any]:
    """How to reach the sentinels themselves: the same timeouts and TLS, and their own credentials."""
    kwargs: dict[str, Any] = {**settings.redis_options()}
    if target.tls:
        kwargs.update(_tls_options(settings, target))
        kwargs["ssl"] = True
    if settings.redis_sentinel_username:
        kwargs["username"] = settings.redis_sentinel_username
    if settings.redis_sentinel_password is not None:
        kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    return kwargs
