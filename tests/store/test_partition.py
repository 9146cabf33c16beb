"""A worker on its own network "host" (a network namespace) cut off from its stores, then healed.

    python -m pytest tests/store/test_partition.py -m e2e -q -p no:cacheprovider   (as root)

The worker in the namespace reaches PostgreSQL and the MLflow server through a veth pair and
TCP relays in the root namespace; the cut takes the veth link down, for longer than the
heartbeat grace: its packets are lost, so calls in flight hang (no reset) and new connections
find no route, as over a dead network.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests._postgres import PG_PORT
from tests._servers import TcpProxy
from tests._servers import mlflow_server
from tests._workers import TINY
from tests._workers import clean_env
from tests._workers import finish
from tests._workers import start_hpo
from tests._workers import trials_of
from tests._workers import wait_for
from tests._workers import write_study_files

# Long fault runs (minutes): in `make test-e2e`, which CI runs after `make test`.
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.e2e]

# Long enough that the cut lands before the cut worker's trial ends training (it then stalls at
# its next call to a store); short enough that the peer's trials take seconds.
EPOCHS = 12


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


class Host:
    """A network namespace joined to this one by a veth pair with private /30 addresses.

    Names and addresses carry `tag` (the test's pid) so that concurrent runs do not clash.
    `cut()` takes the link down on this side: the namespace keeps its address and route, and
    what it sends is lost, as over a dead network.
    """

    def __init__(self, tag: int) -> None:
        self.ns = f"hpo-part-{tag}"
        self.link, peer = f"hpo{tag}h", f"hpo{tag}n"
        third, fourth = divmod(tag % 16384, 64)  # one of the /30s of 10.213.0.0/16
        self.ip, inner = (f"10.213.{third}.{fourth * 4 + k}" for k in (1, 2))
        if shutil.which("ip") is None:
            pytest.skip("no `ip` command (iproute2) to make network namespaces")
        if os.geteuid() != 0:
            pytest.skip("network namespaces need root (ip netns add); CI runs as root")
        made = _ip("netns", "add", self.ns)
        if made.returncode != 0:
            pytest.skip(f"ip netns add is not permitted here: {made.stderr.strip()}")
        try:
            for args in (
                ("link", "add", self.link, "type", "veth", "peer", "name", peer, "netns", self.ns),
                ("addr", "add", f"{self.ip}/30", "dev", self.link),
                ("link", "set", self.link, "up"),
                ("-n", self.ns, "addr", "add", f"{inner}/30", "dev", peer),
                ("-n", self.ns, "link", "set", peer, "up"),
                ("-n", self.ns, "link", "set", "lo", "up"),
            ):
                done = _ip(*args)
                assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"
        except BaseException:
            self.remove()
            raise

    def cut(self) -> None:
        assert _ip("link", "set", self.link, "down").returncode == 0

    def heal(self) -> None:
        assert _ip("link", "set", self.link, "up").returncode == 0

    def remove(self) -> None:
        _ip("netns", "del", self.ns)  # takes the veth pair with it
        _ip("link", "del", self.link)

    def python(self, *args: str, env: dict[str, str] | None = None,
               **popen: Any) -> subprocess.Popen:
        """`python ARGS` inside the namespace (`ip netns exec` execs it: same pid)."""
        argv = ["ip", "netns", "exec", self.ns, sys.executable, *args]
        return subprocess.Popen(argv, env={**clean_env(), **(env or {})}, **popen)

    def start_hpo(self, cwd: Path, *args: str, log: str,
                  env: dict[str, str] | None = None) -> subprocess.Popen:
        """`hpo ARGS` inside the namespace, output in cwd/log; `env` adds variables."""
        out = open(cwd / log, "w")  # noqa: SIM115  closed with the process
        return self.python("-m", "hpo", *args, cwd=cwd, env=env, stdout=out,
                           stderr=subprocess.STDOUT)


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host(os.getpid())
    try:
        yield h
    finally:
        h.remove()


def _rerun_of(storage, study: str, number: int, pid: int):
    """The copy of trial `number` once worker `pid` runs it (its MLflow run started), else None."""
    for t in trials_of(storage, study):
        if (
            t.system_attrs.get("failed_trial") == number
            and str(t.user_attrs.get("worker", "")).endswith(f":{pid}")
            and "mlflow_run_id" in t.user_attrs
        ):
            return t
    return None


@pytest.mark.parametrize("fuse", [1, 2], ids=["alone", "fused"])
def test_a_partitioned_worker_writes_nothing_into_its_lost_trial(tmp_path, pg_url, host, fuse):
    # Rule: a worker cut off from PostgreSQL and MLflow for longer than the grace loses its trial
    # to a peer, which fails it (run KILLED, reason no heartbeat) and reruns its parameters. Once
    # the link heals, the cut worker's late writes land nowhere: the failed trial keeps its state,
    # reports and attributes, its run stays KILLED; the worker goes on and exits 0 without a
    # traceback; exactly n_trials trials end COMPLETE. The same for a worker training its trials
    # as one fused program (study.fuse 2, the device path on JAX): it holds both trials, whose
    # heartbeats beat from a thread of their own, and loses both.
    from mlflow import MlflowClient

    from hpo.launch.launcher import launch

    study = "partition" if fuse == 1 else "partition-fused"
    train = {**TINY["train"], "epochs": EPOCHS}
    fused = {}
    if fuse > 1:
        # Two points of one network shape (a dropout rate of 0 and one above it are two
        # programs), and, as an epoch of TINY on JAX takes a third of a second, enough epochs
        # that the cut lands mid-program.
        train = {**train, "loop": "device", "epochs": 100}
        fused = {"sampler": {"type": "grid"},
                 "params": {"train.optimizer.learning_rate": {"categorical": [3e-3, 1e-3]}}}
    write_study_files(tmp_path, study, n_trials=2, heartbeat_s=1, grace_s=4,
                      base={**TINY, "train": train}, fuse=fuse, **fused)
    env = {"KERAS_BACKEND": "jax"} if fuse > 1 else None
    db = optuna.storages.RDBStorage(pg_url)  # one pool for all the polling below
    with mlflow_server(tmp_path / "mlflow") as tracking, contextlib.ExitStack() as stack:
        stack.callback(db.engine.dispose)
        with contextlib.chdir(tmp_path):
            launch("space.yaml", workers=0, storage_url=pg_url, tracking_uri=tracking,
                   echo=lambda line: None)
        db_relay = TcpProxy(PG_PORT, host=host.ip)
        stack.callback(db_relay.down)
        mlflow_relay = TcpProxy(int(tracking.rsplit(":", 1)[1]), host=host.ip)
        stack.callback(mlflow_relay.down)
        far_db = pg_url.replace(f"@127.0.0.1:{PG_PORT}/", f"@{host.ip}:{db_relay.port}/")
        a = host.start_hpo(tmp_path, "worker", "--study", study, "--storage", far_db,
                           "--tracking-uri", mlflow_relay.url, log="a.log", env=env)
        stack.callback(_kill, a)

        def start_b() -> subprocess.Popen:
            b = start_hpo(tmp_path, "worker", "--study", study, "--storage", pg_url,
                          "--tracking-uri", tracking, log="b.log", env=env)
            stack.callback(_kill, b)
            return b

        if fuse == 1:
            b = start_b()
            lost = wait_for(lambda: _running_of(db, study, a.pid) or None, 180,
                            "a running trial of worker A (to be cut off)")
        else:  # A asks the whole budget at once: cut it mid-program, then B takes over
            lost = wait_for(lambda: r if len(r := _running_of(db, study, a.pid, epochs=1)) == fuse
                            else None, 240, f"worker A training {fuse} trials as one program")
        host.cut()
        cut_at = time.monotonic()
        if fuse > 1:
            b = start_b()
        for trial in lost:
            wait_for(lambda t=trial: _rerun_of(db, study, t.number, b.pid), 120,
                     f"worker B to fail A's trial {trial.number} and rerun it", poll=0.5)
        failed = {t.number: t for t in trials_of(db, study) if t.number in {x.number for x in lost}}
        host.heal()
        cut_s = time.monotonic() - cut_at
        assert finish(b, 240, tmp_path / "b.log") == 0
        assert finish(a, 120, tmp_path / "a.log") == 0
        a_log = (tmp_path / "a.log").read_text()
        print(f"cut for {cut_s:.1f} s; worker A's log:\n{a_log}")

        trials = trials_of(db, study)
        states = sorted(t.state.name for t in trials)
        assert states == ["COMPLETE"] * 2 + ["FAIL"] * len(lost), states
        client = MlflowClient(tracking)
        for number, before in failed.items():
            after = next(t for t in trials if t.number == number)
            assert before.state == after.state == TrialState.FAIL
            assert after.value is None
            assert after.intermediate_values == before.intermediate_values
            assert after.user_attrs == before.user_attrs
            rerun = next(t for t in trials if t.system_attrs.get("failed_trial") == number)
            assert rerun.state == TrialState.COMPLETE and rerun.params == after.params

            run = client.get_run(after.user_attrs["mlflow_run_id"])
            assert run.info.status == "KILLED", (run.info.status, run.data.tags)
            assert "no heartbeat" in run.data.tags.get("hpo.fail_reason", ""), (number, run.data.tags)
            assert "epochs_run" not in run.data.metrics
            # Training stopped at the first epoch end after the heal (its report refused).
            epochs = client.get_metric_history(run.info.run_id, "val_residual_std")
            assert len(epochs) <= len(before.intermediate_values) + 1, epochs
            runs = client.search_runs([run.info.experiment_id], f"tags.`hpo.trial` = '{number}'")
            assert len(runs) == 1
        assert "Traceback" not in a_log and "failed by another worker" in a_log


def _running_of(storage, study: str, pid: int, epochs: int = 0) -> list:
    """The RUNNING trials of worker `pid` that have started their MLflow run (and reported
    `epochs` epochs or more)."""
    return [t for t in trials_of(storage, study) if t.state == TrialState.RUNNING
            and str(t.user_attrs.get("worker", "")).endswith(f":{pid}")
            and "mlflow_run_id" in t.user_attrs and len(t.intermediate_values) >= epochs]


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


# Opens the storage as a worker does (without retries), then, once told, makes one call; prints
# whether its error is one the worker retries and then stops on.
STORAGE_CALL = """
import sys, time
from hpo.store.retry import is_transient
from hpo.store.storage import make_storage
storage = make_storage(sys.argv[1], retry_window_s=0)
storage.get_all_studies()
print("ready", flush=True)
sys.stdin.readline()
start = time.monotonic()
try:
    storage.get_all_studies()
except Exception as exc:
    print(f"transient={is_transient(exc)} after {time.monotonic() - start:.0f} s", flush=True)
"""


def test_a_storage_call_over_a_dead_link_fails_within_minutes(pg_url, host):
    # Rule: a storage call sent over a link that then goes dead (its packets lost, no reset) fails
    # within about a minute, so that the worker's retries and exit apply, rather than hanging for
    # the kernel's quarter of an hour of TCP retransmissions.
    relay = TcpProxy(PG_PORT, host=host.ip)
    probe = host.python(
        "-c", STORAGE_CALL, pg_url.replace(f"@127.0.0.1:{PG_PORT}/", f"@{host.ip}:{relay.port}/"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert probe.stdout.readline().strip() == "ready"
        host.cut()
        probe.stdin.write("go\n")
        probe.stdin.flush()
        out, _ = probe.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        raise AssertionError("the storage call still hangs 120 s after the link went dead") from None
    finally:
        _kill(probe)
        relay.down()
    failed = re.fullmatch(r"transient=True after (\d+) s", out.strip())
    assert failed and int(failed[1]) < 100, out
