"""Trials per hour and epochs per second with K workers sharing one GPU, K = 1, 2, 4, 8, each
worker training N trials per program (study.fuse).

    python benchmarks/gpu/kbench.py benchmarks/gpu/combined-gpu.yaml --ks 1,2,4,8 --seconds 40 \
        --work /tmp/kbench --out kbench.json
    python benchmarks/gpu/kbench.py benchmarks/gpu/scan-gpu.yaml --ks 1,8 --fuse 1,8 \
        --work /tmp/kfuse --out kfuse.json

For each K (and each N of --fuse) the space runs as its own study through `hpo launch --workers-per-gpu K`
(same sampler seed, no enqueued points, trials capped at --epochs, no models logged), each
worker time-boxed to --seconds; nvidia-smi samples GPU utilisation and memory every second
meanwhile. The rates are over the span from the first trial's start to the last one's end, so
worker start-up (imports, data loading) is not counted. Baseline: the first row (K = 1, N = 1).
Trials train on --loop (default device: train.loop device, Keras' JAX backend).

    python benchmarks/gpu/kbench.py --account combined-own --storage sqlite:///hpo.db \
        --smi own-smi.csv --wall 470 --out own.json

accounts for a study that ran otherwise (run.sh own: combined.yaml at its own budget) the same
way: trials by state, epochs/s and trials/h over the span, the GPU's busy share from --smi.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: studies, emit
from studies import derive_space  # noqa: E402

from hpo.keys import EPOCHS_RUN_KEY  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("space", type=Path, nargs="?")
    parser.add_argument("--ks", default="1,2,4,8")
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--fuse", default="1", help="study.fuse values: trials per program")
    parser.add_argument("--loop", default="device", choices=["device", "fit"],
                        help="train.loop of every trial")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kbench"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--table-from", type=Path, default=None,
                        help="write benchmarks/results/gpu.md from a kbench JSON instead of running")
    parser.add_argument("--account", metavar="STUDY", default=None,
                        help="account for a study that ran already (with --storage, --smi, --wall)")
    parser.add_argument("--storage", default=None)
    parser.add_argument("--smi", type=Path, default=None, help="nvidia-smi samples (utilisation, MiB)")
    parser.add_argument("--wall", type=float, default=float("nan"), help="the launch's wall time, s")
    args = parser.parse_args()
    if args.table_from is not None:
        table(json.loads(args.table_from.read_text()), args.table_from)
        return
    if args.account is not None:
        row = account(args.account, args.storage, args.smi, args.wall)
        args.out.write_text(json.dumps(row, indent=1))
        print(f"{args.account}: {row['finished']} of {row['trials']} trials started finished "
              f"({row['complete']} complete, {row['pruned']} pruned, {row['failed']} failed) in "
              f"{row['span_s']:.0f} s; {row['epochs_per_s']:.2f} epochs/s, "
              + (f"GPU util {row['gpu_util_mean']}% (busy {row['gpu_util_mean_busy']}%)"
                 if row["gpu_util_mean"] is not None else "no GPU samples")
              + f", best {row['best']}", flush=True)
        return
    rows: list[dict] = []
    for fuse in args.fuse.split(","):
        for k in args.ks.split(","):
            rows.append(run_k(args, int(k), int(fuse)))
            summarize(rows, args.out)  # after every run: a run cut short keeps what it measured


def summarize(rows: list[dict], out: Path) -> None:
    """Ratios against K = 1 and the best value at the trial count every K reached, to `out`."""
    base = rows[0]
    common = min(r["finished"] for r in rows)  # best value compared at the same trial count
    for r in rows:
        r["trials_per_hour_ratio"] = r["trials_per_hour"] / base["trials_per_hour"] if base["trials_per_hour"] else None
        r["epochs_per_s_ratio"] = r["epochs_per_s"] / base["epochs_per_s"] if base["epochs_per_s"] else None
        r["best_at_common"] = min((v for v in r["values"][:common] if v is not None), default=None)
    out.write_text(json.dumps({"common_trials": common, "rows": rows}, indent=1))
    for r in rows[-1:]:
        print(f"K={r['k']} N={r.get('fuse', 1)}: {r['finished']} trials, {r['trials_per_hour']:.0f} trials/h "
              f"(x{r['trials_per_hour_ratio'] or 0:.2f}), {r['epochs_per_s']:.2f} epochs/s, "
              f"GPU util {r['gpu_util_mean']}%, best of first {common}: {r['best_at_common']}", flush=True)


def table(result: dict, source: Path) -> None:
    """The markdown table of a kbench JSON (run on a GPU machine), for docs/benchmarks.md."""
    from emit import emit

    rows = result["rows"]
    ks = ", ".join(str(r["k"]) for r in rows)
    lines = [
        f"K workers sharing one GPU (K = {ks}), the combined space, trials capped at "
        f"{rows[0]['epochs'] // max(rows[0]['finished'], 1)} epochs, each worker time-boxed; rates over "
        f"the span from the first trial's start to the last one's end (`{source.name}`):",
        "",
        "| K | N per program | trials | failed | trials/h | ratio | epochs/s | ratio | GPU util (mean, busy) | GPU memory peak | best val residual std, first "
        f"{result['common_trials']} trial(s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        best = f"{r['best_at_common']:.3f}" if r.get("best_at_common") is not None else "-"
        lines.append(
            f"| {r['k']}{' (baseline)' if r is rows[0] else ''} | {r.get('fuse', 1)} | {r['finished']} | {r['failed']} | "
            f"{r['trials_per_hour']:.0f} | {r['trials_per_hour_ratio']:.2f} | {r['epochs_per_s']:.2f} | "
            f"{r['epochs_per_s_ratio']:.2f} | {r['gpu_util_mean']}%, {r['gpu_util_mean_busy']}% | "
            f"{r['gpu_mem_max_mib'] / 1024:.1f} GiB | {best} |")
    fewest = min(r["finished"] for r in rows)
    if fewest < 5 or len(rows) < 4:
        lines += ["", f"Indicative only: this run measured K = {ks} with as few as {fewest} finished trial(s) "
                  "per K (each K's window was short, and a trial's first epoch compiles), so one trial more "
                  "or less moves a ratio by a lot; rerun `benchmarks/gpu/run.sh kbench` with a longer "
                  "KB_S for a firm number."]
    own = source.parent / "own.json"
    if own.exists():
        lines += ["", *own_table(json.loads(own.read_text()), own.name)]
    emit("gpu", "\n".join(lines))


def own_table(r: dict, name: str) -> list[str]:
    """The lines for run.sh own's account: combined.yaml at its own budget in one command."""
    best = f"{r['best']:.3f}" if r.get("best") is not None else "-"
    util = (f"{r['gpu_util_mean']}%, {r['gpu_util_mean_busy']}%" if r.get("gpu_util_mean") is not None
            else "no samples")
    return [
        f"search_spaces/combined.yaml at its own budget (100 trials of up to 200 epochs, median pruning) "
        f"through `hpo launch` on the device path, K workers sharing the GPU, stopped starting trials "
        f"after 7 min and stopped at the command's deadline (`benchmarks/gpu/run.sh own`, `{name}`):",
        "",
        "| trials started | complete | pruned | failed | epochs | epochs/s | trials/h | GPU util (mean, busy) "
        "| launch wall, s | best val rmse |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {r['trials']} | {r['complete']} | {r['pruned']} | {r['failed']} | {r['epochs']} | "
        f"{r['epochs_per_s']:.2f} | {r['trials_per_hour']:.0f} | {util} | {r['wall_s']:.0f} | {best} |",
    ]


def run_k(args: argparse.Namespace, k: int, fuse: int = 1) -> dict:
    work = args.work / (f"k{k}" if fuse == 1 else f"k{k}-n{fuse}")
    work.mkdir(parents=True, exist_ok=True)
    name = f"kbench-{k}" if fuse == 1 else f"kbench-{k}-n{fuse}"
    space = derive_space(args.space, work / "space.yaml", {
        "study.name": name, "study.enqueue": None, "study.timeout_s": args.seconds,
        "study.n_trials": 1000, "study.fuse": fuse, "base.train.epochs": args.epochs,
        "base.train.loop": args.loop, "tracking": {"log_models": "none"},
    })
    storage = f"sqlite:///{work / 'hpo.db'}"
    smi = _sampler(work / "smi.csv")
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "hpo", "launch", str(space), "--workers-per-gpu", str(k),
                    "--storage", storage, "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"],
                   check=True)
    wall = time.time() - t0
    if smi is not None:
        smi.terminate()
        smi.wait()
    return {"k": k, "fuse": fuse, "loop": args.loop, **account(name, storage, work / "smi.csv", wall)}


def account(name: str, storage: str, smi: Path | None, wall: float) -> dict:
    """A finished launch of study `name`: trials by state, rates over the span from the first
    trial's start to the last one's end, the GPU's utilisation from the samples in `smi`."""
    study = optuna.load_study(study_name=name, storage=storage)
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()
            and t.datetime_start and t.datetime_complete]
    done.sort(key=lambda t: t.datetime_complete)
    finished = [t for t in done if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    span = ((max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
            if done else float("nan"))
    epochs = sum(int(t.user_attrs.get(EPOCHS_RUN_KEY, 0)) for t in finished)
    util, busy, mem = _utilisation(smi) if smi is not None else (None, None, None)
    values = [t.value for t in finished if t.state == TrialState.COMPLETE]
    return {
        "wall_s": wall, "span_s": span,
        "trials": sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False)),
        "finished": len(finished), "complete": sum(t.state == TrialState.COMPLETE for t in done),
        "pruned": sum(t.state == TrialState.PRUNED for t in done),
        "failed": sum(t.state == TrialState.FAIL for t in done), "epochs": epochs,
        "trials_per_hour": len(finished) / span * 3600 if span > 0 else 0.0,
        "epochs_per_s": epochs / span if span > 0 else 0.0,
        # in the order trials finished; None for a pruned one
        "values": [t.value if t.state == TrialState.COMPLETE else None for t in finished],
        "best": min(values, default=None),
        "gpu_util_mean": util, "gpu_util_mean_busy": busy, "gpu_mem_max_mib": mem,
    }


def _sampler(path: Path) -> subprocess.Popen | None:
    try:
        return subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
             "-lms", "1000"], stdout=path.open("w"), stderr=subprocess.DEVNULL)
    except OSError:
        return None  # no GPU: the rates alone


def _utilisation(path: Path) -> tuple[float | None, float | None, float | None]:
    """(mean utilisation over the whole launch, mean over samples with the GPU busy, peak MiB)."""
    if not path.exists():
        return None, None, None
    rows = [line.split(",") for line in path.read_text().splitlines() if line.count(",") == 1]
    vals = [(float(u), float(m)) for u, m in rows if u.strip().replace(".", "").isdigit()]
    if not vals:
        return None, None, None
    busy = [u for u, _ in vals if u > 0] or [0.0]
    return (round(sum(u for u, _ in vals) / len(vals), 1), round(sum(busy) / len(busy), 1),
            max(m for _, m in vals))


if __name__ == "__main__":
    main()
