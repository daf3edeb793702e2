"""make resource NAME=orders: a new resource shaped like items, safe from its first line.

It copies the reference resource, renaming it: its blueprint (api/items.py: access declared in
one line, shapes that validate and document, a paginated list), its store (stores/items.py:
every query names the tenant), its migration (with row-level security in a PostgreSQL project)
and its tests (tests/test_items.py: scopes, tenants, 4xx answers, pages, the document). It adds
the blueprint and the store to their registries, and prints what it wrote and what to do next.

    python scripts/resource.py orders [--singular order]

A name that is not a plural identifier, or that a module or route already has, is refused with
one line, before anything is written.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import keyword
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
# Modules and routes of the service that a resource must not shadow.
REVISION_FIELDS = ("revision", "down_revision")
# Longer names would push lines of the copied code past the project's line length.
LONGEST = 20
TAKEN = frozenset({"health", "whoami", "metrics", "openapi", "pages", "connections", "keys", "stores", "api"})


class Refused(Exception):
    """Why the resource cannot be made: one line, nothing written."""


@dataclass(frozen=True)
class Names:
    """The spellings of a resource's name, for each spelling of "items"."""

    plural: str
    singular: str

    @staticmethod
    def camel(snake: str) -> str:
        return "".join(part.capitalize() for part in snake.split("_"))

    def rename(self, text: str) -> str:
        """items -> orders, Items -> Orders, item_id -> order_id, ItemStore -> OrderStore, ..."""
        replacements: list[tuple[str, str]] = [
            (r"(?<![A-Za-z])items(?![a-z])", self.plural),
            (r"(?<![A-Za-z])item(?![a-z])", self.singular),
            (r"Items(?![a-z])", self.camel(self.plural)),
            (r"Item(?![a-z])", self.camel(self.singular)),
            (r"ITEMS(?![A-Z])", self.plural.upper()),
            (r"ITEM(?![A-Z])", self.singular.upper()),
        ]
        for pattern, replacement in replacements:
            text = re.sub(pattern, replacement, text)
        return text


def singular_of(plural: str) -> str:
    if plural.endswith("ies") and len(plural) > 3:
        return plural[:-3] + "y"
    if plural.endswith("s") and not plural.endswith("ss"):
        return plural[:-1]
    raise Refused(
        f"'{plural}' does not end in 's': give its singular (make resource NAME={plural} SINGULAR=...)"
    )


def spelled(name: str) -> str:
    if not NAME.fullmatch(name) or len(name) > LONGEST:
        raise Refused(f"'{name}' must be {LONGEST} lowercase letters, digits or single underscores at most")
    if keyword.iskeyword(name) or name in sys.stdlib_module_names:
        raise Refused(f"'{name}' is a Python keyword or module: choose another name")
    return name


def names_of(plural: str, singular: str | None) -> Names:
    spelled(plural)
    return Names(plural, spelled(singular or singular_of(plural)))


def check(names: Names, package: Path) -> None:
    if names.plural == names.singular:
        raise Refused(f"'{names.plural}' and its singular must differ")
    if names.plural in TAKEN or names.singular in TAKEN:
        raise Refused(f"'{names.plural}' is taken by a module of the service: choose another name")
    for path in targets(names, package).values():
        if path.exists():
            raise Refused(f"{path.relative_to(ROOT)} exists already: choose another name")


def targets(names: Names, package: Path) -> dict[str, Path]:
    return {
        "api": package / "api" / f"{names.plural}.py",
        "store": package / "stores" / f"{names.plural}.py",
        "tests": ROOT / "tests" / f"test_{names.plural}.py",
    }


def package_dir() -> Path:
    (found,) = [path.parent.parent for path in (ROOT / "src").glob("*/keys/__init__.py")]
    return found


def migration(names: Names, package: Path) -> tuple[Path, str]:
    """The reference migration renamed, with the next revision after the head."""
    versions = package / "migrations" / "versions"
    (reference,) = versions.glob("*_0001_items.py")
    heads = set(revisions(versions)) - {down for down in revisions(versions).values() if down}
    if len(heads) != 1:
        raise Refused(f"the migrations have {len(heads)} heads: merge them first (alembic merge heads)")
    (head,) = heads
    number = f"{int(head) + 1:04d}" if head.isdigit() else dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    prefix = reference.name.split("_0001_")[0]
    text = names.rename(reference.read_text(encoding="utf-8"))
    text = text.replace('revision: str = "0001"', f'revision: str = "{number}"')
    text = text.replace("down_revision: str | None = None", f'down_revision: str | None = "{head}"')
    text = text.replace("Revision ID: 0001", f"Revision ID: {number}")
    text = re.sub(r"Revises:\s*\n", f"Revises: {head}\n", text, count=1)
    text = re.sub(r"Created: .*", f"Created: {dt.date.today().isoformat()}", text, count=1)
    return versions / f"{prefix}_{number}_{names.plural}.py", text


def revisions(versions: Path) -> dict[str, str | None]:
    """Each migration's revision and the one it revises, read from the files."""
    found: dict[str, str | None] = {}
    for path in versions.glob("*.py"):
        module = ast.parse(path.read_text(encoding="utf-8"))
        try:
            revision, down = (ast.literal_eval(literal(module, field)) for field in REVISION_FIELDS)
        except Refused:
            continue  # not a migration
        found[revision] = down
    return found


def literal(module: ast.Module, name: str) -> ast.expr:
    """The value assigned to ``name`` at the top of a module (``NAME = ...`` or ``NAME: T = ...``)."""
    for node in module.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id == name and node.value is not None:
                return node.value
        elif isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            return node.value
    raise Refused(f"no {name} = ... found to add the resource to")


def with_element(path: Path, name: str, element: str) -> str:
    """The text of ``path`` with ``element`` as the last element of the tuple or dict ``name``."""
    source = path.read_text(encoding="utf-8")
    end = literal(ast.parse(source), name).end_lineno
    assert end is not None
    lines = source.splitlines(keepends=True)
    closing = lines[end - 1]
    lines.insert(end - 1, " " * (len(closing) - len(closing.lstrip()) + 4) + element + "\n")
    return "".join(lines)


def registrations(names: Names, package: Path) -> dict[Path, str]:
    """The two registries, each with the new resource's line."""
    api = package / "api" / "__init__.py"
    api_text = with_element(api, "BLUEPRINTS", f"{names.plural}.blueprint,")
    api_text = api_text.replace("from . import ", f"from . import {names.plural}, ", 1)
    stores = package / "stores" / "__init__.py"
    store_class = f"{Names.camel(names.singular)}Store"
    stores_text = with_element(stores, "RESOURCES", f'"{names.plural}": {store_class},')
    new_import = f"from .{names.plural} import {store_class}\n"
    stores_text = stores_text.replace("from .items import ", f"{new_import}from .items import ", 1)
    return {api: api_text, stores: stores_text}


def tidy(paths: list[Path]) -> None:
    """Sort the imports and format what was written, with the project's own ruff (a dev tool:
    without it, `make lint` says what to change)."""
    names = [str(path) for path in paths]
    for command in (["check", "--fix", "--select", "I", "--quiet"], ["format", "--quiet"]):
        subprocess.run([sys.executable, "-m", "ruff", *command, *names], cwd=ROOT, check=False)  # noqa: S603


def plan(names: Names) -> dict[Path, str]:
    """Every file to write, and its text."""
    package = package_dir()
    check(names, package)
    files = {
        path: names.rename(source.read_text(encoding="utf-8"))
        for path, source in zip(
            targets(names, package).values(),
            (package / "api" / "items.py", package / "stores" / "items.py", ROOT / "tests" / "test_items.py"),
            strict=True,
        )
    }
    path, text = migration(names, package)
    files[path] = text
    files.update(registrations(names, package))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make resource", description="Add a resource shaped like items.")
    parser.add_argument("name", help="the resource's name, plural: orders, invoices, line_items")
    parser.add_argument("--singular", help="its singular, when dropping the final s is wrong")
    args = parser.parse_args(argv)
    try:
        names = names_of(args.name, args.singular)
        files = plan(names)
    except Refused as refused:
        print(f"error: NAME: {refused}", file=sys.stderr)
        return 2
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
        print(f"{'edited' if path.name == '__init__.py' else 'wrote '} {path.relative_to(ROOT)}")
    tidy(list(files))
    scopes = f"{names.plural}:read {names.plural}:write"
    print(
        f"""
Next:
  1. Give the fields of {names.plural} in api/{names.plural}.py (the shape New{Names.camel(names.singular)}),
     stores/{names.plural}.py (the queries) and its migration; run `make migrate`.
  2. Give keys the scopes {scopes}: mint one (`make key KEY_ID=dev SCOPES="--scope items:read
     --scope items:write --scope {names.plural}:read --scope {names.plural}:write"`) and put its
     entry in .env's API_KEYS in place of the old one.
  3. `make test-fast`: tests/test_{names.plural}.py holds the resource to the promises items keeps.
  4. `make openapi` shows its routes in docs/openapi.json; docs/adding-a-resource.md has the rest."""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
