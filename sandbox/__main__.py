"""``python -m sandbox`` (also ``commitd sandbox``): run the AWS commitment sandbox in the foreground."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sandbox.server import SandboxServer, build_app


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="commitd sandbox", description="Serve the AWS commitment sandbox over HTTP.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5010, help="0 picks a free port (printed at start)")
    p.add_argument("--catalogue", default=None, help="JSON catalogue file (offerings, existing commitments)")
    p.add_argument("--iam-policy", default=None, help="identity policy JSON; turns IAM enforcement on")
    p.add_argument("--external-id", default=None, help="ExternalId that AssumeRole must present")
    p.add_argument("--external-id-file", default=None, help="read the expected ExternalId from this file")
    p.add_argument("--seed", type=int, default=None, help="random seed for fault injection")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    external_id = args.external_id
    try:
        if args.external_id_file:
            try:
                external_id = Path(args.external_id_file).read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read --external-id-file {args.external_id_file}: {exc.strerror}") from None
        app = build_app(args.catalogue, args.iam_policy, args.seed, external_id)
    except ValueError as exc:
        print(f"commitd sandbox: {exc}", file=sys.stderr)
        return 2
    server = SandboxServer(app, args.host, args.port)
    print(f"commitd sandbox listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
