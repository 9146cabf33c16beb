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
    node: type[BaseModel] | None = root
    walked: list[str] = []
    for part in path.split("."):
        if node is None:  # the part before was a value, not a section
            above = ".".join(walked)
            raise ConfigError(f"{where}: {path!r} goes below {above!r}, which is a value")
        fields = node.model_fields
        if part not in fields:
            here = ".".join(walked) or "the config"
            raise ConfigError(
                f"{where}: {path!r} is not a config path; {here} has: {', '.join(fields)}"
            )
        walked.append(part)
        annotation = fields[part].annotation
        section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        node = annotation if section else None


def override_model(root: type[M], overrides: dict[str, Any], *, base: M | None = None,
                   where: str = "overrides") -> M:
    """Applies dotted or nested overrides to `base` (default root()) and validates once.

    Raises:
        ConfigError: an unknown path, or a value the tree refuses; names `where` and the key.
    """
    tree = (base or root()).model_dump(mode="python")
    for path, value in flatten(overrides).items():
        check_path(path, where, root)
        if value == {}:  # an empty section (`model: {}`) overrides nothing
            continue
        node = tree
        *parents, leaf = path.split(".")
        for i, part in enumerate(parents):
            if not isinstance(node[part], dict):  # an earlier key set this section to a value
                section = ".".join(parents[: i + 1])
                raise ConfigError(
                    f"{where}: {path!r} goes below {section!r}, which is given as "
                    f"{node[part]!r} here; give {section!r} as a mapping of its keys"
                )
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
        cyclic = _holds_itself(data)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(exc)}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({first_line(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{path}: cannot read it ({reason})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    if cyclic:
        raise ConfigError(f"{path}: an alias (*name) refers to a node that holds it; YAML that "
                          "configures must be a tree")
    return data


def _holds_itself(node: Any, open_: set[int] | None = None, done: set[int] | None = None) -> bool:
    """Whether a recursive alias (`&a [1, *a]`) made `node` contain itself. Each shared node is
    walked once, so a document of many aliases of aliases is checked in linear time."""
    open_, done = (set() if open_ is None else open_), (set() if done is None else done)
    if not isinstance(node, (dict, list)) or id(node) in done:
        return False
    if id(node) in open_:
        return True
    open_.add(id(node))
    children = node.values() if isinstance(node, dict) else node
    if any(_holds_itself(child, open_, done) for child in children):
        return True
    open_.discard(id(node))
    done.add(id(node))
    return False


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (where it keeps the last),
    and a value its tag does not fit (`!!int x`, a 13th month) as a YAML error at its line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as exc:  # PyYAML lets these out as they are
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.tag.rsplit(':', 1)[-1]} value: {first_line(exc)}",
                node.start_mark) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base loader refuses it, with its own message
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"key {key!r} is given twice (lines {first[key].start_mark.line + 1} and "
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
    if not (problem.startswith("key ") and "is given twice" in problem):
        problem = f"not valid YAML: {problem}"
    return f"{where}{problem}"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"].removeprefix("Value error, ")
        # A section's own validator gets the whole section as input; its message names the values.
        got = "" if isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"
        parts.append(f"{loc!r}: {msg}{got}")
    return "; ".join(parts)
