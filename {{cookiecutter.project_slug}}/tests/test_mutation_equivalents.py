"""mutation-equivalents.toml stays true: each mutant it accepts as changing nothing names a module
that make mutate mutates, a function of that module, a line that function still has, and a reason.

`make mutate` matches survivors against these entries; this checks them in the fast suite, so an
edit that removes or rewrites an accepted line is noticed without a mutation run.
"""

from __future__ import annotations

import ast
import tomllib
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]
(PACKAGE,) = [path for path in (ROOT / "src").iterdir() if (path / "__init__.py").is_file()]
# Each mutated file by its module's name in the package, as mutmut names it ("keys.cli"): the
# paths that only_mutate matches and do_not_mutate does not, matched as mutmut matches them.
CORE = {
    ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): path
    for path in PACKAGE.rglob("*.py")
    if any(fnmatch(path.relative_to(ROOT).as_posix(), glob) for glob in MUTMUT["only_mutate"])
    and not any(fnmatch(path.relative_to(ROOT).as_posix(), glob) for glob in MUTMUT.get("do_not_mutate", []))
}


def function_lines(module: str, function: str) -> list[str] | None:
    """The function's lines, whitespace-normalised; ``Class.method`` for a method."""
    source = CORE[module].read_text(encoding="utf-8")
    scope: list[ast.stmt] = ast.parse(source).body
    *owners, name = function.split(".")
    for owner in owners:
        classes = [node for node in scope if isinstance(node, ast.ClassDef) and node.name == owner]
        if not classes:
            return None
        scope = classes[0].body
    for node in scope:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            segment = ast.get_source_segment(source, node) or ""
            return [" ".join(line.split()) for line in segment.splitlines()]
    return None


def test_every_accepted_equivalent_names_a_line_of_the_core_and_why_it_changes_nothing() -> None:
    entries = tomllib.loads((ROOT / "mutation-equivalents.toml").read_text(encoding="utf-8"))
    problems = []
    for entry in entries.get("equivalent", []):
        where = f"{entry.get('module')}.{entry.get('function')}"
        if entry.get("module") not in CORE:
            problems.append(f"{where}: not a module of the core ({', '.join(sorted(CORE))})")
            continue
        lines = function_lines(entry["module"], entry.get("function", ""))
        before = [" ".join(line.split()) for line in entry.get("before", "").splitlines()]
        if lines is None:
            problems.append(f"{where}: no such function")
        elif not before or not all(line in lines for line in before):
            problems.append(f"{where}: no longer has the line {entry.get('before')!r}")
        if entry.get("after", "") == entry.get("before", ""):
            problems.append(f"{where}: 'after' must be the mutated line")
        if len(entry.get("reason", "").strip()) < 20 or "..." in entry.get("reason", ""):
            problems.append(f"{where}: say why the edit changes nothing")
    assert not problems, "mutation-equivalents.toml:\n" + "\n".join(problems)
