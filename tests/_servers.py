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


class MlflowServer:
    """`mlflow server` on a free loopback port with a store (default SQLite) and artifacts under
    `root`; `stop()` ends the process, `start()` starts it again on the same port and store."""

    def __init__(self, root: Path, *, app_name: str | None = None,
                 env: dict[str, str] | None = None, backend_store_uri: str | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.port = root, free_port()
        self.store = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
        self.argv = [str(BIN / "mlflow"), "server", "--backend-store-uri", self.store,
                     "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                     "--port", str(self.port), "--workers", "1"]
        if app_name:
            self.argv += ["--app-name", app_name]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.env = {**clean, **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        """Starts the server and returns once it answers."""
        log = self.root / "server.log"
        self.proc = start_process(self.argv, log, env=self.env, cwd=self.root)
        wait_http(self.url + "/health", self.proc, log=log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@contextmanager
def mlflow_server(root: Path, *, app_name: str | None = None, env: dict[str, str] | None = None,
                  backend_store_uri: str | None = None) -> Iterator[str]:
    """`mlflow server` on a free loopback port with a store (default SQLite) and artifacts under
    `root`; yields its URL."""
    server = MlflowServer(root, app_name=app_name, env=env, backend_store_uri=backend_store_uri)
    try:
        yield server.start().url
    finally:
        server.stop()


class TcpProxy:
    """Forwards a free port on `host` (default loopback) to `target_port` on loopback; `down()`
    makes it refuse connections; `hold_response_to` keeps one answer back, so that a test acts
    between the server doing a thing and the client learning it.

    While down, nothing listens on the port (clients get "connection refused") and every
    forwarded connection is cut, which is what a client sees of a server that went away.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target_port, self.host, self.port = target_port, host, free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._marker: bytes | None = None
        self.held, self._release = threading.Event(), threading.Event()
        self.up()

    def hold_response_to(self, marker: bytes) -> None:
        """The next request holding `marker` (e.g. b"/runs/create") reaches the server, but its
        answer is kept from the client until `release()`; `held` is set once the answer arrived,
        that is once the server has done what was asked."""
        self.held.clear()
        self._release.clear()
        self._marker = marker

    def release(self) -> None:
        """Lets a held answer through."""
        self._release.set()

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
        self._release.set()  # a held answer goes nowhere now: its connection is cut

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
            hold = threading.Event()  # set: this connection's next answer is held
            for a, b, request in ((client, upstream, True), (upstream, client, False)):
                pump = threading.Thread(target=self._pump, args=(a, b, hold, request), daemon=True)
                pump.start()

    def _pump(self, src: socket.socket, dst: socket.socket, hold: threading.Event,
              request: bool) -> None:
        try:
            while data := src.recv(65536):
                if request and self._marker is not None and self._marker in data:
                    self._marker = None
                    hold.set()  # before the request goes on, so no answer can slip through
                elif not request and hold.is_set():
                    self.held.set()
                    self._release.wait()
                    hold.clear()
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
