"""The combined study and its final model on one GPU, for a machine without TensorFlow or MLflow.

    KERAS_BACKEND=jax python benchmarks/gpu_study.py docs/results/spaces/combined-gpu.yaml \
        --workers 6 --study-s 240 --final-epochs 400 --final-s 200 --out gpu.json
    .venv/bin/python benchmarks/make_results.py --combined-from gpu.json    # the page from it

To resume a study in a later lease, put its journal (docs/results/combined-gpu.journal holds the
one behind docs/results.md) at WORK/journal.log and run again with `--work WORK`. Where the space
gained an axis since, `--enqueue-best 4 --with model.pool.type=avg` first retries the 4 best
configurations with the new value.

The GPU machines lent to this project carry JAX but neither TensorFlow nor MLflow, and nothing
can be installed from outside. So this runs the same pieces as `hpo launch` (the search-space
file, its sampler and pruner, `config_for_trial`, the pruning callback and `hpo.training.train`)
under Keras' JAX backend, with Optuna's journal file as the storage that the worker processes
share on one GPU, and no MLflow tracking. Everything is time-boxed, so the JSON always comes back:
a trial still running at the study's deadline is pruned there (and marked `time_boxed`), the final
trainings stop at theirs (best weights restored). The final stage trains the `--finalists` best
configurations again, one process per configuration and `--final-seeds` seed, for as many epochs
up to `--final-epochs` as its time box holds at the study's pace (exactly `--final-epochs` with
`--finals-of`), scores each with and without test-time augmentation, and picks the champion (and
its view) by validation rmse, never by test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import keras
import optuna
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from hpo.config.overrides import apply_overrides
from hpo.data.contract import load_dataset
from hpo.objective.keys import CONFIG_KEY
from hpo.objective.keys import EPOCHS_RUN_KEY
from hpo.objective.pruning import PruningCallback
from hpo.objective.space import encode_choice
from hpo.objective.space import load_space
from hpo.objective.suggest import config_for_trial
from hpo.study.pruners import make_pruner
from hpo.study.samplers import make_sampler
from hpo.training.evaluate import score
from hpo.training.loop import train

TIME_BOXED_KEY = "time_boxed"  # a trial pruned because the study's time was up
ENQUEUED_FROM_KEY = "enqueued_from"  # the trial whose params an enqueued trial repeats


class Deadline(keras.callbacks.Callback):
    """At the first epoch end past `at` (time.time()): prunes the trial, or stops training."""

    def __init__(self, at: float, *, prune: bool) -> None:
        super().__init__()
        self.at, self.prune = at, prune

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if time.time() > self.at:
            if self.prune:
                raise optuna.TrialPruned(f"the study's time box ended at epoch {epoch}")
            self.model.stop_training = True


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("space", type=Path)
    parser.add_argument("--transfer", nargs="*", default=[], help="PRESET=FILE, scored by the champion")
    parser.add_argument("--workers", type=int, default=6, help="processes sharing the GPU")
    parser.add_argument("--study-s", type=float, default=240, help="time box of the study")
    parser.add_argument("--finalists", type=int, default=3)
    parser.add_argument("--final-epochs", type=int, default=400)
    parser.add_argument("--final-s", type=float, default=200, help="time box of the final trainings")
    parser.add_argument("--finals-of", default="", help="comma-separated trial numbers: only train "
                        "these again, for exactly --final-epochs, from the journal in --work")
    parser.add_argument("--enqueue-best", type=int, default=0, help="before the study, enqueue the N best "
                        "finished trials again with --with's values (a new axis tried at the best points)")
    parser.add_argument("--with", dest="with_", nargs="*", default=[], metavar="PATH=VALUE",
                        help="values (YAML) of the re-enqueued trials, e.g. model.pool.type=avg")
    parser.add_argument("--final-seeds", default="0", help="comma-separated: each finalist trains once per seed")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_study"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)  # worker:I | final:N:SEED
    parser.add_argument("--until", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    space = load_space(args.space)
    args.work.mkdir(parents=True, exist_ok=True)
    journal = str(args.work / "journal.log")
    if args.role.startswith("worker:"):
        return worker(space, journal, int(args.role[7:]), args.until)
    if args.role.startswith("final:"):
        return final(space, journal, args.role[6:], args)

    t0 = time.time()
    storage = JournalStorage(JournalFileBackend(journal))
    if not args.finals_of:
        study = optuna.create_study(study_name=space.study.name, storage=storage, direction="minimize",
                                    load_if_exists=True)
        with_ = {k: encode_choice(yaml.safe_load(v)) for k, v in (w.split("=", 1) for w in args.with_)}
        enqueue_best(study, args.enqueue_best, with_)
        fan_out(args, [f"worker:{i}" for i in range(args.workers)], t0 + args.study_s)
    study_s = time.time() - t0
    study = optuna.load_study(study_name=space.study.name, storage=storage)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # Its worker died (killed at its time limit, or out of memory): the trial ends, as any does.
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    finalists = done[: args.finalists]
    if args.finals_of:
        finalists = [study.trials[int(n)] for n in args.finals_of.split(",")]
    t1 = time.time()
    seeds = [int(s) for s in args.final_seeds.split(",")]
    roles = [f"{t.number}:{seed}" for t in finalists for seed in seeds]
    fan_out(args, [f"final:{role}" for role in roles], t1 + args.final_s)
    files = [args.work / f"final-{role.replace(':', '-s')}.json" for role in roles]
    finals = [json.loads(f.read_text()) for f in files if f.exists()]
    # By validation rmse: residual std alone ignores a bias, and early stopping on it can keep
    # an epoch whose predictions are all shifted (seen: +0.12 dex at the best residual std).
    champion = min(finals, key=lambda f: f["val"]["rmse"]) if finals else None
    out = {
        "device": _device(), "backend": keras.backend.backend(), "keras": keras.__version__,
        "backend_version": _backend_version(),
        "optuna": optuna.__version__, "space": str(args.space), "workers": args.workers,
        "study_seconds": study_s, "final_seconds": time.time() - t1,
        "trials": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                    "epochs": t.user_attrs.get(EPOCHS_RUN_KEY, 0),
                    "time_boxed": bool(t.user_attrs.get(TIME_BOXED_KEY)),
                    "enqueued_from": t.user_attrs.get(ENQUEUED_FROM_KEY), "config": t.user_attrs.get(CONFIG_KEY)}
                   for t in trials],
        "finals": finals, "champion": champion,
    }
    args.out.write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {args.out}: {len(trials)} trials, champion "
          f"{champion and champion['trial']}: test {champion and champion['test']}", flush=True)


def enqueue_best(study: optuna.Study, n: int, values: dict[str, Any]) -> None:
    """Enqueues the n best finished trials' params again, with `values` on top (once per pair).

    When the space gains an axis mid-study, TPE draws it at random for a long while; trying the
    new values at the best points found so far tells sooner whether the axis matters.
    """
    done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    for t in done[:n]:
        if all(t.params.get(k) == v for k, v in values.items()):
            continue  # already has these values
        study.enqueue_trial({**t.params, **values}, user_attrs={ENQUEUED_FROM_KEY: t.number},
                            skip_if_exists=True)


def fan_out(args: argparse.Namespace, roles: list[str], until: float) -> None:
    """Runs one process of this script per role, all sharing the GPU, until they exit."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    argv = [sys.executable, __file__, *sys.argv[1:]]
    procs = [subprocess.Popen([*argv, "--role", role, "--until", str(until)], env=env) for role in roles]
    for p in procs:
        try:
            p.wait(timeout=max(1.0, until - time.time() + 120))
        except subprocess.TimeoutExpired:
            p.kill()


def worker(space: Any, journal: str, index: int, until: float) -> None:
    """Draws and trains trials until the study's trial budget is spent or its time is up."""
    study = optuna.load_study(study_name=space.study.name,
                              storage=JournalStorage(JournalFileBackend(journal)),
                              sampler=make_sampler(space, index), pruner=make_pruner(space.study.pruner))
    ds = load_dataset(space.resolved_base().data.path)

    def objective(trial: optuna.Trial) -> float:
        cfg = config_for_trial(trial, space)
        trial.set_user_attr(CONFIG_KEY, cfg.model_dump(mode="json"))
        pruning = PruningCallback(trial, space.study.metric)
        try:
            result = train(cfg, ds, callbacks=[pruning, Deadline(until, prune=True)])
        except optuna.TrialPruned:
            trial.set_user_attr(EPOCHS_RUN_KEY, pruning.last_epoch + 1)
            trial.set_user_attr(TIME_BOXED_KEY, time.time() > until)  # not the pruner's verdict
            raise
        trial.set_user_attr(EPOCHS_RUN_KEY, result.epochs_run)
        trial.set_user_attr("seconds", result.seconds)
        print(f"worker {index}: trial {trial.number} {result.val_metrics['residual_std']:.4f} "
              f"({result.epochs_run} epochs, {result.seconds:.0f} s)", flush=True)
        return result.val_metrics["residual_std"]

    study.optimize(objective, timeout=max(0.0, until - time.time()), catch=(Exception,),
                   callbacks=[optuna.study.MaxTrialsCallback(space.study.n_trials, states=None)])


def final(space: Any, journal: str, role: str, args: argparse.Namespace) -> None:
    """Trains trial N's configuration (role "N:SEED") again; scores val, test and transfer.

    Both views are scored, the plain forward pass and the mean over the 8 dihedral views (TTA);
    the one with the lower validation rmse is this final's, so test never chooses.
    """
    number, seed = (int(part) for part in role.split(":"))
    study = optuna.load_study(study_name=space.study.name, storage=JournalStorage(JournalFileBackend(journal)))
    trial = study.trials[number]
    epochs = args.final_epochs
    if not args.finals_of:
        # As many epochs as the time box holds at the study's pace (the schedule then anneals
        # fully; fewer processes share the GPU now, so the pace is if anything faster).
        per_epoch = trial.user_attrs["seconds"] / trial.user_attrs[EPOCHS_RUN_KEY]
        fits = int(0.85 * (args.until - time.time() - 30) / per_epoch)
        epochs = max(trial.user_attrs[EPOCHS_RUN_KEY], min(args.final_epochs, fits))
    cfg = apply_overrides({"train.epochs": epochs, "train.seed": seed},
                          base=apply_overrides(trial.user_attrs[CONFIG_KEY]))
    ds = load_dataset(space.resolved_base().data.path)
    result = train(cfg, ds, callbacks=[Deadline(args.until, prune=False)])
    parts = {"val": ds.subset(result.split.val), "test": ds.subset(result.split.test)}
    others = [(item.split("=", 1)[0], load_dataset(item.split("=", 1)[1])) for item in args.transfer]
    views = {
        view: {**{name: score(result.model, part, tta=tta) for name, part in parts.items()},
               "transfer": [{"preset": preset, "n": len(other), **score(result.model, other, tta=tta)}
                            for preset, other in others]}
        for view, tta in (("plain", False), ("tta", True))
    }
    view = min(views, key=lambda v: views[v]["val"]["rmse"])
    out = {"trial": number, "seed": seed, "study_value": trial.value, "epochs": epochs,
           **views[view], "tta": view == "tta", "views": views, "n_test": len(result.split.test),
           "patience": cfg.train.early_stopping_patience, "epochs_run": result.epochs_run,
           "best_epoch": result.best_epoch, "seconds": result.seconds}
    (args.work / f"final-{number}-s{seed}.json").write_text(json.dumps(out, default=float))
    print(f"final {number} seed {seed}: val rmse {out['val']['rmse']:.4f} test {out['test']['residual_std']:.4f} "
          f"({view}; plain {views['plain']['test']['residual_std']:.4f}, tta {views['tta']['test']['residual_std']:.4f}; "
          f"{result.epochs_run} epochs, {result.seconds:.0f} s)", flush=True)


def _backend_version() -> str:
    module = __import__(keras.backend.backend())
    return getattr(module, "__version__", "?")


def _device() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "cpu"


if __name__ == "__main__":
    main()
