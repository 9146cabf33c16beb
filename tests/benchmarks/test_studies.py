"""The benchmark scripts' derived spaces: the original file with dotted changes, still valid."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hpo.config.space import load_space
from hpo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from studies import derive_space  # noqa: E402


def test_derived_space_keeps_the_scan_and_changes_the_budget(tmp_path: Path) -> None:
    out = derive_space(ROOT / "search_spaces/dropout.yaml", tmp_path / "d.yaml", {
        "study.name": "dropout-cpu", "study.repeats": 1, "study.pruner": {"type": "none"},
        "data.max_clusters": 1500, "base.train.epochs": 12,
    })
    space = load_space(out)
    original = load_space(ROOT / "search_spaces/dropout.yaml")
    assert out.read_text().startswith("# search_spaces/dropout.yaml at a smaller budget")
    assert space.study.name == "dropout-cpu" and space.study.pruner.type == "none"
    assert space.resolved_base().train.epochs == 12
    assert space.resolved_base().data.max_clusters == 1500
    assert space.params == original.params
    assert space.grid_size() == original.grid_size() // original.study.repeats


def test_a_deleted_key_is_gone_and_a_bad_change_is_refused(tmp_path: Path) -> None:
    out = derive_space(ROOT / "search_spaces/combined.yaml", tmp_path / "c.yaml",
                       {"study.n_trials": None, "study.sampler": {"type": "random"}})
    with pytest.raises(ConfigError, match="n_trials is required"):
        load_space(out).budget()
    bad = derive_space(ROOT / "search_spaces/combined.yaml", tmp_path / "b.yaml",
                       {"base.train.epochs": "many"})
    with pytest.raises(ConfigError, match=r"b\.yaml.*train\.epochs"):
        load_space(bad)
