"""One model for every depth: per-depth models against mixed-depth models with and without the exposure.

    .venv/bin/python benchmarks/depth.py                       # a few hours on 2 shared CPU cores
    .venv/bin/python benchmarks/depth.py --page-only           # rewrites the docs section from the JSON

Training files: one mock per preset (eRASS1, eRASS:4, eRASS:8, eFEDS) and one of the `mixed`
preset (150-2500 s, log-uniform; also drawn uniformly, to compare), all of `--train-n` clusters
with the same seed, so that they hold the same clusters at different depths. Each trains the
published champion's configuration (models/xray-cluster-mass, Gaussian likelihood) for
`--epochs` epochs with early stopping on validation rmse (90/10 split, no test split): one model
per preset, without the exposure as today, and mixed-depth models with model.use_exposure off,
`head`, `rate` and `both`. Test files: one mock per preset of `--test-n` clusters of another
seed (the same clusters at every depth), never trained on; every model is scored on each,
beside that file's oracle floor and counts baseline (hpo baseline). The mixed model with the
exposure of lowest validation rmse is the one judged against the issue's target: trained again
with train.calibrate_sigma (on its validation split), and again with both calibrations on a
calibration mock of its own (`--train-n` clusters, the training file's settings, seed 102).

Writes docs/results/depth.json and the section "One model for every depth" of docs/results.md
(everything else on that page is make_results.py's, which appends the same section from the
JSON). Work files (mocks, models, per-model scores) go to data/depth/ and are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import keras

from hpo.config.overrides import apply_overrides
from hpo.data.baseline import floors
from hpo.data.contract import load_dataset
from hpo.data.sim.config import apply_sim_overrides
from hpo.data.sim.simulator import write_mock
from hpo.training.evaluate import score
from hpo.trial.recorder import NullRecorder
from hpo.trial.runner import run_trial

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OUT_JSON = DOCS / "results" / "depth.json"
SECTION = "## One model for every depth"
TEST_PRESETS = ["eRASS1", "eRASS:4", "eRASS:8", "eFEDS"]
TRAIN_SEED, TEST_SEED = 100, 101  # every preset's training file holds the same clusters; so do the test files
CALIBRATION_SEED = 102  # the calibration mock: the training file's settings, clusters of its own
CALIBRATION_FILE = "calib-mixed.h5"  # in the work folder; data.calibration_path names it
# The published champion's configuration (docs/results.md, "The combined study"), as a run config.
CHAMPION = {
    "model.filters": 12, "model.kernel_size": 5, "model.pool.type": "avg",
    "model.input.transform": "asinh", "model.dense": [256, 128, 64],
    "model.dropout.placement": "none", "model.regularizer.type": "none", "model.batch_norm": False,
    "train.optimizer": {"type": "adam", "learning_rate": 0.0008487816559241713},
    "train.schedule.type": "cosine", "train.batch_size": 200,
    "train.augment": {"flips": True, "rot90": False, "tta": True},
    "train.loss.type": "gaussian_nll",
}
# name: (training data, model overrides)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    **{f"{p} alone": (p, {}) for p in TEST_PRESETS},
    "mixed, no exposure": ("mixed", {}),
    "mixed, exposure head": ("mixed", {"model.use_exposure": True, "model.exposure_mode": "head"}),
    "mixed, exposure rate": ("mixed", {"model.use_exposure": True, "model.exposure_mode": "rate"}),
    "mixed, exposure both": ("mixed", {"model.use_exposure": True, "model.exposure_mode": "both"}),
    "mixed uniform, exposure head": ("mixed-uniform", {"model.use_exposure": True,
                                                        "model.exposure_mode": "head"}),
}
TRAINING_SETS = {"mixed": {"survey.preset": "mixed"},
                 "mixed-uniform": {"survey.preset": "mixed", "survey.exposure_distribution": "uniform"},
                 **{p: {"survey.preset": p} for p in TEST_PRESETS}}
SEEDED = [n for n in MODELS if n.startswith("mixed, exposure")]  # retrained with --extra-seeds
# The target for the one mixed-depth model on every preset, each on its own floors.
RATIO_MAX, BIAS_MAX, COVERAGE = 1.1, 0.02, (0.63, 0.73)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-n", type=int, default=4000)
    parser.add_argument("--test-n", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64,
                        help="the champion's 200 gives a 4,000-cluster file 18 steps an epoch")
    parser.add_argument("--extra-seeds", default="1,2",
                        help="train.seed values beyond 0 for the mixed models with the exposure ('' for none)")
    parser.add_argument("--only", default="", help="semicolon-separated model names (default: all)")
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "depth")
    parser.add_argument("--page-only", action="store_true", help="rewrite the docs section from the JSON")
    parser.add_argument("--no-calibrate-chosen", dest="calibrate_chosen", action="store_false",
                        help="do not train the chosen mixed model again with train.calibrate_sigma")
    args = parser.parse_args()
    if args.page_only:
        write_section(json.loads(OUT_JSON.read_text()))
        return
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tests = {p: mock(work / f"test-{p.replace(':', '')}.h5", args.test_n, TEST_SEED, TRAINING_SETS[p])
             for p in TEST_PRESETS}
    test_floors = {}
    for preset, path in tests.items():
        ds = load_dataset(path)
        test_floors[preset] = {**floors(ds), "n": len(ds)}
        print(f"floors of {path.name}: {test_floors[preset]}", flush=True)
    runs = all_runs([int(x) for x in args.extra_seeds.split(",") if x.strip()])
    names = args.only.split(";") if args.only else list(runs)
    settings = {"train_n": args.train_n, "test_n": args.test_n, "epochs": args.epochs,
                "patience": args.patience, "batch_size": args.batch_size}
    published = published_models(settings)
    results = {}

    def result_of(name: str) -> dict[str, Any]:
        cache = work / f"{slug(name)}.json"
        key = {**settings, "overrides": runs[name][1]}
        saved = json.loads(cache.read_text()) if cache.exists() else published.get(name, {})
        if saved.get("key") != key:
            saved = {"key": key, **run_model(name, runs[name], tests, work, args)}
            cache.write_text(json.dumps(saved, indent=1, default=float))
        return saved

    for name in names:
        results[name] = result_of(name)
    chosen = chosen_model(results)
    if args.calibrate_chosen and chosen is not None:
        # The chosen model once more with sigma calibrated on its validation split
        # (train.calibrate_sigma): the same training, then the scale that validation alone sets.
        name = sigma_calibrated_name(chosen)
        runs[name] = (runs[chosen][0], {**runs[chosen][1], "train.calibrate_sigma": True})
        results[name] = result_of(name)
        # And with both calibrations set by a mock of its own (data.calibration_path): the shift
        # per exposure bin (train.calibrate_bias) needs more clusters than 10% of the file.
        mock(work / CALIBRATION_FILE, args.train_n, CALIBRATION_SEED, TRAINING_SETS[runs[chosen][0]])
        name = calibrated_name(chosen)
        runs[name] = (runs[chosen][0], {**runs[chosen][1], "train.calibrate_sigma": True,
                                        "train.calibrate_bias": True, "data.calibration_path": CALIBRATION_FILE})
        results[name] = result_of(name)
    summary = {
        "train_n": args.train_n, "test_n": args.test_n, "epochs": args.epochs, "patience": args.patience,
        "batch_size": args.batch_size,
        "train_seed": TRAIN_SEED, "test_seed": TEST_SEED, "config": CHAMPION,
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}",
        "floors": test_floors, "models": results,
    }
    OUT_JSON.write_text(json.dumps(summary, indent=1, default=float) + "\n")
    write_section(summary)


def published_models(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The models of docs/results/depth.json, if it was measured with `settings` (each carries its
    cache key): a fresh checkout rewrites the page, or adds a model, without training the rest."""
    if not OUT_JSON.exists():
        return {}
    summary = json.loads(OUT_JSON.read_text())
    if any(summary.get(k) != v for k, v in settings.items()):
        return {}
    return summary["models"]


def all_runs(extra_seeds: list[int]) -> dict[str, tuple[str, dict[str, Any]]]:
    """MODELS, and the SEEDED ones again with each extra train.seed (seed 0 is the default's)."""
    runs = dict(MODELS)
    for seed in extra_seeds:
        runs.update({f"{n}, seed {seed}": (MODELS[n][0], {**MODELS[n][1], "train.seed": seed})
                     for n in SEEDED})
    return runs


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


def mock(path: Path, n: int, seed: int, overrides: dict[str, Any]) -> Path:
    if not path.exists():
        write_mock(path, n, seed, apply_sim_overrides(overrides), jobs=2)
    return path


def run_model(name: str, run: tuple[str, dict[str, Any]], tests: dict[str, Path], work: Path,
              args: argparse.Namespace) -> dict[str, Any]:
    """Trains one model and scores it once on every test file."""
    data, overrides = run
    path = mock(work / f"train-{data.replace(':', '')}.h5", args.train_n, TRAIN_SEED, TRAINING_SETS[data])
    if "data.calibration_path" in overrides:  # a file of the work folder, named without it in the cache key
        overrides = {**overrides, "data.calibration_path": str(work / overrides["data.calibration_path"])}
    cfg = apply_overrides({**CHAMPION, **overrides, "data.path": str(path), "data.test_fraction": 0.0,
                           "train.epochs": args.epochs, "train.early_stopping_patience": args.patience,
                           "train.batch_size": args.batch_size})
    t0 = time.perf_counter()
    progress = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: print(
        f"  {name} epoch {epoch + 1}: val rmse {logs.get('val_rmse', float('nan')):.3f} "
        f"({time.perf_counter() - t0:.0f} s)", flush=True))
    result = run_trial(cfg, load_dataset(path), NullRecorder(), monitor="val_rmse", callbacks=[progress]).result
    seconds = time.perf_counter() - t0
    scores = {p: score(result.model, load_dataset(f), tta=True) for p, f in tests.items()}
    print(f"{name}: {seconds:.0f} s, best epoch {result.best_epoch + 1}, "
          + ", ".join(f"{p} {s['residual_std']:.3f}/{s['bias']:+.3f}/{s.get('coverage68', 0):.2f}"
                      for p, s in scores.items()), flush=True)
    return {"train": data, "overrides": run[1], "seconds": seconds, "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch, "val": result.val_metrics, "test": scores,
            "sigma_scale": result.sigma_scale, "shift": result.shift.as_dict() if result.shift else None}


# ---------------------------------------------------------------------------------------------
# the page


def section(summary: dict[str, Any]) -> list[str]:
    """The Markdown of the section, from depth.json (make_results.py appends the same lines)."""
    models, fl = summary["models"], summary["floors"]
    alone = {p: models.get(f"{p} alone") for p in TEST_PRESETS}
    chosen = chosen_model(models)
    names = (calibrated_name(chosen), sigma_calibrated_name(chosen))
    target = next((n for n in names if n in models), chosen)
    lines = [
        SECTION,
        "",
        "A model trained at one depth does not travel to another (above: the eRASS:8 champion "
        "underestimates eRASS1 masses by 0.4 dex). The exposure of a real cluster is known from the "
        "survey's exposure maps, so the data contract carries it as data (`exposure_s`, s, one per "
        "cluster; `hpo simulate` writes it), and `model.use_exposure` gives it to the network: "
        "`exposure_mode: head` joins the standardised log10 exposure to the dense part beside the "
        "redshift, `rate` scales the counts to the training median exposure before the transform, "
        "`both` does both. One number per cluster rather than an exposure map: the survey scans "
        "average the vignetting, so a survey's exposure changes on degree scales, little across a "
        "6.7' cut-out and far less than the factor of 15 between eRASS1 and eRASS:8; one number "
        "goes into the dense part or scales the counts without a second image channel, and a "
        "per-pixel map reduces to it (`hpo cutouts` takes its mean over the cut-out). The mocks "
        "draw one exposure per cluster, so a map could not be measured against it here.",
        "",
        f"Measured by [`benchmarks/depth.py`](../benchmarks/depth.py) ({summary['machine']}): the "
        f"champion's configuration (batch {summary['batch_size']} rather than 200, for more steps on a "
        f"small file) trained for up to {summary['epochs']} epochs (early stopping on "
        f"validation rmse, patience {summary['patience']}) on {summary['train_n']:,} clusters per "
        f"training file (seed {summary['train_seed']}, the same clusters at every depth), 90% to train "
        f"and 10% to validate; each model scored once, with test-time augmentation, on a mock of "
        f"{summary['test_n']:,} clusters per preset that no model trained on (seed "
        f"{summary['test_seed']}). `mixed` is the 150-2500 s preset, log-uniform; `mixed uniform` the "
        "same range drawn uniformly. Floors are each test file's own (`hpo baseline`).",
        "",
        "Residual std, dex (bias, 68% coverage), on each preset's test file:",
        "",
        "| model | " + " | ".join(TEST_PRESETS) + " |",
        "| --- | " + " | ".join("---:" for _ in TEST_PRESETS) + " |",
        "| oracle floor | " + " | ".join(f"{fl[p]['oracle_floor']:.3f}" for p in TEST_PRESETS) + " |",
        "| counts baseline | " + " | ".join(f"{fl[p]['counts_baseline']:.3f}" for p in TEST_PRESETS) + " |",
    ]
    for name, r in models.items():
        cells = []
        for p in TEST_PRESETS:
            t = r["test"][p]
            cells.append(f"{t['residual_std']:.3f} ({t['bias']:+.3f}, {t.get('coverage68', float('nan')):.2f})")
        bold = "**" if name == target else ""
        lines.append(f"| {bold}{name}{bold} | " + " | ".join(cells) + " |")
    picked = models.get(target) or {}
    scale, shift = picked.get("sigma_scale"), picked.get("shift")
    calibrated = ""
    if shift:
        calibrated = (
            f"; trained again with the same configuration and seed, then calibrated on a mock of its own "
            f"(`data.calibration_path`: {summary['train_n']:,} clusters of the training file's preset "
            f"and settings, seed {CALIBRATION_SEED}, never trained on and not a test file): "
            f"`train.calibrate_bias` shifts log mass by minus the mean residual in {len(shift['shift_dex'])} "
            "equal-count bins of log exposure, joined piecewise-linearly and flat beyond the end bins, "
            f"and `train.calibrate_sigma` then scales sigma, here by {scale:.3f}, so that 68.3% of the "
            "mock lies within 1 sigma. No test number set either; CPU training is not repeatable to "
            "the bit, so its log masses before the shift differ a little from the rows above it")
    elif scale:
        calibrated = (
            f"; trained again with the same configuration and seed and `train.calibrate_sigma`, which "
            f"scales its sigma, here by {scale:.3f}, so that 68.3% of its own validation split lies within "
            "1 sigma: no test number set the scale either. CPU training is not repeatable to the bit, so "
            "its log masses differ a little from the row above it")
    lines += ["", f"The target for the one mixed-depth model (`{chosen}`, the mixed model with the exposure "
              "of lowest validation rmse on its own mixed file: no test number chose it"
              f"{calibrated}) on every preset: residual std "
              f"within {RATIO_MAX}x of the model trained at that depth alone, |bias| <= {BIAS_MAX} dex, "
              f"68% coverage in {COVERAGE[0]}-{COVERAGE[1]}:", "",
              "| preset | mixed / alone | bias | coverage | met |", "| --- | ---: | ---: | ---: | --- |"]
    misses: list[str] = []
    if target in models:
        for p in TEST_PRESETS:
            t, a = models[target]["test"][p], alone[p]
            ratio = t["residual_std"] / a["test"][p]["residual_std"] if a else float("nan")
            cov = t.get("coverage68", float("nan"))
            checks = [ratio <= RATIO_MAX, abs(t["bias"]) <= BIAS_MAX, COVERAGE[0] <= cov <= COVERAGE[1]]
            missed = [w for w, ok in zip(("ratio", "bias", "coverage"), checks) if not ok]
            misses += [f"{p}'s {w}" for w in missed]
            lines.append(f"| {p} | {ratio:.2f} | {t['bias']:+.3f} | {cov:.2f} | "
                         f"{'**met**' if not missed else 'not met: ' + ', '.join(missed)} |")
        ignore = ("train.seed", "train.calibrate_sigma")
        same = [r for r in models.values()
                if r["train"] == "mixed" and not r["overrides"].get("train.calibrate_bias")
                and {k: v for k, v in r["overrides"].items() if k not in ignore}
                == {k: v for k, v in models[chosen]["overrides"].items() if k not in ignore}]
        spread = {p: (min(r["test"][p]["bias"] for r in same), max(r["test"][p]["bias"] for r in same))
                  for p in TEST_PRESETS}
        n_val = round(summary["train_n"] * 0.1)
        sd = models[chosen]["val"]["residual_std"]
        seeds = ("Between seeds of the same configuration, uncalibrated, the test bias moves by "
                 + ", ".join(f"{lo:+.3f} to {hi:+.3f} ({p})" for p, (lo, hi) in spread.items()) + " dex")
        if shift:
            n_cal = summary["train_n"]
            bins = len(shift["shift_dex"])
            lines += ["", "The shift the calibration mock set, per bin of exposure (its knots at each bin's "
                      "mean log exposure):", "",
                      "| exposure, s | " + " | ".join(f"{t:.0f}" for t in shift["exposure_s"]) + " |",
                      "| --- | " + " | ".join("---:" for _ in shift["exposure_s"]) + " |",
                      "| shift, dex | " + " | ".join(f"{d:+.3f}" for d in shift["shift_dex"]) + " |",
                      "", f"Why a mock of its own: the validation split's {n_val} clusters measure a bias to "
                      f"+-{sd / n_val ** 0.5:.3f} dex (residual std / sqrt(n)), half the target's band, and "
                      "cannot resolve it per exposure; the mock's "
                      f"{n_cal:,} clusters, {n_cal // bins} per bin, measure each bin's to "
                      f"+-{sd / (n_cal // bins) ** 0.5:.3f} dex. The bias is not one number: it changes with "
                      "the exposure by as much as the target's band (the shifts above), while this model's "
                      f"validation bias was {models[chosen]['val']['bias']:+.3f} dex, its mean residual "
                      "on the mock "
                      f"{-sum(shift['shift_dex']) / bins:+.3f} dex. "
                      f"{seeds}" + (f"; what the target still misses ({', '.join(misses)}) is within that spread."
                                    if misses else "."),
                      "", "In the order it happened: this calibration was built after the sigma-only row "
                      "above had missed eRASS:8's bias on the test files, so the test files told us that "
                      "more was needed; what was built, the model it calibrates and every number it set come "
                      "from the training, validation and calibration files alone, and it was trained and "
                      "scored once."]
        else:
            lines += ["", f"Validation sets the sigma scale; it does not set a shift of log_mass: its {n_val} "
                      f"clusters measure a bias to +-{sd / n_val ** 0.5:.3f} dex (residual std / sqrt(n)), half "
                      f"the target's band. {seeds}" + (f"; what the target misses ({', '.join(misses)}) is "
                                                        "within that spread." if misses else ".")]
    lines += ["", *summary.get("notes", []), ""]
    return lines


def calibrated_name(chosen: str) -> str:
    return f"{chosen}, calibrated on a mock of its own"


def sigma_calibrated_name(chosen: str) -> str:
    return f"{chosen}, sigma calibrated"


def chosen_model(models: dict[str, Any]) -> str | None:
    """The mixed-depth model that takes the exposure with the lowest validation rmse (among the
    models as trained, before any calibration)."""
    candidates = [n for n, r in models.items()
                  if r["train"] == "mixed" and r["overrides"].get("model.use_exposure")
                  and not r["overrides"].get("train.calibrate_sigma")]
    return min(candidates, key=lambda n: models[n]["val"]["rmse"]) if candidates else None


def write_section(summary: dict[str, Any]) -> None:
    """Replaces (or appends) the section in docs/results.md, leaving every other line as it is."""
    page = DOCS / "results.md"
    text = page.read_text()
    head, found, rest = text.partition(SECTION)
    tail = ""
    if found:
        after = rest.split("\n## ", 1)
        tail = "\n## " + after[1] if len(after) > 1 else ""
    else:
        head = text.rstrip("\n") + "\n\n"
    page.write_text(head + "\n".join(section(summary)).rstrip("\n") + "\n" + tail)
    print(f"wrote the section of {page}")


if __name__ == "__main__":
    main()
