"""Data: the file contract every model trains on, and where such files come from.

    contract, lazy   a data file read and checked against the contract (in memory or streamed)
    split            the deterministic train/validation/test split
    baseline         the floors every model is judged against (oracle floor, counts baseline)
    achievable       the achievable floor: the estimator that knows the generator (on sim/'s files)
    recipe           the `hpo simulate` line that makes a missing file
    cosmology        flat LCDM distances, for the floors and the simulator
    sim/             the eROSITA-like mock generator (`hpo simulate`)
    survey/          eROSITA survey files: reading them, cutting them into a data file (`hpo
                     cutouts`), and the simulator's photons written as such files

survey/ and achievable build on sim/ (survey/'s images have the simulator's channels and
pixels; achievable replays its draws), sim/ on the other modules here; nothing else here imports
them (a layers contract in pyproject.toml).
"""

from hpo.data.contract import Dataset
from hpo.data.contract import load_dataset
from hpo.data.split import Split
from hpo.data.split import split_indices

__all__ = ["Dataset", "Split", "load_dataset", "split_indices"]
