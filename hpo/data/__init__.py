"""Data: the file contract every model trains on, and where such files come from.

    contract, lazy   a data file read and checked against the contract (in memory or streamed)
    split            the deterministic train/validation/test split
    baseline         the floors every model is judged against (oracle floor, counts baseline)
    recipe           the `hpo simulate` line that makes a missing file
    cosmology        flat LCDM distances, for the floors and the simulator
    sim/             the eROSITA-like mock generator (`hpo simulate`)
    survey/          eROSITA survey files: reading them, cutting them into a data file (`hpo
                     cutouts`), and the simulator's photons written as such files

survey/ builds on sim/ (its images have the simulator's channels and pixels), sim/ on the
modules here; nothing here imports either (a layers contract in pyproject.toml).
"""

from hpo.data.contract import Dataset
from hpo.data.contract import load_dataset
from hpo.data.split import Split
from hpo.data.split import split_indices

__all__ = ["Dataset", "Split", "load_dataset", "split_indices"]
