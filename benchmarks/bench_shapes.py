"""How often a worker asking N trials at once from a TPE study gets trials that can fuse.

    .venv/bin/python benchmarks/bench_shapes.py [--space search_spaces/combined.yaml] [--seeds 3]

A worker of a fused study (hpo/training/fused.py) would ask N trials of the study, train those
of one fusion key (hpo/training/fusion.py) as one program and tell all N. This replays that
protocol without training: the space's own sampler (combined.yaml: multivariate TPE, 15 random
start-up trials) asks N trials, each becomes its run config as a worker makes it, and all N are
told a synthetic value (the distance of the point from the combined study's champion,
benchmarks/gpu/champion.yaml, plus noise: TPE then concentrates as it does on a real study),
until the study's n_trials. Per N: the share of trials whose window of N held another trial of
their key (they could fuse), and trials per program (trials / programs, 1 = no fusion), for the
fusion key itself (over all trials and over the second half: TPE past its start-up), for the
variable shapes alone (if every other setting were made a per-member array), and for those shapes
with the conv filters and kernels padded to the largest and masked (what padding could at best
fuse).
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import yaml

from emit import emit

from hpo.config.space import load_space
from hpo.engines.suggest import suggest_overrides
from hpo.study.samplers import make_sampler
from hpo.training.fusion import fusion_key
from hpo.training.fusion import shape_key

HERE = Path(__file__).resolve().parent
WINDOWS = (1, 2, 4, 8)


def fake_value(point: dict, champion: dict, space, rng: np.random.Generator) -> float:
    """0.15 at the champion, 0.02 more per categorical unlike it and per log-range of distance."""
    value = 0.15
    for path, dist in space.params.items():
        ours, best = point[path], champion.get(path)
        if best is None:
            continue
        if dist.categorical is not None:
            value += 0.02 * (ours != best)
        else:
            lo, hi = dist.int_ or dist.float_
            scale = math.log(hi / lo) if dist.log else hi - lo
            dx = math.log(ours / best) if dist.log else ours - best
            value += 0.02 * abs(dx) / scale
    return value + float(rng.normal(0, 0.005))


def padded_key(cfg) -> str:
    """The shape key with conv filters and kernels padded to the space's largest (masked): what
    remains are the dense layers, batch norm and the sigma head."""
    m = cfg.model
    return repr((len(m.conv_blocks), [len(b) for b in m.conv_blocks], m.dense, m.batch_norm,
                 cfg.train.loss.type))


def replay(space, champion: dict, window: int, seed: int) -> list[tuple]:
    """(window index, fusion key, shape key, padded shape key) of each trial of one replayed
    study."""
    space.study.sampler.seed = seed
    study = optuna.create_study(sampler=make_sampler(space), direction="minimize")
    rng = np.random.default_rng(seed)
    base = space.resolved_base()
    rows: list[tuple] = []
    n = space.study.n_trials or 100
    w = 0
    while len(rows) < n:
        # Optuna samples at suggest time: every trial of the window is drawn before any is told.
        asked = [study.ask() for _ in range(min(window, n - len(rows)))]
        points = [suggest_overrides(trial, space) for trial in asked]
        for trial, point in zip(asked, points, strict=True):
            cfg = space.config_for(point, where=f"trial {trial.number}", base=base)
            rows.append((w, fusion_key(cfg), shape_key(cfg), padded_key(cfg)))
        for trial, point in zip(asked, points, strict=True):
            study.tell(trial, fake_value(point, champion, space, rng))
        w += 1
    return rows


def shares(rows: list[tuple], which: int) -> tuple[float, float]:
    """(share of trials with a partner in their window, trials per program)."""
    groups = Counter((r[0], r[which]) for r in rows)
    partnered = sum(c for c in groups.values() if c > 1)
    return partnered / len(rows), len(rows) / len(groups)


def main() -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=HERE.parent / "search_spaces" / "combined.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(args.space)
    champion = yaml.safe_load((HERE / "gpu" / "champion.yaml").read_text())
    table = [f"Trials that could fuse when a worker asks N at once: {args.space.name}'s sampler "
             f"({space.study.sampler.type}, {space.study.n_trials} trials, a synthetic objective "
             f"around the champion), {args.seeds} seeds, mean:", "",
             "| N | fusion key: trials with a partner | trials per program "
             "| second half: with a partner | shapes alone: with a partner | trials per program "
             "| filters and kernels padded: with a partner | trials per program "
             "| distinct fusion keys in the study | distinct shapes |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for window in WINDOWS:
        stats = []
        for seed in range(args.seeds):
            rows = replay(space, champion, window, seed)
            half = rows[len(rows) // 2 :]
            fk, fk_per = shares(rows, 1)
            fk_late, _ = shares(half, 1)
            sk, sk_per = shares(rows, 2)
            pk, pk_per = shares(rows, 3)
            stats.append((fk, fk_per, fk_late, sk, sk_per, pk, pk_per, len({r[1] for r in rows}),
                          len({r[2] for r in rows})))
        m = [statistics.mean(col) for col in zip(*stats)]
        table.append(f"| {window} | {m[0]:.0%} | {m[1]:.2f} | {m[2]:.0%} | {m[3]:.0%} | {m[4]:.2f} "
                     f"| {m[5]:.0%} | {m[6]:.2f} | {m[7]:.0f} | {m[8]:.0f} |")
        print(table[-1], flush=True)
    text = "\n".join(table)
    if args.no_save:
        print(text)
        return text
    return emit("shapes", text)


if __name__ == "__main__":
    main()
