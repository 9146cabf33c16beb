"""Real servers for tests, on free loopback ports, always stopped: mlflow server and a TCP proxy."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent
SERVER_START_S = 240  # a loaded 2-core machine can take a minute to start MLflow's server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout_s: float = SERVER_START_S,
              log: Path | None = None) -> None:
    """Returns once GET `url` answers (any HTTP status); RuntimeError if `proc` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s:\n{_tail(log)}")


def stop(proc: subprocess.Popen) -> None:
    """Ends a server started by `start_process` and everything it spawned (its process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def start_process(argv: list[str], log: Path, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> subprocess.Popen:
    """A server process in its own process group (so `stop` ends its workers), logging to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)


@contextmanager
def mlflow_server(root: Path, *, app_name: str | None = None, env: dict[str, str] | None = None,
                  backend_store_uri: str | None = None) -> Iterator[str]:
    """`mlflow server` on a free loopback port with a store (default SQLite) and artifacts under
    `root`; yields its URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    store = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
    argv = [str(BIN / "mlflow"), "server", "--backend-store-uri", store,
            "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]
    if app_name:
        argv += ["--app-name", app_name]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = root / "server.log"
    proc = start_process(argv, log, env={**clean, **(env or {})}, cwd=root)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", proc, log=log)
        yield url
    finally:
        stop(proc)


class TcpProxy:
    """Forwards a free port on `host` (default loopback) to `target_port` on loopback; `down()`
    makes it refuse connections.

    While down, nothing listens on the port (clients get "connection refused") and every
    forwarded connection is cut, which is what a client sees of a server that went away.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target_port, self.host, self.port = target_port, host, free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            _close(conn)

    def down_for(self, seconds: float) -> None:
        """Down now, up again after `seconds` (in the background)."""
        self.down()
        threading.Timer(seconds, self.up).start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _close(s)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def _tail(log: Path | None, n: int = 3000) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-n:]
