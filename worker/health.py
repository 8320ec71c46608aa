"""``commitd health``: the container's HEALTHCHECK and Kubernetes' probes, for every role of the one image.

Cheap on purpose (it runs every 30 s in every container): the settings load (a bad value fails here naming it) and
Redis answers a PING within ``--timeout``. It exits 0 and prints ``ok``, or exits 1 naming what failed, never a
secret (the Redis URL's password is not printed). It does not read the account registry's secrets nor reach AWS:
a customer's role being unreachable must not restart the daemon.
"""

from __future__ import annotations

import click

from config.settings import ConfigurationError, load_settings


def problem(timeout: float) -> str | None:
    """Why this process is not healthy, or None."""
    from worker.redis_connect import redis_client

    try:
        settings = load_settings()
    except ConfigurationError as exc:
        return f"settings: {exc}"
    bounded = settings.model_copy(update={"redis_socket_timeout": timeout, "redis_connect_timeout": timeout})
    client = redis_client(bounded)
    try:
        client.ping()
    except Exception as exc:  # any failure to reach Redis is unhealthy, whatever its kind
        return f"redis: no answer to PING ({type(exc).__name__})"
    finally:
        client.close()
    return None


@click.command()
@click.option("--timeout", default=3.0, show_default=True, type=click.FloatRange(min=0.1),
              help="seconds Redis has to answer")
def health(timeout: float) -> None:
    """Exit 0 when the settings load and Redis answers; exit 1 naming the problem (container health checks)."""
    found = problem(timeout)
    if found is not None:
        click.echo(f"unhealthy: {found}", err=True)
        raise SystemExit(1)
    click.echo("ok")
