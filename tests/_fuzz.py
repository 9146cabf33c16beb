"""Hypothesis strategies shared by the fuzz tests: junk values, mutations of a valid YAML tree and
of a file's bytes, and the property every fuzzer checks (accepted, or one HpoError line).

The profiles (how many examples) are registered in tests/conftest.py: `make test` runs a few
dozen per test, `make test-e2e` (HYPOTHESIS_PROFILE=e2e) hundreds.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from hpo.errors import HpoError

# Numbers at and past the edges: numpy's seed range, int64, float64, YAML's specials.
EDGE_INTS = [0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**63, -(2**63), 10**30, 10**400]
EDGE_FLOATS = [0.0, -0.0, 1e-320, 1e308, -1e308, float("inf"), float("-inf"), float("nan")]

# Scalars as YAML writes them, some of which safe_load reads as other types (a date, bytes, a
# set) or refuses (an unknown tag, an undefined alias, a bad flow).
RAW_YAML = [
    "2001-12-14", "2001-12-14t21:59:43.10-05:00", "!!binary aGVsbG8=", "!!set {a, b}",
    "!!python/object:os.system x", "*nowhere", "&a [1, *a]", "{", "]", "[1, 2", "yes", "~",
    "0x1F", "0o17", "1_000", ".NaN", "-.inf", "1e999", "'unterminated", "!!int x", "!!float x",
    "? [a, b]\n  : c", "|\n  block", "!custom 3", "@at", "`tick", "%TAG", "---", "...",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(EDGE_INTS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(EDGE_FLOATS),
    st.floats(),
    st.text(max_size=12),
)

junk = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), children, max_size=3),
    ),
    max_leaves=6,
)

RAW_MARK = "RAWYAML"  # a string put in the tree, replaced after dumping by raw YAML text


def _paths(node: Any, here: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into a tree of dicts and lists, the root included."""
    out = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*here, i))
    return out


def _at(tree: Any, path: tuple) -> Any:
    for part in path:
        tree = tree[part]
    return tree


@st.composite
def mutated_tree(draw: st.DrawFn, tree: dict, max_mutations: int = 4) -> Any:
    """`tree` with 1..max_mutations edits: a key dropped, renamed, added, or one of the tree's
    keys given where it does not belong; a value replaced by a junk value, by a raw YAML scalar
    (RAW_MARK, see dump_mutated) or by a sibling's, retyped or wrapped."""
    tree = copy.deepcopy(tree)
    for _ in range(draw(st.integers(1, max_mutations))):
        # Deepest last, drawn from the end (Hypothesis favours the first of a list): not the
        # root, which mutated_text replaces by random bytes.
        paths = _paths(tree)[:0:-1]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(
            ["junk", "raw", "retype", "wrap", "rename", "add", "sibling", "transplant", "drop"]))
        parent, key = _at(tree, path[:-1]), path[-1]
        value = parent[key]
        if op == "drop":
            del parent[key]
        elif op == "junk":
            parent[key] = draw(junk)
        elif op == "raw":
            parent[key] = f"{RAW_MARK}{draw(st.integers(0, len(RAW_YAML) - 1))}"
        elif op == "retype":
            parent[key] = draw(st.sampled_from([
                str(value), [value], {"x": value}, value is None, repr(value)]))
        elif op == "wrap":
            parent[key] = {key if isinstance(key, str) else "k": value}
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = parent.pop(key)
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.one_of(st.text(max_size=10), st.integers()))] = draw(junk)
        elif op == "transplant" and isinstance(parent, dict):  # a key of elsewhere, given here
            keys = sorted({str(p[-1]) for p in paths if isinstance(p[-1], str)})
            given = draw(st.one_of(junk, st.just(copy.deepcopy(value))))
            parent[draw(st.sampled_from(keys))] = given
        elif op == "sibling" and isinstance(parent, dict) and len(parent) > 1:
            other = draw(st.sampled_from([k for k in parent if k != key]))
            parent[key] = copy.deepcopy(parent[other])
    return tree


def dump_mutated(tree: Any) -> str:
    """YAML text of a mutated tree, its RAW_MARK strings replaced by raw YAML scalars."""
    import yaml

    text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, width=10_000)
    for i in reversed(range(len(RAW_YAML))):
        raw = RAW_YAML[i].replace("\n", "\n      ")
        text = text.replace(f"{RAW_MARK}{i}", raw)
    return text


@st.composite
def mutated_text(draw: st.DrawFn, text: str) -> bytes:
    """The bytes of `text` with at most one slip a hand or a disk makes: a tab for an indent, a
    line given twice (a duplicate key) or lost, the file cut short, bytes overwritten, or
    nothing but random bytes."""
    data = text.encode()
    lines = text.splitlines(keepends=True) or [""]
    op = draw(st.sampled_from(
        ["none", "none", "tab", "duplicate", "delete", "truncate", "bytes", "random", "empty"]))
    i = draw(st.integers(0, len(lines) - 1))
    if op == "tab":
        lines[i] = "\t" + lines[i].lstrip(" ")
    elif op == "duplicate":
        lines.insert(i, lines[i] if lines[i].endswith("\n") else lines[i] + "\n")
    elif op == "delete":
        del lines[i]
    if op in ("tab", "duplicate", "delete"):
        return "".join(lines).encode()
    if op == "truncate":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if op == "bytes":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if op == "random":
        return draw(st.binary(max_size=200))
    if op == "empty":
        return b""
    return data


def accepted_or_one_line(call: Callable[[], Any], *names: str) -> Any:
    """Runs `call`: it must return, or raise an HpoError whose message is one line naming one of
    `names` (the file, a key); any other exception propagates and fails the example."""
    try:
        return call()
    except HpoError as exc:
        message = str(exc)
        assert message.strip(), f"{type(exc).__name__} without a message"
        assert "\n" not in message.strip(), f"a message of several lines:\n{message}"
        assert "Traceback" not in message, message
        if names:
            assert any(n in message for n in names), f"names none of {names}: {message}"
        return exc


def cli_accepted_or_one_line(result: Any, *names: str) -> None:
    """A typer CliRunner result of an `hpo` command: exit 0, or an HpoError, which main() prints
    as one line with exit 1, that accepted_or_one_line takes (not a traceback of another type)."""
    if result.exit_code == 0:
        return
    exc = result.exception
    assert isinstance(exc, HpoError), "".join(traceback.format_exception(exc)) + result.output
    accepted_or_one_line(lambda: _raise(exc), *names)


def _raise(exc: BaseException) -> None:
    raise exc
