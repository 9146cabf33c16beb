"""Ctrl-C reaches `hpo` however it was started: SIGINT inherited as ignored is reset."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from tests._workers import clean_env
from tests._workers import wait_for


def test_sigint_stops_hpo_started_with_sigint_ignored(tmp_path):
    # Rule: `hpo` started as a script's background job (`hpo ... &`, which leaves SIGINT ignored)
    # still stops on SIGINT: exit 130 (typer's code for an interrupt), no traceback.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "proxy.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpo", "storage-proxy", "--storage",
             f"sqlite:///{tmp_path / 'o.db'}", "--port", str(port)],
            cwd=tmp_path, env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        try:
            wait_for(lambda: "storage proxy for" in log.read_text(), 60, "the proxy to start")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "Traceback" not in log.read_text()
