"""A run's data as MLflow dataset inputs, one per split it reads: the UI's Dataset column, lineage.

    hpo train run.yaml     # Datasets: quickstart (digest) train, quickstart (digest) validation

Each input names the file (its stem), points at it (source: the file's absolute path), and has a
digest of the file's content fingerprint and the split's cluster indices, the split as its
context tag, and a profile with the split's cluster count.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput
from mlflow.entities import InputTag
from mlflow.types import Schema
from mlflow.types import TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from hpo.config.tree import RunConfig
from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source
from hpo.data.split import Split
from hpo.tracking.runs import Tracker
from hpo.training.loop import prepare

SPLITS = {"train": "train", "validation": "val", "test": "test"}  # context tag -> Split field


class ClusterSplit(MetaDataset):
    """One split of a data file: MLflow's metadata-only dataset with a profile (cluster count)."""

    def __init__(self, source: LocalArtifactDatasetSource, name: str, digest: str, schema: Schema,
                 profile: dict[str, Any]) -> None:
        self._profile = profile
        super().__init__(source=source, name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def split_dataset(ds: Dataset | H5Source, split: Split, context: str) -> ClusterSplit:
    """The `context` split (train, validation or test) of `ds` as an MLflow dataset."""
    idx = np.asarray(getattr(split, SPLITS[context]), np.int64)
    fingerprint = ds.fingerprint()
    content = f"{fingerprint['sha256']}:{context}:".encode() + idx.tobytes()
    digest = hashlib.sha256(content).hexdigest()[:16]
    h, w, c = ds.image_shape
    specs = [
        TensorSpec(np.dtype(np.float32), (-1, h, w, c), "images"),
        TensorSpec(np.dtype(np.float32), (-1,), "redshift"),
        TensorSpec(np.dtype(np.float32), (-1,), "log_mass"),
    ]
    if ds.exposure_s is not None:
        specs.append(TensorSpec(np.dtype(np.float32), (-1,), "exposure_s"))
    schema = Schema(specs)
    profile = {"clusters": len(idx), "split": context, "file_clusters": fingerprint["n"],
               "file_sha256": fingerprint["sha256"], "image_shape": [h, w, c],
               "generator": fingerprint["generator"], "seed": fingerprint["seed"]}
    path = Path(ds.path).resolve() if ds.path is not None else Path("in-memory")
    return ClusterSplit(LocalArtifactDatasetSource(str(path)), path.stem, digest, schema, profile)


def log_data_inputs(tracker: Tracker, run_id: str, cfg: RunConfig, ds: Dataset | H5Source,
                    contexts: tuple[str, ...] = ("train", "validation")) -> list[ClusterSplit]:
    """Logs the splits `cfg` makes of `ds` as dataset inputs of `run_id`; returns them."""
    _, split = prepare(cfg, ds)
    splits = [split_dataset(ds, split, c) for c in contexts]
    tracker.client.log_inputs(run_id, datasets=[
        DatasetInput(d._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, c)])
        for d, c in zip(splits, contexts, strict=True)
    ])
    return splits


def version_tags(splits: list[ClusterSplit]) -> dict[str, str]:
    """Tags tying a registered version to its run's dataset inputs: name, source, split digests."""
    source = json.loads(splits[0].source.to_json())["uri"]
    tags = {"hpo.data.name": splits[0].name, "hpo.data.source": source}
    tags.update({f"hpo.data.{d.profile['split']}_digest": d.digest for d in splits})
    return tags
