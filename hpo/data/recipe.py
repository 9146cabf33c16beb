"""The `hpo simulate` line that makes a missing data file: its `# Data:` comment, or defaults.

    hpo launch search_spaces/dropout.yaml
    hpo: error: data file not found: data/mock.h5; make it with: hpo simulate data/mock.h5 ...
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from hpo.errors import DataContractError

# The comment every shipped search space carries: "# Data: hpo simulate data/mock.h5 --n 10000 ..."
DATA_COMMENT = re.compile(r"^#\s*Data:\s*(hpo simulate\s.*?)\s*$", re.MULTILINE)


def simulate_line(data_path: str | Path, config_file: str | Path | None = None) -> str:
    """The command that writes `data_path`: the `# Data:` line of `config_file`, pointed at
    `data_path`, or `hpo simulate`'s defaults when the file has none."""
    if config_file is not None and Path(config_file).is_file():
        found = DATA_COMMENT.search(Path(config_file).read_text(errors="replace"))
        if found:
            words = shlex.split(found.group(1))
            if len(words) > 2:
                return shlex.join([*words[:2], str(data_path), *words[3:]])
    return f"hpo simulate {shlex.quote(str(data_path))} --n 1000 --seed 0"


def require_data_file(data_path: str | Path, config_file: str | Path | None = None) -> None:
    """Raises DataContractError naming the `hpo simulate` line when `data_path` does not exist."""
    if not Path(data_path).exists():
        raise missing(data_path, config_file)


def require_calibration_file(calibration_path: str | Path | None) -> None:
    """Raises DataContractError when data.calibration_path is set and does not exist."""
    if calibration_path is not None and not Path(calibration_path).exists():
        raise DataContractError(
            f"data.calibration_path not found: {calibration_path}; simulate it with the training "
            "file's settings and another --seed (its clusters must be ones no model trains on)")


def missing(data_path: str | Path, config_file: str | Path | None = None) -> DataContractError:
    return DataContractError(
        f"data file not found: {data_path}; make it with: {simulate_line(data_path, config_file)}")
