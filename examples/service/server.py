"""A small real HTTP service with one hot function, to run ``perfpilot daemon`` against.

    python examples/service/server.py --port 8080            # serve
    python examples/service/loadgen.py --url http://127.0.0.1:8080/report --requests 500
    perfpilot daemon --watch cmdline:examples/service/server.py --interval 1s

``GET /report?n=N`` calls :func:`render_report`, a deliberately CPU-bound pure-Python
function: it is what the daemon's hot spots should name. ``--leak`` keeps every report
in a list so RSS grows steadily (a memory-growth finding to look at). ``GET /health``
answers at once. The first line on stdout is ``listening on http://HOST:PORT`` (with
``--port 0`` the port the OS picked), so a script can wait for it.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

KEPT: list[bytes] = []


def render_report(n: int) -> int:
    """The hot function: a checksum over a small integer table, done the slow way."""
    total = 0
    for i in range(n):
        row = (i * 2654435761) & 0xFFFFFFFF
        for shift in (3, 7, 11, 13):
            total = (total + (row >> shift) * (i | 1)) % 1_000_000_007
    return total


class Handler(BaseHTTPRequestHandler):
    leak = False

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        if url.path == "/health":
            self._send(200, {"status": "ok"})
            return
        if url.path == "/report":
            try:
                n = min(int(parse_qs(url.query).get("n", ["20000"])[0]), 5_000_000)
            except ValueError:
                self._send(400, {"error": "n must be an integer"})
                return
            checksum = render_report(n)
            if self.leak:
                KEPT.append(b"x" * 64 * 1024)
            self._send(200, {"n": n, "checksum": checksum})
            return
        self._send(404, {"error": "not found"})

    def _send(self, code: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--leak", action="store_true", help="keep 64 KiB per request (RSS grows)")
    args = parser.parse_args(argv)
    Handler.leak = args.leak
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
