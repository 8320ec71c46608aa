"""TLS and ACL auth for every client of commitd's: a ``redis-server`` that only speaks TLS (``--port 0
--tls-port``), requires a client certificate and an ACL user (the default user is off), with a throwaway CA and
certificates made here. The ledger, send records, Celery's broker and a real worker's purchase go over it; a wrong
CA, a wrong host name, a missing client certificate or a wrong password fail, naming no password; and the same
over ``sentinels://`` (a TLS sentinel naming a TLS master)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from config.settings import Settings
from sandbox.control import SandboxControl
from tasks import ACTIONS
from tests.spine.conftest import ACCOUNT, ROOT, free_port, ri_plan, wait_for_state
from tests.spine.test_redis_sentinel import poll
from worker.runtime import Runtime, set_runtime

USER = "commitd"
PASSWORD = "tls-acl-pw-71d2e4"  # never in a log or an error message
SENTINEL_PASSWORD = "tls-sentinel-pw-0b9c"
MASTER = "commitd-tls"


# --- a throwaway CA ------------------------------------------------------------------------------------------
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          names: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = issuer or (name, key)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if issuer is None:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


@dataclass
class Certificates:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def other_ca(self) -> Path:
        return self.dir / "other-ca.crt"

    @property
    def server(self) -> tuple[Path, Path]:
        return self.dir / "server.crt", self.dir / "server.key"

    @property
    def client(self) -> tuple[Path, Path]:
        return self.dir / "client.crt", self.dir / "client.key"


@pytest.fixture(scope="module")
def certs() -> Iterator[Certificates]:
    """A CA; a server certificate for localhost and 127.0.0.1 (not 127.0.0.2); a client certificate; and an
    unrelated CA."""
    where = Certificates(Path(tempfile.mkdtemp(prefix="commitd-tls-")))
    ca_key = _key()
    ca = _cert("commitd test CA", ca_key, None)
    _write(where.dir / "ca", ca, ca_key)
    other_key = _key()
    _write(where.dir / "other-ca", _cert("someone else's CA", other_key, None), other_key)
    for name, names in (("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                        ("client", None)):
        key = _key()
        _write(where.dir / name, _cert(f"commitd test {name}", key, (ca.subject, ca_key), names), key)
    yield where
    shutil.rmtree(where.dir, ignore_errors=True)


# --- servers -------------------------------------------------------------------------------------------------
class TlsNode:
    """A redis-server (or sentinel) that listens on TLS only and requires a client certificate."""

    def __init__(self, certs: Certificates, name: str, extra: Callable[[int, Path], str], sentinel: bool = False,
                 password: str = PASSWORD, user: str | None = USER) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"commitd-tls-{name}-"))
        cert, key = certs.server
        conf = self.dir / "redis.conf"
        conf.write_text(
            f"port 0\ntls-port {self.port}\nbind 127.0.0.1 127.0.0.2\ndir {self.dir}\nlogfile {self.dir / 'log'}\n"
            f"tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {certs.ca}\ntls-auth-clients yes\n"
            + extra(self.port, self.dir)
        )
        self.password, self.user = password, user
        self.certs = certs
        self.process = subprocess.Popen(["redis-server", str(conf), *(["--sentinel"] if sentinel else [])],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        poll(lambda: self.client().ping(), f"the TLS {name} to answer", timeout=20)

    def client(self) -> redis.Redis:
        cert, key = self.certs.client
        return redis.Redis(host="localhost", port=self.port, username=self.user, password=self.password, ssl=True,
                           ssl_ca_certs=str(self.certs.ca), ssl_certfile=str(cert), ssl_keyfile=str(key),
                           socket_timeout=2, socket_connect_timeout=2)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def data_conf(port: int, where: Path) -> str:
    # Every write fsynced (auto durability: fsync_always); an ACL user, and no default user.
    return (f'save ""\nappendonly yes\nappendfsync always\nuser {USER} on >{PASSWORD} ~* &* +@all\n'
            "user default off\n")


@pytest.fixture(scope="module")
def tls_server(certs: Certificates) -> Iterator[TlsNode]:
    node = TlsNode(certs, "data", data_conf)
    yield node
    node.stop()


def tls_env(server: TlsNode, host: str = "localhost") -> dict[str, str]:
    cert, key = server.certs.client
    return {"COMMITD_REDIS_URL": f"rediss://{USER}:{PASSWORD}@{host}:{server.port}/0",
            "COMMITD_REDIS_TLS_CA_FILE": str(server.certs.ca),
            "COMMITD_REDIS_TLS_CERT_FILE": str(cert), "COMMITD_REDIS_TLS_KEY_FILE": str(key)}


def tls_settings(server: TlsNode, **overrides: Any) -> Settings:
    values: dict[str, Any] = {k.removeprefix("COMMITD_").lower(): v for k, v in tls_env(server).items()}
    return Settings(**{**values, **overrides})


def assert_no_password(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in (PASSWORD, SENTINEL_PASSWORD):
        assert secret.encode() not in data, f"a password in {where}"


# --- tests ---------------------------------------------------------------------------------------------------
def test_ledger_send_records_and_broker_over_tls_as_an_acl_user(tls_server: TlsNode, env: dict[str, str]) -> None:
    from worker.celery_app import create_app
    from worker.durability import SendRecordDurability

    tls_server.client().flushall()
    settings = tls_settings(tls_server)
    runtime = Runtime(settings)
    assert runtime.redis.acl_whoami() == USER
    assert runtime.redis.connection_pool.connection_class is redis.SSLConnection
    send = runtime.send_record_redis
    assert isinstance(getattr(send, "connection", None), redis.SSLConnection), "one TLS connection"
    send.set(runtime.key("probe"), "1")
    assert SendRecordDurability(send, "auto").wait() == "fsync_always"

    celery = create_app(settings)
    with celery.connection_for_write() as conn:
        assert_no_password(conn.as_uri(), "the broker URL Celery prints")
        queue = conn.SimpleQueue("commitd-tls-probe")
        queue.put({"probe": 1})
        assert queue.get(timeout=10).payload == {"probe": 1}
        queue.close()


def test_what_does_not_verify_fails_and_names_no_password(tls_server: TlsNode, env: dict[str, str]) -> None:
    from worker.celery_app import create_app

    cases = {  # what each breaks → what the error says
        "someone else's CA": (tls_settings(tls_server, redis_tls_ca_file=str(tls_server.certs.other_ca)),
                              "certificate verify failed: self-signed certificate in certificate chain"),
        "a host the certificate does not name": (tls_settings(
            tls_server, redis_url=f"rediss://{USER}:{PASSWORD}@127.0.0.2:{tls_server.port}/0"),
            "IP address mismatch"),
        # The server drops the handshake: the error depends on when the client notices.
        "no client certificate": (tls_settings(tls_server, redis_tls_cert_file=None, redis_tls_key_file=None), ""),
        "a wrong password": (tls_settings(tls_server, redis_url=f"rediss://{USER}:not-it@localhost:{tls_server.port}/0"),
                             "invalid username-password pair"),
        "plain text to the TLS port": (Settings(redis_url=f"redis://{USER}:{PASSWORD}@localhost:{tls_server.port}/0",
                                                redis_socket_timeout=1), ""),
    }
    for what, (settings, says) in cases.items():
        with pytest.raises(redis.RedisError) as failed:
            Runtime(settings).redis.ping()
        assert says in str(failed.value), (what, failed.value)
        assert_no_password(f"{failed.value!s} {failed.value!r}", f"the error for {what}")
    # The host check is a setting (on by default): the same host name passes with it off.
    assert Runtime(tls_settings(tls_server, redis_tls_check_hostname=False, redis_url=(
        f"rediss://{USER}:{PASSWORD}@127.0.0.2:{tls_server.port}/0"))).redis.ping()
    # Celery's broker verifies the certificate too (kombu alone would accept any on a rediss:// URL).
    celery = create_app(cases["someone else's CA"][0])
    with celery.connection_for_write() as conn, pytest.raises(Exception) as broker_failed:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
    assert "certificate verify failed" in str(broker_failed.value)
    assert_no_password(str(broker_failed.value), "the broker's error")


@pytest.fixture
def tls_runtime(runtime: Runtime, tls_server: TlsNode) -> Iterator[Runtime]:
    """This process's runtime and Celery app over TLS (the ``runtime`` fixture's private Redis is not used)."""
    from worker.celery_app import app, configure

    tls_server.client().flushall()
    settings = tls_settings(tls_server)
    configure(app, settings)
    ours = Runtime(settings)
    set_runtime(ours)
    yield ours
    configure(app, runtime.settings)
    set_runtime(runtime)


def test_a_worker_buys_over_tls(tls_server: TlsNode, tls_runtime: Runtime, sandbox: SandboxControl,
                                start_worker: Any) -> None:
    from worker.celery_app import enqueue
    from worker.intake import Intake

    worker = start_worker("tls", **tls_env(tls_server))
    result = Intake(tls_runtime, ACTIONS, enqueue).submit_raw(json.dumps(ri_plan("tls-1")), "test")
    assert result.outcome == "accepted", result
    record = wait_for_state(tls_runtime, "tls-1", {"succeeded", "failed", "needs_attention"})
    assert record.state.value == "succeeded", record.error
    [ri] = sandbox.resources(account_id=ACCOUNT, type="reserved-instances")
    assert record.result["resource_ids"] == [ri["id"]]
    log = worker.log.read_bytes()
    assert b"rediss://" in log and b'"durability": "fsync_always"' in log, "the worker used the TLS server"
    assert_no_password(log, "the worker's log")


def commitd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_tls_settings_in_config_show_and_their_errors(certs: Certificates, env: dict[str, str]) -> None:
    cert, key = certs.client
    tls = {"COMMITD_REDIS_URL": f"rediss://{USER}:{PASSWORD}@redis.internal:6380/0",
           "COMMITD_REDIS_TLS_CA_FILE": str(certs.ca), "COMMITD_REDIS_TLS_CERT_FILE": str(cert),
           "COMMITD_REDIS_TLS_KEY_FILE": str(key)}
    shown = commitd({**env, **tls}, "config", "show")
    assert shown.returncode == 0, shown.stderr
    assert_no_password(shown.stdout + shown.stderr, "commitd config show")
    settings = json.loads(shown.stdout)["settings"]
    assert settings["redis_url"] == "rediss://***@redis.internal:6380/0"
    assert settings["redis_tls_ca_file"] == str(certs.ca) and settings["redis_tls_check_hostname"] is True

    for bad, name in [
        ({"COMMITD_REDIS_URL": f"redis://{USER}:{PASSWORD}@redis.internal:6379/0"}, "COMMITD_REDIS_TLS_CA_FILE"),
        ({"COMMITD_REDIS_TLS_CA_FILE": "/nonexistent/ca.crt"}, "COMMITD_REDIS_TLS_CA_FILE"),
        ({"COMMITD_REDIS_TLS_KEY_FILE": ""}, "COMMITD_REDIS_TLS_KEY_FILE"),
    ]:
        result = commitd({**env, **tls, **bad}, "config", "show")
        assert result.returncode != 0 and name in result.stderr, (bad, result.stderr)
        assert "Traceback" not in result.stderr
        assert_no_password(result.stdout + result.stderr, "a configuration error")


def test_sentinels_url_speaks_tls_to_the_sentinels_and_the_master(certs: Certificates, env: dict[str, str]) -> None:
    from worker.celery_app import create_app

    primary = TlsNode(certs, "primary", data_conf)

    def sentinel_conf(port: int, where: Path) -> str:
        return (f"tls-replication yes\nsentinel monitor {MASTER} 127.0.0.1 {primary.port} 1\n"
                f"sentinel auth-user {MASTER} {USER}\nsentinel auth-pass {MASTER} {PASSWORD}\n"
                f"requirepass {SENTINEL_PASSWORD}\n")

    sentinel = TlsNode(certs, "sentinel", sentinel_conf, sentinel=True, password=SENTINEL_PASSWORD, user=None)
    try:
        poll(lambda: sentinel.client().sentinel_get_master_addr_by_name(MASTER), "the sentinel to name the master")
        cert, key = certs.client
        settings = Settings(redis_url=f"sentinels://{USER}:{PASSWORD}@localhost:{sentinel.port}/{MASTER}/0",
                            redis_tls_ca_file=certs.ca, redis_tls_cert_file=cert, redis_tls_key_file=key,
                            redis_sentinel_password=SENTINEL_PASSWORD)
        runtime = Runtime(settings)
        assert runtime.redis.acl_whoami() == USER
        assert runtime.redis.info("server")["tcp_port"] == primary.port  # the master (it listens on TLS only)
        runtime.send_record_redis.set(runtime.key("probe"), "1")
        assert runtime.send_record_redis.get(runtime.key("probe")) == b"1"
        with create_app(settings).connection_for_write() as conn:
            assert conn.transport_cls == "sentinel"
            queue = conn.SimpleQueue("commitd-tls-sentinel-probe")
            queue.put({"probe": 1})
            assert queue.get(timeout=10).payload == {"probe": 1}
            queue.close()
        # Without the sentinels' password, no master is found; the error names neither password.
        with pytest.raises(redis.RedisError) as failed:
            Runtime(settings.model_copy(update={"redis_sentinel_password": None})).redis.ping()
        assert_no_password(str(failed.value), "the error without the sentinels' password")
    finally:
        sentinel.stop()
        primary.stop()
