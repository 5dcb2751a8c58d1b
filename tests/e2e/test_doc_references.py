"""Every test the docs cite as proof of a promise exists, under the name
cited: a promise is only as good as the test named after it."""

from __future__ import annotations

import ast
import re

import pytest

from tests.support import ROOT

DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A test file relative to tests/, optionally with a test's name: as the docs
# write it, e.g. ``e2e/test_tenants.py::test_a_revoked_token_ends_its_open_stream``.
CITATION = re.compile(r"`(?:tests/)?((?:[a-z_]+/)+test_[a-z0-9_]+\.py)(?:::([a-z0-9_]+))?`")


def citations() -> list[tuple[str, str, str | None]]:
    found = []
    for doc in DOCS:
        for match in CITATION.finditer(doc.read_text()):
            found.append((doc.relative_to(ROOT).as_posix(), match[1], match[2]))
    return found


def test_the_docs_cite_tests() -> None:
    assert len(citations()) >= 10  # the pattern still matches how the docs cite


@pytest.mark.parametrize(("doc", "path", "name"), citations())
def test_a_cited_test_exists(doc: str, path: str, name: str | None) -> None:
    file = ROOT / "tests" / path
    assert file.is_file(), f"{doc} cites tests/{path}, which does not exist"
    if name is not None:
        tree = ast.parse(file.read_text())
        names = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        assert name in names, f"{doc} cites {path}::{name}, which is not a test there"
