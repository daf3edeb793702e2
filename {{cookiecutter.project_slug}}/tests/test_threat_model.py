"""docs/threat-model.md stays true: every file, definition and test that it names exists.

A threat model that names a function someone renamed, or a test someone deleted, tells a
reviewer that a control is proved when it no longer is. This test reads the table and checks
each reference: files exist, ``path::name`` definitions exist in them (read with ``ast``,
nothing is imported), and every named test is collected by pytest itself.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "threat-model.md"

CODE_SPAN = re.compile(r"`([^`]+)`")
ROW_ID = re.compile(r"T\d{2}")
REFERENCE = re.compile(r"[\w./-]+(::[\w.-]+)?")
NODE_ID = re.compile(r"tests/[\w/]+\.py(::\w+)+(\[.*\])?")
# The CWE tables of the write-ups this model starts from, and the OWASP API Security Top 10
# 2023: each must be a row of the model or be ruled out with a reason.
AUTHENTICATION_CWES = (287, 306, 307, 308, 309, 347, 384, 521, 613, 640)
ENCRYPTION_CWES = (319, 295, 326, 327, 328, 330, 338, 693, 757, 261)
SEED_CWES = [f"CWE-{number}" for number in (*AUTHENTICATION_CWES, *ENCRYPTION_CWES)]
OWASP_API_2023 = [f"API{number}:2023" for number in range(1, 11)]


@dataclass(frozen=True)
class Row:
    ident: str
    threat: str
    code: tuple[str, ...]
    tests: tuple[str, ...]


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def tables(text: str) -> Iterator[list[list[str]]]:
    """Every Markdown table: its header row, then its body rows (the separator is dropped)."""
    table: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("|"):
            row = cells(line)
            if not all(cell and set(cell) <= set("-: ") for cell in row):
                table.append(row)
        elif table:
            yield table
            table = []


def table_with(column: str, text: str) -> tuple[list[str], list[list[str]]]:
    for header, *body in tables(text):
        names = [name.lower() for name in header]
        if column in names:
            return names, body
    raise AssertionError(f"{DOC.name} has no table with a {column!r} column")


def threat_rows(text: str) -> list[Row]:
    header, body = table_with("proved by", text)
    where = {name: header.index(name) for name in ("id", "threat", "implemented in", "proved by")}
    return [
        Row(
            ident=row[where["id"]],
            threat=row[where["threat"]],
            code=tuple(CODE_SPAN.findall(row[where["implemented in"]])),
            tests=tuple(CODE_SPAN.findall(row[where["proved by"]])),
        )
        for row in body
    ]


def ruled_out(text: str) -> list[list[str]]:
    return table_with("why it does not apply", text)[1]


TEXT = DOC.read_text(encoding="utf-8")
ROWS = threat_rows(TEXT)


def statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of a scope, looking inside ``if``/``try``/``with`` blocks, which do not
    open a scope of their own."""
    for node in body:
        yield node
        if isinstance(node, ast.If | ast.With | ast.Try):
            handlers = [h.body for h in node.handlers] if isinstance(node, ast.Try) else []
            for block in (node.body, getattr(node, "orelse", []), getattr(node, "finalbody", []), *handlers):
                yield from statements(block)


def defined_names(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {target.id for target in node.targets if isinstance(target, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def defines(source: str, qualified_name: str) -> bool:
    """True when ``qualified_name`` (``f``, ``Class``, ``Class.method``, ``CONSTANT``) is defined."""
    scope: list[ast.stmt] = ast.parse(source).body
    for part in qualified_name.split("."):
        found = next((node for node in statements(scope) if part in defined_names(node)), None)
        if found is None:
            return False
        scope = getattr(found, "body", [])
    return True


def missing_code(reference: str) -> str | None:
    """Why ``reference`` does not resolve, or None when it does."""
    if not REFERENCE.fullmatch(reference):
        return f"{reference}: not a path or path::name"
    path_text, _, name = reference.partition("::")
    path = (ROOT / path_text).resolve()
    if not path.is_relative_to(ROOT) or not path.is_file():
        return f"{reference}: no such file"
    text = path.read_text(encoding="utf-8")
    if not name:
        return None
    # A file that is not Python (a YAML hook list) only has to mention the name.
    found = defines(text, name) if path.suffix == ".py" else name in text
    return None if found else f"{reference}: {name} is not defined in {path_text}"


@pytest.fixture(scope="module")
def collected() -> frozenset[str]:
    """Node ids that pytest itself collects in this project, with and without parameters.

    One subprocess, so the answer is the same whichever tests this run selected; without
    PYTEST_ADDOPTS, so no -k or -m of the caller's can hide a test.
    """
    env = {name: value for name, value in os.environ.items() if name != "PYTEST_ADDOPTS"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"pytest could not collect the suite:\n{result.stdout}{result.stderr}"
    ids = {line.strip() for line in result.stdout.splitlines() if NODE_ID.fullmatch(line.strip())}
    return frozenset(ids | {node_id.split("[", 1)[0] for node_id in ids})


def test_the_model_has_rows_with_ids_code_and_tests() -> None:
    assert len(ROWS) >= 15, f"{DOC.name}: expected a row per threat, found {len(ROWS)}"
    idents = [row.ident for row in ROWS]
    assert all(ROW_ID.fullmatch(ident) for ident in idents), idents
    assert len(set(idents)) == len(idents), f"duplicate row ids: {idents}"
    for row in ROWS:
        assert re.search(r"CWE-\d+|API\d+:2023", row.threat), f"{row.ident} names no CWE or OWASP item"
        assert row.code, f"{row.ident} names no code that implements its control"
        assert row.tests, f"{row.ident} names no test that proves its control"


@pytest.mark.parametrize("row", ROWS, ids=[row.ident for row in ROWS])
def test_every_file_and_definition_a_row_names_exists(row: Row) -> None:
    problems = [problem for problem in map(missing_code, row.code) if problem is not None]
    assert not problems, f"{row.ident} in {DOC.name} names code that does not exist: {problems}"


@pytest.mark.parametrize("row", ROWS, ids=[row.ident for row in ROWS])
def test_every_test_a_row_names_is_collected(row: Row, collected: frozenset[str]) -> None:
    missing = [node_id for node_id in row.tests if node_id not in collected]
    assert not missing, f"{row.ident} in {DOC.name} names tests that pytest does not collect: {missing}"


def test_every_seed_cwe_and_owasp_item_is_a_row_or_ruled_out() -> None:
    ruled = ruled_out(TEXT)
    assert all(len(row) == 2 and row[1] for row in ruled), "every ruled-out item needs a reason"
    covered = " ".join(row.threat for row in ROWS) + " " + " ".join(row[0] for row in ruled)
    absent = [item for item in SEED_CWES + OWASP_API_2023 if not re.search(rf"{item}(?!\d)", covered)]
    assert not absent, f"{DOC.name} neither maps nor rules out: {absent}"
