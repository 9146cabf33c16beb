"""benchmarks/gpu_study.py at a toy budget: a journal-backed study, final trainings, one JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_signal_data
from tests.conftest import write_h5

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from studies import derive_space  # noqa: E402


def test_study_finals_and_champion_come_back_in_one_json(tmp_path: Path) -> None:
    # Rule: the GPU script runs the space's study to its trial budget, trains the best
    # configurations again (once per seed), scores test and transfer files with and without TTA,
    # keeps the view with the lower validation rmse, and names as champion the final with the
    # lowest validation rmse; every trial it records has finished.
    data = write_h5(tmp_path / "d.h5", make_signal_data(300))
    other = write_h5(tmp_path / "o.h5", make_signal_data(200, seed=1))
    space = derive_space(ROOT / "search_spaces/combined.yaml", tmp_path / "s.yaml", {
        "study.name": "gpu-toy", "study.n_trials": 3, "data.path": str(data),
        "study.sampler.options.n_startup_trials": 2, "study.pruner": {"type": "none"},
        "base.train.epochs": 2, "base.train.loss.type": "gaussian_nll",
        "params": {"train.optimizer.learning_rate": {"float": [1e-3, 3e-3], "log": True},
                   "train.batch_size": {"categorical": [32, 64]}},
    })
    out = tmp_path / "gpu.json"
    env = {**os.environ, "HPO_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_study.py"), str(space), "--workers", "1",
         "--study-s", "240", "--finalists", "2", "--final-seeds", "0,1", "--final-epochs", "3", "--final-s", "240",
         "--work", str(tmp_path / "w"), "--out", str(out), "--transfer", f"other={other}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [t["state"] for t in result["trials"]] == ["COMPLETE"] * 3
    assert all(t["epochs"] == 2 and t["config"]["train"]["epochs"] == 2 and not t["time_boxed"]
               for t in result["trials"])
    finals = result["finals"]
    best_two = sorted(result["trials"], key=lambda t: t["value"])[:2]
    assert sorted((f["trial"], f["seed"]) for f in finals) == sorted(
        (t["number"], seed) for t in best_two for seed in (0, 1))
    for f in finals:
        assert f["epochs_run"] == 3 and 0 < f["val"]["rmse"] < 2
        assert f["n_test"] == 30 and 0 <= f["test"]["coverage68"] <= 1
        assert [t["preset"] for t in f["transfer"]] == ["other"] and f["transfer"][0]["n"] == 200
        plain, tta = f["views"]["plain"], f["views"]["tta"]
        assert plain["test"] != tta["test"]  # the 8-view mean is a different prediction
        kept = tta if f["tta"] else plain
        assert kept["val"]["rmse"] == min(plain["val"]["rmse"], tta["val"]["rmse"])
        assert (f["val"], f["test"], f["transfer"]) == (kept["val"], kept["test"], kept["transfer"])
    rmse_by_trial: dict[int, list[float]] = {f["trial"]: [] for f in finals}
    for f in finals:
        rmse_by_trial[f["trial"]].append(f["views"]["plain"]["val"]["rmse"])
    assert all(a != b for a, b in rmse_by_trial.values())  # the seed reached the training
    assert result["champion"] == min(finals, key=lambda f: f["val"]["rmse"])

    # Rule: a resumed study can try a new value at its best point first (an enqueued trial).
    best = best_two[0]
    other_batch = 64 if best["params"]["train.batch_size"] == 32 else 32
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_study.py"), str(space), "--workers", "1",
         "--study-s", "240", "--enqueue-best", "1", "--with", f"train.batch_size={other_batch}",
         "--finalists", "1", "--final-epochs", "1", "--final-s", "240",
         "--work", str(tmp_path / "w"), "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads(out.read_text())["trials"]
    assert len(resumed) == 4 and resumed[3]["state"] == "COMPLETE"
    assert resumed[3]["enqueued_from"] == best["number"]
    assert resumed[3]["params"] == {**best["params"], "train.batch_size": other_batch}
    assert resumed[3]["config"]["train"]["batch_size"] == other_batch
