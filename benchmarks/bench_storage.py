"""Study coordination cost: no-op trials per second on SQLite, PostgreSQL and the gRPC proxy.

    .venv/bin/python benchmarks/bench_storage.py [--workers 1 2 4 8] [--trials 30]

Each worker is a process that does what `hpo worker` does around a trial, with a no-op
objective: fail stale trials, count the budget, ask (heartbeat thread on), claim the trial
(one user attr), suggest one float, tell. Rows: every storage x worker count, each on a fresh
study; `trials/s` is all workers' trials over the wall time from a common start; `x baseline`
divides it by the baseline, SQLite with 1 worker, measured in the same run. `overhead/trial` is
the seconds one worker spends coordinating per trial (workers x wall / trials), and `% of a
real trial` divides it by the time of one real trial: the quickstart search space's base
config (5 epochs on 600 simulated clusters, MLflow logging excluded), trained here unless
`--real-trial-s` gives it. PostgreSQL (a throwaway database on --pg, dropped afterwards) and
the proxy (`hpo storage-proxy` in a subprocess, in front of that database) are skipped, with a
note, when no server answers.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from emit import emit

BASELINE = ("sqlite", 1)
SPACE = {
    "study": {
        "name": "bench",
        "n_trials": 100_000,
        "sampler": {"type": "random", "seed": 0},
        "pruner": {"type": "none"},
    },
    "params": {"model.dropout.rate": {"float": [0.0, 0.5]}},
}


# ---------------------------------------------------------------------------- one worker process
def _worker(url: str, study_name: str, n_trials: int, barrier: Any, out: Any) -> None:
    import optuna

    from hpo.keys import WORKER_KEY
    from hpo.study.budget import progress
    from hpo.study.create import load_study
    from hpo.store.heartbeat import enable_heartbeat
    from hpo.store.heartbeat import reap
    from hpo.store.storage import make_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = make_storage(url)
    study, space = load_study(storage, study_name)
    enable_heartbeat(storage, space)
    me = f"{socket.gethostname()}:{os.getpid()}"

    def noop(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_KEY, me)
        return trial.suggest_float("model.dropout.rate", 0.0, 0.5)

    barrier.wait()
    for _ in range(n_trials):
        reap(study)
        progress(study, space)
        study.optimize(noop, n_trials=1)
    out.put(n_trials)


def run_config(url: str, study_name: str, workers: int, n_trials: int) -> tuple[int, float]:
    """(trials, wall seconds) of `workers` processes running n_trials no-op trials each."""
    from hpo.config.space import parse_space
    from hpo.study.create import create_or_join
    from hpo.store.storage import make_storage

    space = parse_space({**SPACE, "study": {**SPACE["study"], "name": study_name}}, source="bench")
    create_or_join(make_storage(url), space)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(url, study_name, n_trials, barrier, out))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    done = sum(out.get(timeout=900) for _ in procs)
    wall = time.perf_counter() - start
    for p in procs:
        p.join()
    return done, wall


# ---------------------------------------------------------------------------- servers
def create_pg_database(admin: str) -> tuple[str, str] | None:
    """(SQLAlchemy URL, name) of a fresh database, or None when the server does not answer."""
    import psycopg

    name = f"hpo_bench_{os.getpid()}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            user, host, port = conn.info.user, conn.info.host, conn.info.port
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        print(
            f"note: PostgreSQL rows skipped: {str(exc).strip().splitlines()[0]}", file=sys.stderr
        )
        return None
    return f"postgresql+psycopg://{user}@{host}:{port}/{name}", name


def drop_pg_database(admin: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_proxy(pg_url: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "storage-proxy", "--storage", pg_url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"grpc://127.0.0.1:{port}"


# ---------------------------------------------------------------------------- a real trial
def real_trial_seconds(folder: Path) -> float:
    """Seconds of one training run of the quickstart space's base config on 600 mock clusters."""
    from hpo.config.overrides import apply_overrides
    from hpo.data.contract import load_dataset
    from hpo.data.sim.simulator import write_mock
    from hpo.config.space import load_space
    from hpo.trial.recorder import NullRecorder
    from hpo.trial.runner import run_trial

    path = write_mock(folder / "quickstart.h5", 600, 0)
    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml")
    cfg = apply_overrides({"data.path": str(path)}, base=space.resolved_base(), where="bench")
    dataset = load_dataset(path)
    start = time.perf_counter()
    run_trial(cfg, dataset, NullRecorder())
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- report
def main(argv: list[str] | None = None) -> str:
    """Measures every storage x worker count; prints and saves a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2, 4, 8], help="Worker counts."
    )
    parser.add_argument("--trials", type=int, default=30, help="No-op trials per worker.")
    parser.add_argument(
        "--pg",
        default="host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        help="libpq conninfo of a PostgreSQL maintenance database (CREATE DATABASE rights).",
    )
    parser.add_argument(
        "--real-trial-s",
        type=float,
        default=None,
        help="Seconds of one real trial; default: train the quickstart config once.",
    )
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    rows: list[tuple[str, int, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        real_s = args.real_trial_s if args.real_trial_s is not None else real_trial_seconds(folder)
        storages: list[tuple[str, str]] = [("sqlite", f"sqlite:///{folder / 'bench.db'}")]
        pg = create_pg_database(args.pg)
        proxy = None
        try:
            if pg is not None:
                storages.append(("postgresql", pg[0]))
                proxy, grpc_url = start_proxy(pg[0])
                storages.append(("grpc proxy", grpc_url))
            for label, url in storages:
                for n in sorted(set(args.workers) | ({1} if label == BASELINE[0] else set())):
                    done, wall = run_config(
                        url, f"bench-{label.replace(' ', '-')}-{n}", n, args.trials
                    )
                    rows.append((label, n, done, wall))
                    print(f"{label:>11} x{n}: {done / wall:8.1f} trials/s", file=sys.stderr)
        finally:
            if proxy is not None:
                proxy.terminate()
                proxy.wait()
            if pg is not None:
                drop_pg_database(args.pg, pg[1])

    base = next(done / wall for label, n, done, wall in rows if (label, n) == BASELINE)
    out: list[str] = []
    out.append(
        f"Baseline: {BASELINE[0]}, {BASELINE[1]} worker; a real trial (quickstart config): "
        f"{real_s:.1f} s; "
        f"{os.cpu_count()} CPU cores.\n"
    )
    out.append(
        "| storage | workers | trials | wall s | trials/s | x baseline | overhead/trial ms "
        "| % of a real trial |"
    )
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, n, done, wall in rows:
        rate = done / wall
        per_trial = n * wall / done
        out.append(
            f"| {label} | {n} | {done} | {wall:.2f} | {rate:.1f} | {rate / base:.2f} | "
            f"{per_trial * 1000:.1f} | {100 * per_trial / real_s:.2f} |"
        )
    return emit("storage", "\n".join(out))


if __name__ == "__main__":
    main()
