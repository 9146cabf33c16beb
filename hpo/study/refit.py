"""`hpo refit`: the best trials of a study trained again, with new seeds and epochs, as a study of its own.

    hpo refit combined --top 4 --seeds 1,2 --epochs 150 --tta -o refit.yaml
    hpo launch refit.yaml --workers-per-gpu 8       # every refit a trial, logged like any other
    hpo promote combined-refit --model xray-cluster-mass --tta

A study's trials are the search: short, pruned, one seed each. Before a model is promoted, the
best few configurations are worth training again, longer and with other seeds, so that the
champion is not one lucky draw. A refit is a search space like any other (same data, same
base, the study's params plus `train.seed`) whose trials are all enqueued: configuration x
seed, nothing sampled, nothing pruned, every model logged. So it runs on the same workers, GPUs
and MLflow runs as the study, and `hpo promote` chooses among the refits by validation.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.config.overrides import flatten
from hpo.config.space import parse_space
from hpo.config.space import SearchSpace
from hpo.config.tree import SEED_MAX
from hpo.errors import HpoError
from hpo.study.create import stored_space


def refit_space(
    study: optuna.Study,
    space: SearchSpace,
    *,
    top: int,
    seeds: list[int],
    epochs: int | None = None,
    patience: int | None = None,
    tta: bool = False,
    name: str | None = None,
) -> SearchSpace:
    """The refit study of the `top` COMPLETE trials of `study`, each once per seed.

    Args:
        study: a study created by `hpo launch`, and `space` its stored search space.
        top: how many of the best COMPLETE trials (by value) to train again.
        seeds: train.seed of each refit.
        epochs, patience: train.epochs and train.early_stopping_patience of every refit
            (default: the study's).
        tta: score validation (and so choose the champion) with test-time augmentation.
        name: the refit study's name (default: '<study>-refit').

    Raises:
        HpoError: no COMPLETE trial, no seed, or a refit space that does not validate.
    """
    if not seeds:
        raise HpoError("refit needs at least one seed (--seeds 1,2)")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise HpoError(f"--seeds {','.join(map(str, seeds))}: seed {', '.join(map(str, repeated))} "
                       "is given twice; each seed refits every configuration once, so give each once")
    outside = [s for s in seeds if not 0 <= s <= SEED_MAX]
    if outside:
        raise HpoError(f"--seeds: {outside[0]} is not a seed; seeds are whole numbers from 0 to {SEED_MAX}")
    done = _best_first(study)
    if not done:
        raise HpoError(f"study '{study.study_name}' has no COMPLETE trial to refit; "
                       f"run it first: hpo launch SPACE.yaml")
    raw = stored_space(space)
    base: dict[str, Any] = flatten(raw.get("base", {}))  # dotted keys: an override replaces its own
    overrides = {"train.epochs": epochs, "train.early_stopping_patience": patience,
                 "train.augment.tta": True if tta else None}
    base.update({k: v for k, v in overrides.items() if v is not None})
    params = {k: v for k, v in raw.get("params", {}).items() if k != "train.seed"}
    params["train.seed"] = {"categorical": sorted(set(seeds))}
    chosen = done[:top]
    enqueue = [{**{k: v for k, v in t.params.items() if k in params}, "train.seed": seed}
               for t in chosen for seed in seeds]
    kept = {k: v for k, v in raw["study"].items()
            if k in ("metric", "heartbeat_s", "grace_s", "max_retry")}
    refit = {
        **{k: v for k, v in raw.items() if k in ("preset", "data")},
        "study": {
            **kept,
            "name": name or f"{study.study_name}-refit",
            "sampler": {"type": "random", "seed": 0},
            "pruner": {"type": "none"},
            "n_trials": len(enqueue),
            "enqueue": enqueue,
        },
        "tracking": {"log_models": "all"},
        "base": base,
        "params": params,
    }
    source = f"refit of study '{study.study_name}'"
    return parse_space(refit, source=source)


def refit_comment(study: optuna.Study, top: int, seeds: list[int]) -> str:
    """The YAML comment heading a refit file: where it comes from, trial by trial."""
    done = _best_first(study)
    lines = [f"# Refit of study '{study.study_name}': its {min(top, len(done))} best COMPLETE trials "
             f"x seeds {', '.join(map(str, seeds))}, written by `hpo refit`.",
             "# In enqueue order (value = the study's validation metric):"]
    lines += [f"#   trial {t.number}: {t.value:.4f}" for t in done[:top]]
    return "\n".join(lines) + "\n"


def _best_first(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's COMPLETE trials, best value first."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: float(t.value))  # type: ignore[arg-type]
