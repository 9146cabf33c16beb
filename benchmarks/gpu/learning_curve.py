"""Residual std against training-set size: the champion configuration on 5k, 20k and 80k clusters.

    python benchmarks/gpu/learning_curve.py --config champion.yaml --sizes 5000,20000,80000 \
        --seeds 1 --work /tmp/curve --out curve.json
    python benchmarks/gpu/learning_curve.py --config champion.yaml --sizes 4000,8000,16000,32000 \
        --parallel 1 --min-epochs 30 --max-epochs 30 --samples 0 --achievable \
        --out docs/results/learning-curve-cpu.json                                    # a CPU

One eRASS:8 mock of max(sizes) / 0.9 clusters (seed 11) supplies the training sets, each the
first N / 0.9 clusters split 90/10 into training and validation (no test split); a second mock
of --test-n clusters (seed 12) is the one test set that every model is scored on, once, with
test-time augmentation, beside that file's floors. Each size is an `hpo train` run (one process
per size and seed, all sharing the GPU, or --parallel at a time), with epochs scaled so that every run sees about
--samples training clusters in all (at least --min-epochs epochs), early stopping on validation.
Beside each size, the feature baseline (gradient-boosted trees on aperture photometry) fitted on
the same clusters and scored on the same test file, so that the curve says what the data buy the
CNN against what they buy the estimator a scientist tries first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

import numpy as np

from hpo.data.achievable import bootstrap_interval
from hpo.data.achievable import posterior_log_mass
from hpo.data.baseline import feature_baseline
from hpo.data.baseline import floors
from hpo.data.contract import Dataset
from hpo.data.contract import load_dataset
from hpo.model.metrics import residual_metrics
from hpo.registry import models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="run config (overrides) of the champion")
    parser.add_argument("--sizes", default="5000,20000,80000")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--samples", type=float, default=2.0e6, help="training clusters seen per run")
    parser.add_argument("--min-epochs", type=int, default=25)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--test-n", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--achievable", action="store_true",
                        help="also the achievable floor of the whole test file (minutes on a CPU)")
    parser.add_argument("--parallel", type=int, default=0,
                        help="runs at once (default all: they share a GPU); 1 on a CPU")
    parser.add_argument("--mem-fraction", type=float, default=None,
                        help="GPU memory cap of each run (JAX); default 0.9 / runs")
    parser.add_argument("--work", type=Path, default=Path("/tmp/curve"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    hpo = [sys.executable, "-m", "hpo"]
    train_file, test_file = args.work / "train.h5", args.work / "test.h5"
    t0 = time.time()
    for path, n, seed in ((train_file, int(max(sizes) / 0.9) + 1, 11), (test_file, args.test_n, 12)):
        if not path.exists():
            subprocess.run([*hpo, "simulate", str(path), "--n", str(n), "--seed", str(seed),
                            "--preset", "eRASS:8", "--jobs", str(args.jobs), "--quiet"], check=True)
    simulate_s = time.time() - t0
    base = yaml.safe_load(args.config.read_text())
    runs = []
    for n in sizes:
        for seed in seeds:
            epochs = int(min(args.max_epochs, max(args.min_epochs, args.samples / n)))
            cfg = {**base, "data.path": str(train_file), "data.max_clusters": int(n / 0.9) + 1,
                   "data.val_fraction": 0.1, "data.test_fraction": 0.0, "data.max_in_memory_gb": 64,
                   "train.epochs": epochs, "train.seed": seed}
            path = args.work / f"n{n}-s{seed}.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            runs.append({"n_train": n, "seed": seed, "epochs": epochs, "config": path})
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{args.mem_fraction or 0.9 / len(runs):.3f}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{args.work / 'mlflow.db'}"}
    # The store is created (its schema migrated) here, once: MLflow's migrations race when
    # several processes create one SQLite store at the same moment.
    from mlflow import MlflowClient

    MlflowClient(env["MLFLOW_TRACKING_URI"]).search_experiments(max_results=1)
    t1 = time.time()
    at_once = args.parallel or len(runs)
    for start in range(0, len(runs), at_once):
        batch = runs[start:start + at_once]
        procs = [subprocess.Popen([*hpo, "train", str(r["config"]), "--json", "--experiment", "learning-curve"],
                                  env=env, stdout=subprocess.PIPE, text=True) for r in batch]
        for r, p in zip(batch, procs, strict=True):
            out, _ = p.communicate()
            r["config"] = str(r["config"])
            r["returncode"] = p.returncode
            if p.returncode == 0:
                r.update(json.loads(out.strip().splitlines()[-1]))
    train_s = time.time() - t1
    test = load_dataset(test_file)
    train = load_dataset(train_file)
    for n in sizes:  # the trees on the clusters the CNN saw (its validation 10% stops them too)
        first = int(n / 0.9) + 1
        both = Dataset(np.concatenate([train.images[:first], test.images]),
                       np.concatenate([train.redshift[:first], test.redshift]),
                       np.concatenate([train.log_mass[:first], test.log_mass]), path=train_file)
        trees = feature_baseline(both, np.arange(first), first + np.arange(len(test)))
        for r in runs:
            if r["n_train"] == n:
                r["feature_baseline"] = trees
        print(f"n_train {n}: feature baseline {trees['residual_std']:.4f}", flush=True)
    for r in runs:
        if r["returncode"] == 0:
            model = models.load(f"runs:/{r['mlflow_run_id']}/model", env["MLFLOW_TRACKING_URI"])
            mu, sigma = models.predict_arrays(model, test.images, test.redshift, tta=True)
            r["test"] = residual_metrics(mu, test.log_mass, sigma)
            print(f"n_train {r['n_train']} seed {r['seed']}: test residual std {r['test']['residual_std']:.4f} "
                  f"({r['epochs_run']} epochs, {r['seconds']:.0f} s)", flush=True)
    out = {"test_n": len(test), "test_floors": floors(test), "simulate_s": simulate_s, "train_s": train_s,
           "config": base, "runs": runs}
    if args.achievable:  # on every test cluster, as the models are scored
        resid = posterior_log_mass(test, np.arange(len(test)))["mean"] - test.log_mass
        out["test_achievable"] = {"n": len(test), "achievable_floor": float(np.std(resid)),
                                  "bias": float(np.mean(resid)), "interval68": bootstrap_interval(resid)}
    args.out.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
