"""Dotted-path overrides of the run config (`model.dropout.rate: 0.2`), checked against its tree.

    hpo train run.yaml          # run.yaml holds nested or dotted overrides of RunConfig
"""

from __future__ import annotations

import copy
from collections.abc import Hashable
from pathlib import Path
from typing import Any
from typing import TypeVar

import yaml
from pydantic import BaseModel
from pydantic import ValidationError

from hpo.config.tree import RunConfig
from hpo.errors import ConfigError
from hpo.errors import first_line

M = TypeVar("M", bound=BaseModel)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": leaf}; lists are leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def check_path(path: str, where: str, root: type[BaseModel] = RunConfig) -> None:
    """Raises ConfigError unless `path` names a field of the `root` config tree.

    Args:
        path: dotted path such as "model.dropout.rate".
        where: the file and section, for the message ("search_spaces/x.yaml, params").
        root: the pydantic tree the path walks (RunConfig, or the simulator's SimConfig).
    """
    node: type[BaseModel] = root
    walked: list[str] = []
    for part in path.split("."):
        fields = node.model_fields
        if part not in fields:
            here = ".".join(walked) or "the config"
            raise ConfigError(
                f"{where}: '{path}' is not a config path; {here} has: {', '.join(fields)}"
            )
        walked.append(part)
        annotation = fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            node = annotation
        elif part != path.split(".")[-1]:
            raise ConfigError(f"{where}: '{path}' goes below '{'.'.join(walked)}', which is a value")


def override_model(root: type[M], overrides: dict[str, Any], *, base: M | None = None,
                   where: str = "overrides") -> M:
    """Applies dotted or nested overrides to `base` (default root()) and validates once.

    Raises:
        ConfigError: an unknown path, or a value the tree refuses; names `where` and the key.
    """
    tree = (base or root()).model_dump(mode="python")
    for path, value in flatten(overrides).items():
        check_path(path, where, root)
        node = tree
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = copy.deepcopy(value)
    try:
        return root.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_describe(exc)}") from None


def apply_overrides(
    overrides: dict[str, Any], *, base: RunConfig | None = None, where: str = "overrides"
) -> RunConfig:
    """override_model for the run config: the one way every override reaches a RunConfig."""
    return override_model(RunConfig, overrides, base=base, where=where)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from `path`, or ConfigError naming the file (and, for a syntax error or a
    key given twice, the line and column)."""
    if not path.exists():
        raise ConfigError(f"file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a YAML file")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(exc)}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (where it keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base loader refuses it, with its own message
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"key '{key}' is given twice (lines {first[key].start_mark.line + 1} and "
                    f"{key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark)
            first[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """One line: where (line, column) and what, with the fix for the commonest slip (a tab)."""
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = " ".join(str(exc.problem or exc.context or "not valid YAML").split())
    if "'\\t'" in problem or "\t" in problem:
        problem += " (YAML indents with spaces, not tabs)"
    if not problem.startswith("key '"):
        problem = f"not valid YAML: {problem}"
    return f"{where}{problem}"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"].removeprefix("Value error, ")
        # A section's own validator gets the whole section as input; its message names the values.
        got = "" if isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"
        parts.append(f"'{loc}': {msg}{got}")
    return "; ".join(parts)
