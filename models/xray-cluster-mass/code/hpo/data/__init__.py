"""Data: the file contract, the mock generator, the split and the floors."""

from hpo.data.contract import Dataset
from hpo.data.contract import load_dataset
from hpo.data.split import Split
from hpo.data.split import split_indices

__all__ = ["Dataset", "Split", "load_dataset", "split_indices"]
