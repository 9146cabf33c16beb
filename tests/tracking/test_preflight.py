"""The preflight probe of the MLflow tracking server: a dead one is an error within seconds, any
HTTP answer is a live one."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from hpo.errors import TrackingError
from hpo.tracking.preflight import probe_tracking


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_fails_fast_on_a_dead_server():
    # Rule: nothing listening at the tracking URI is a TrackingError within seconds, naming the
    # URI.
    uri = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=f"MLflow tracking server {uri} is unreachable"):
        probe_tracking(uri)
    assert time.monotonic() - t0 < 5


def test_probe_accepts_any_http_answer():
    # Rule: a server that answers, even 401 (basic auth), is reachable; the client check judges the
    # rest.
    class Deny(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Deny)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe_tracking(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
