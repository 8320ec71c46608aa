"""Every Redis connection has timeouts: a peer that accepts and then never answers (a half-open connection) fails
a command within the socket timeout instead of hanging it, e.g. a lease's heartbeat while the lease expires."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from config.settings import Settings
from worker.lease import Lease
from worker.runtime import Runtime


@pytest.fixture
def silent_peer() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_silent_redis_fails_commands_within_the_socket_timeout(silent_peer: str, env: dict[str, str]) -> None:
    settings = Settings(redis_url=silent_peer, redis_socket_timeout=0.5, redis_health_check_interval=0)
    runtime = Runtime(settings)
    calls = {
        "redis": lambda: runtime.redis.ping(),
        # The single connection is opened (and answered) when it is created.
        "send_record_redis": lambda: runtime.send_record_redis.ping(),
        "lease": lambda: Lease(runtime.redis, "k", "owner", 4.0).acquire(),
    }
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = {name: pool.submit(call) for name, call in calls.items()}
        for name, future in futures.items():
            # Without a socket timeout the call hangs for good: this wait fails the test instead.
            with pytest.raises(redis.TimeoutError):
                future.result(timeout=10)
            assert future.done(), name


def test_celery_broker_connections_have_the_same_timeouts(env: dict[str, str]) -> None:
    from worker.celery_app import app, configure

    settings = Settings(redis_socket_timeout=3.0, redis_connect_timeout=1.5, redis_health_check_interval=7)
    configure(app, settings)
    options = app.conf.broker_transport_options
    assert (options["socket_timeout"], options["socket_connect_timeout"], options["health_check_interval"],
            options["socket_keepalive"]) == (3.0, 1.5, 7, True)
