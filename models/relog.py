"""Writes a shipped model folder again from its own weights with today's inference module, after
checking on the held-out test split that it predicts what the folder it replaces predicts.

    .venv/bin/hpo simulate /tmp/erass8_10k.h5 --n 10000 --seed 0 --preset eRASS:8
    .venv/bin/python models/relog.py models/xray-cluster-mass /tmp/erass8_10k.h5 \
        --sha256 535e4046945a61d6 --run-id e2627e62530f43e58e428be6c4634a2e --version 1

The data file must be the one the model was trained on (its fingerprint, `hpo.data_sha256` on the
registered version, is checked), so that the split gives the same test clusters and the training
ranges the model records are those of its training clusters. The folder is replaced only when the
new one predicts every test cluster within 1e-6 dex and 1e-6 in sigma of the old one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from hpo.config import apply_overrides
from hpo.data.contract import same_data
from hpo.data.lazy import open_dataset
from hpo.inference import CODE_NAME
from hpo.inference.layers import load_network
from hpo.model.metrics import residual_metrics
from hpo.registry import models
from hpo.tracking.logged_model import INFERENCE
from hpo.tracking.logged_model import model_metadata
from hpo.tracking.logged_model import save_model_dir
from hpo.tracking.trial_artifacts import training_ranges
from hpo.training.loop import prepare

TOLERANCE = 1e-6


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("folder", type=Path)
    cli.add_argument("data", type=Path, help="the model's training file")
    cli.add_argument("--sha256", required=True, help="the data fingerprint recorded on the model")
    cli.add_argument("--run-id", required=True, help="the MLflow run that trained the model")
    cli.add_argument("--version", required=True, help="its version of the registered model")
    cli.add_argument("--split", default="0.1,0.1,0", help="val_fraction,test_fraction,split_seed")
    args = cli.parse_args()

    val, test_fraction, seed = args.split.split(",")
    cfg = apply_overrides({"data.path": str(args.data), "data.val_fraction": float(val),
                           "data.test_fraction": float(test_fraction), "data.split_seed": int(seed)})
    dataset = open_dataset(args.data)
    if not same_data(args.sha256, dataset.fingerprint()):
        sys.exit(f"{args.data}: not the model's training file (fingerprint "
                 f"{dataset.fingerprint()['sha256']}, the model's {args.sha256})")
    dataset, split = prepare(cfg, dataset)
    test = dataset.subset(split.test)

    old = models.load(str(args.folder))
    network = load_network(args.folder / "artifacts" / "model.keras")
    metadata = model_metadata(network, training_ranges(dataset, split.train))
    metadata["source"] = {"registered_model": old.metadata.metadata.get("name", args.folder.name)
                          if old.metadata.metadata else args.folder.name,
                          "version": args.version, "run_id": args.run_id,
                          "data_sha256": args.sha256, "relogged_from": "its own model.keras"}
    example = {"images": test.images[:2], "redshift": test.redshift[:2]}
    new_dir = args.folder.with_name(f".{args.folder.name}.new")
    shutil.rmtree(new_dir, ignore_errors=True)
    save_model_dir(network, new_dir, example, metadata)
    new = models.load(str(new_dir))

    report = {"test_clusters": len(test)}
    for tta in (False, True):
        a = models.predict_arrays(old, test.images, test.redshift, tta=tta)
        b = models.predict_arrays(new, test.images, test.redshift, tta=tta)
        name = "tta" if tta else "plain"
        report[f"{name}_max_abs_diff"] = max(float(np.max(np.abs(a[0] - b[0]))),
                                             float(np.max(np.abs(a[1] - b[1]))))
        report[f"{name}_test"] = {k: round(float(v), 6) for k, v in
                                  residual_metrics(b[0], test.log_mass, b[1]).items()}
    print(json.dumps(report, indent=1))
    if max(report["plain_max_abs_diff"], report["tta_max_abs_diff"]) > TOLERANCE:
        shutil.rmtree(new_dir)
        sys.exit(f"the new folder predicts differently (beyond {TOLERANCE}); {args.folder} kept")
    # Registry bookkeeping of the pull it came from, kept beside the model.
    meta = args.folder / "registered_model_meta"
    if meta.exists():
        shutil.copy2(meta, new_dir / meta.name)
    old_dir = args.folder.with_name(f".{args.folder.name}.old")
    args.folder.rename(old_dir)
    new_dir.rename(args.folder)
    shutil.rmtree(old_dir)
    link_code(args.folder)
    return 0


def link_code(folder: Path) -> None:
    """Replaces the folder's copy of hpo/inference (and its entry file) by relative links to the
    package: a model shipped in the repository runs the package's code, and holds no second copy."""
    for copy, source in ((folder / "code" / CODE_NAME, INFERENCE), (folder / "entry.py", INFERENCE / "entry.py")):
        if copy.is_dir():
            shutil.rmtree(copy)
        else:
            copy.unlink()
        copy.symlink_to(os.path.relpath(source, copy.parent))


if __name__ == "__main__":
    raise SystemExit(main())
