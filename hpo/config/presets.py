"""Named presets: YAML files of overrides under hpo/presets/, applied before a file's own overrides.

    hpo train run.yaml      # with `preset: report` at the top of run.yaml
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from hpo.config.overrides import apply_overrides
from hpo.config.overrides import read_yaml
from hpo.config.tree import RunConfig
from hpo.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_config(name: Any, where: str = "config") -> RunConfig:
    """RunConfig() with the named preset applied (the plain defaults for None).

    Raises:
        ConfigError: `name` (as a file gives it: any YAML value) is not one of preset_names().
    """
    if name is None:
        return RunConfig()
    # Only a known name reaches a path: not a list, a number, a NUL byte or '../x'.
    if not isinstance(name, str) or name not in preset_names():
        raise ConfigError(
            f"{where}: unknown preset {name!r}; presets are: {', '.join(preset_names())}")
    return _preset(name)


@functools.lru_cache(maxsize=16)
def _preset(name: str) -> RunConfig:
    path = PRESET_DIR / f"{name}.yaml"
    return apply_overrides(read_yaml(path), where=str(path))


def resolve(data: dict[str, Any], where: str) -> RunConfig:
    """A config file's mapping (with an optional `preset:` key) as a validated RunConfig."""
    data = dict(data)
    preset = data.pop("preset", None)
    return apply_overrides(data, base=preset_config(preset, where), where=where)


def load_run_config(path: str | Path) -> RunConfig:
    """Reads a YAML file of overrides (nested or dotted keys, optional `preset:`) into a RunConfig."""
    path = Path(path)
    return resolve(read_yaml(path), where=str(path))
