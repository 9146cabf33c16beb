"""The achievable floor beside the other floors, at eRASS:8 and eRASS1 depth (issue 27).

    .venv/bin/python benchmarks/achievable_floor.py [--n 10000] [--seed 0] [--presets eRASS:8 eRASS1]

For each preset: a mock as `hpo simulate FILE --n N --seed S --preset P` writes it; its floors
(hpo.data.baseline.floors: the oracle floor, the counts and counts-rate baselines, the feature
baseline, fitted on 80% and scored on the other 20%); and on the same scored clusters the
achievable floor (hpo.data.achievable: the posterior mean of log M of the estimator that knows the
generator and every nuisance), its 68% interval from BOOTSTRAP resamples of the scored clusters,
the feature baseline's, and their paired difference (one resample for both), also on the first
250, 500 and 1,000 scored clusters to show how the interval narrows with the cluster count.

Then the same on the every-depth model's test mocks (2,000 clusters, seed 303, eRASS1, eRASS:4,
eRASS:8, eFEDS), both as docs/results.md's every-depth table scored them, before the light-leak
cut (--keep-light-leak, which reproduces those files), and with it (the retrained model's); and on the
champion's own 1,000 test clusters of the results' eRASS:8 mock (10,000 clusters, seed 0, split
seed 0, 10% validation, 10% test; the trees fitted on its 8,000 training clusters).
Writes benchmarks/results/achievable_floor.json and prints the docs' tables.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from hpo.data.achievable import BOOTSTRAP
from hpo.data.achievable import file_config
from hpo.data.achievable import posterior_log_mass
from hpo.data.achievable import split_eval
from hpo.data.baseline import floors
from hpo.data.baseline import photometry_features
from hpo.data.baseline import TREE_PARAMS
from hpo.data.contract import load_dataset
from hpo.data.cosmology import FlatLCDM
from hpo.data.sim.config import apply_sim_overrides
from hpo.data.sim.config import load_sim_config
from hpo.data.sim.simulator import GENERATOR
from hpo.data.sim.simulator import write_mock
from hpo.data.split import split_indices

OUT = Path(__file__).resolve().parent / "results" / "achievable_floor.json"
SUBSETS = (250, 500, 1000)
EVERY_DEPTH = ("eRASS1", "eRASS:4", "eRASS:8", "eFEDS")  # docs/results.md's every-depth table
EVERY_DEPTH_N, EVERY_DEPTH_SEED = 2000, 303


def tree_residuals(ds, fit: np.ndarray, ev: np.ndarray, seed: int) -> np.ndarray:
    """The feature baseline's residuals on `ev` (feature_baseline's own fit, kept per cluster)."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    x, y = photometry_features(ds), ds.log_mass.astype(np.float64)
    model = HistGradientBoostingRegressor(**TREE_PARAMS, random_state=seed)
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(x[fit], y[fit])
        return model.predict(x[ev]) - y[ev]


def oracle_floor(ds, fit: np.ndarray, ev: np.ndarray) -> float:
    """The oracle floor's regression (floors') fitted on `fit` and scored on `ev`."""
    y = ds.log_mass.astype(np.float64)
    log_e = np.log10(FlatLCDM.from_config(file_config(ds).cosmology).e(ds.redshift.astype(np.float64)))
    x = np.column_stack([np.ones(y.size), ds.truth["log_lx"], np.log10(ds.truth["kT"]), log_e])
    coef = np.linalg.lstsq(x[fit], y[fit], rcond=None)[0]
    return float(np.std(y[ev] - x[ev] @ coef))


def intervals(a: np.ndarray, b: np.ndarray, seed: int) -> dict:
    """std of a, of b and of b minus a's std, with 68% intervals over paired resamples."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, a.size, size=(BOOTSTRAP, a.size))
    sa, sb = np.std(a[pick], axis=1), np.std(b[pick], axis=1)
    q = lambda v: [round(float(x), 4) for x in np.percentile(v, [16, 84])]  # noqa: E731
    return {"n": int(a.size), "achievable_floor": round(float(np.std(a)), 4), "achievable_floor_68": q(sa),
            "feature_baseline": round(float(np.std(b)), 4), "feature_baseline_68": q(sb),
            "feature_minus_achievable": round(float(np.std(b) - np.std(a)), 4),
            "feature_minus_achievable_68": q(sb - sa)}


def measure(preset: str, n: int, seed: int, folder: Path, keep_light_leak: bool = False,
            champion: bool = False) -> dict:
    path = folder / f"{preset.replace(':', '')}-{seed}.h5"
    cfg = load_sim_config(None, preset)
    if keep_light_leak:
        cfg = apply_sim_overrides({"instrument.light_leak_cut": False}, base=cfg)
    start = time.perf_counter()
    write_mock(path, n, seed, cfg)
    simulate_s = time.perf_counter() - start
    ds = load_dataset(path)
    start = time.perf_counter()
    fl = floors(ds, seed=0, with_exposure=True)
    floors_s = time.perf_counter() - start
    fit, ev = split_eval(len(ds), 0)
    if champion:  # the champion's split (search_spaces' data.split: 10% validation, 10% test)
        split = split_indices(len(ds), val_fraction=0.1, test_fraction=0.1, seed=0)
        fit, ev = split.train, split.test
    start = time.perf_counter()
    post = posterior_log_mass(ds, ev)
    achievable_s = time.perf_counter() - start
    y = ds.log_mass[ev].astype(np.float64)
    resid, oracle = post["mean"] - y, post["oracle"] - y
    trees = tree_residuals(ds, fit, ev, 0)
    r4 = lambda v: round(float(v), 4)  # noqa: E731
    file_floors = {}
    if champion:  # the floors on the champion's split; the file's own (its 20%) kept beside
        file_floors = {"file_floors": {k: v for k, v in fl.items() if isinstance(v, float)}}
        fl = {"oracle_floor": oracle_floor(ds, fit, ev), "counts_baseline": None,
              "counts_rate_baseline": None}
    else:
        assert abs(float(np.std(trees)) - fl["feature_baseline"]) < 1e-9, "the trees differ from floors'"
    whole = intervals(resid, trees, seed=1)
    return {
        "preset": preset, "simulate": f"hpo simulate FILE --n {n} --seed {seed} --preset {preset}"
        + (" --keep-light-leak" if keep_light_leak else ""),
        "light_leak_cut": file_config(ds).instrument.light_leak_cut,
        "n_clusters": n, "n_fit": int(fit.size), "n_eval": int(ev.size),
        "scored_on": "the champion's test split" if champion else "the floors' 20%",
        "oracle_floor": r4(fl["oracle_floor"]),
        "oracle_posterior": r4(np.std(oracle)), "oracle_posterior_bias": r4(np.mean(oracle)),
        **{k: v for k, v in whole.items() if k != "n"},
        "achievable_bias": r4(np.mean(resid)), "achievable_rmse": r4(np.sqrt(np.mean(resid**2))),
        "achievable_coverage68": r4(np.mean(np.abs(resid) <= post["sd"])),
        "achievable_sd_rms": r4(np.sqrt(np.mean(post["sd"] ** 2))),
        "feature_baseline_bias": r4(np.mean(trees)),
        "counts_baseline": fl["counts_baseline"] and r4(fl["counts_baseline"]),
        "counts_rate_baseline": fl["counts_rate_baseline"] and r4(fl["counts_rate_baseline"]),
        **file_floors,
        "by_cluster_count": [intervals(resid[:k], trees[:k], seed=1) for k in SUBSETS if k < ev.size]
        + [whole],
        "seconds": {"simulate": round(simulate_s, 1), "floors": round(floors_s, 1),
                    "achievable": round(achievable_s, 1),
                    "achievable_per_cluster": round(achievable_s / ev.size, 4)},
    }


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def tables(result: dict) -> str:
    """The Markdown tables of docs/results.md's section."""
    lines = ["| mock | clusters (fit / scored) | oracle floor | oracle, posterior mean | achievable floor "
             "[68%] | feature baseline [68%] | feature - achievable [68%] | counts baseline | counts-rate "
             "baseline |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    iv = lambda v, w: f"{v:.3f} [{w[0]:.3f}, {w[1]:.3f}]"  # noqa: E731
    for r in result["mocks"] + result["every_depth"] + result["champion"]:
        lines.append(
            f"| {r['preset']}, seed {r['simulate'].split('--seed ')[1].split()[0]}"
            f"{', no cut' if 'keep-light' in r['simulate'] else ''}"
            f"{', champion test' if r['scored_on'].startswith('the champion') else ''} | {r['n_clusters']:,} ({r['n_fit']:,} / "
            f"{r['n_eval']:,}) | {r['oracle_floor']:.3f} | {r['oracle_posterior']:.3f} | "
            f"{iv(r['achievable_floor'], r['achievable_floor_68'])} | "
            f"{iv(r['feature_baseline'], r['feature_baseline_68'])} | "
            f"{iv(r['feature_minus_achievable'], r['feature_minus_achievable_68'])} | "
            f"{_f(r['counts_baseline'])} | {_f(r['counts_rate_baseline'])} |")
    lines += ["", "| mock | scored clusters | achievable floor [68%] | feature - achievable [68%] |",
              "| --- | ---: | ---: | ---: |"]
    for r in result["mocks"]:
        for b in r["by_cluster_count"]:
            lines.append(f"| {r['preset']} | {b['n']:,} | {iv(b['achievable_floor'], b['achievable_floor_68'])} | "
                         f"{iv(b['feature_minus_achievable'], b['feature_minus_achievable_68'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="clusters per mock (20%% are scored)")
    ap.add_argument("--seed", type=int, default=0, help="the mocks' seed")
    ap.add_argument("--presets", nargs="+", default=["eRASS:8", "eRASS1"])
    ap.add_argument("--no-every-depth", action="store_true",
                    help="skip the every-depth table's mocks and the champion's test clusters")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    start = time.perf_counter()
    result: dict = {"generator": GENERATOR, "bootstrap": BOOTSTRAP, "mocks": [], "every_depth": [],
                    "champion": []}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            result["mocks"].append(measure(preset, args.n, args.seed, Path(tmp)))
            print(json.dumps(result["mocks"][-1]), flush=True)
        for keep in () if args.no_every_depth else (True, False):
            for preset in EVERY_DEPTH:
                row = measure(preset, EVERY_DEPTH_N, EVERY_DEPTH_SEED, Path(tmp), keep_light_leak=keep)
                row.pop("by_cluster_count")
                result["every_depth"].append(row)
                print(json.dumps(row), flush=True)
        if not args.no_every_depth:
            row = measure("eRASS:8", 10_000, 0, Path(tmp), keep_light_leak=True, champion=True)
            row.pop("by_cluster_count")
            result["champion"].append(row)
            print(json.dumps(row), flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(tables(result))
    print(f"wrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
