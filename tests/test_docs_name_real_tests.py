"""The docs name tests that exist: every `folder/test_x.py::test_y` in docs/ is a test of tests/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMED = re.compile(r"`(?:tests/)?((?:[\w]+/)*test_\w+\.py)::(test_\w+)")


def test_every_test_the_docs_name_exists():
    # Rule: a reliability row (or any page) that names a test names one that runs: a moved or
    # renamed test fails here instead of leaving a dangling reference.
    missing = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for path, name in NAMED.findall(page.read_text()):
            found = [p for p in (ROOT / "tests").rglob(Path(path).name) if p.as_posix().endswith(path)]
            if not any(re.search(rf"^(?:async )?def {name}\b", p.read_text(), re.M) for p in found):
                missing.append(f"{page.name}: {path}::{name}")
    assert not missing, missing
