"""Run the sandbox: in a thread of the current process (tests, the demo) or as the main program.

The HTTP server is a small HTTP/1.1 server on the standard library's ``http.server``: it keeps connections
alive (werkzeug's development server closes every connection), and it owns the socket, so the fault injector
can drop a connection without a response.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sandbox.app import DropConnection, SandboxApp
from sandbox.catalogue import Catalogue


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "commitd-sandbox"
    sys_version = ""
    # Headers and body go out in two writes; without TCP_NODELAY, delayed ACKs add ~40 ms to each call.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        app: SandboxApp = self.server.app  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "SERVER_NAME": str(self.server.server_address[0]),  # type: ignore[index]
            "SERVER_PORT": str(self.server.server_address[1]),  # type: ignore[index]
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.url_scheme": "http",
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "werkzeug.socket": self.connection,
        }
        for key, value in self.headers.items():
            name = "HTTP_" + key.upper().replace("-", "_")
            if name not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                environ[name] = value
        status_line: list[str] = []
        response_headers: list[tuple[str, str]] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            status_line.append(status)
            response_headers.extend(headers)

        try:
            payload = b"".join(app(environ, start_response))
        except DropConnection:
            self.close_connection = True
            return
        code, _, reason = status_line[0].partition(" ")
        self.send_response(int(code), reason)
        for key, value in response_headers:
            if key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: SandboxApp) -> None:
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that go away (and the drops the sandbox makes on purpose) are not errors worth printing.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def build_app(
    catalogue_path: str | Path | None = None,
    iam_policy_path: str | Path | None = None,
    seed: int | None = None,
    external_id: str | None = None,
) -> SandboxApp:
    policy = None
    if iam_policy_path is not None:
        try:
            policy = json.loads(Path(iam_policy_path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read IAM policy {iam_policy_path}: {exc}") from exc
    return SandboxApp(Catalogue.load(catalogue_path), seed=seed, iam_policy=policy, external_id=external_id)


class SandboxServer:
    """A sandbox listening on host:port (port 0 picks a free one), served from a background thread."""

    def __init__(self, app: SandboxApp | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app or SandboxApp()
        self._server = _Server((host, port), self.app)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="commitd-sandbox", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
