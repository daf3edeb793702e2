"""`make resource NAME=orders` on a fresh bake of each database: the resource it writes is safe
from its first line. The bake's whole suite with it is run by test_bake.py; here, what a new user
does next: serve it and call it, and what a careless edit of its migration costs."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import Bake, python, run_in
from .served import serve

NEW = ("make", "resource", "NAME=orders", f"PYTHON={sys.executable}")


def key(project: Path, key_id: str, tenant: str, *scopes: str) -> tuple[str, str]:
    package = next(p.parent.parent.name for p in (project / "src").glob("*/keys/__init__.py"))
    command = ["-m", f"{package}.keys", "new", "--id", key_id, "--tenant", tenant, "--json"]
    command += [part for scope in scopes for part in ("--scope", scope)]
    minted = json.loads(run_in(project, *python(*command), env={"PYTHONPATH": str(project / "src")}))
    return str(minted["key"]), str(minted["entry"])


def call(
    port: int, context: ssl.SSLContext, secret: str | None, method: str, path: str, body: Any = None
) -> Any:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["Authorization"] = f"Bearer {secret}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"https://localhost:{port}{path}", data=data, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_a_new_resource_is_served_scoped_isolated_validated_and_paged(bake: Bake, tmp_path: Path) -> None:
    project = bake()
    output = run_in(project, *NEW)
    assert "wrote  src/acme_widgets_api/api/orders.py" in output
    assert "orders:read orders:write" in output
    writer, writer_entry = key(project, "writer", "acme", "orders:read", "orders:write")
    reader, reader_entry = key(project, "reader", "acme", "orders:read")
    other, other_entry = key(project, "other", "globex", "orders:read", "orders:write")
    items_only, items_entry = key(project, "items-only", "acme", "items:read", "items:write")
    entries = ",".join((writer_entry, reader_entry, other_entry, items_entry))
    for port in serve(
        project, tmp_path, entries, OPENAPI_ENABLED="true", RATELIMIT_DEFAULT="1000 per minute"
    ):
        context = ssl.create_default_context(cafile=str(tmp_path / "localhost.pem"))
        status, order = call(port, context, writer, "POST", "/v1/orders", {"name": "first"})
        assert status == 201
        assert call(port, context, reader, "GET", f"/v1/orders/{order['id']}") == (200, order)
        assert call(port, context, other, "GET", f"/v1/orders/{order['id']}")[0] == 404
        assert call(port, context, reader, "POST", "/v1/orders", {"name": "x"})[0] == 403
        assert call(port, context, items_only, "GET", "/v1/orders")[0] == 403
        assert call(port, context, None, "GET", "/v1/orders")[0] == 401
        status, problem = call(port, context, writer, "POST", "/v1/orders", {"name": 7})
        assert (status, problem["errors"][0]["pointer"]) == (422, "#/name")
        # 29 made, and the 422 counted: the 30 a minute the route allows one key (the bake's own
        # suite pages 105 rows, made through the store).
        for n in range(28):
            assert call(port, context, writer, "POST", "/v1/orders", {"name": f"order {n}"})[0] == 201
        seen, cursor = [], ""
        while True:
            status, page = call(port, context, reader, "GET", f"/v1/orders?limit=7{cursor}")
            assert status == 200
            seen += [entry["id"] for entry in page["orders"]]
            if page["next"] is None:
                break
            cursor = f"&cursor={page['next']}"
        assert len(seen) == len(set(seen)) == 29
        _, document = call(port, context, None, "GET", "/openapi.json")
        assert {"/v1/orders", "/v1/orders/{order_id}"} <= set(document["paths"])


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_bad_or_taken_name_is_refused_with_one_line_and_nothing_written(bake: Bake, database: str) -> None:
    project = bake(database=database)
    before = sorted(str(p) for p in project.rglob("*"))
    for name in ("Orders", "items", "metrics", "order-lines", "class", "x" * 30 + "s"):
        result = subprocess.run(
            ["make", "-s", "resource", f"NAME={name}", f"PYTHON={sys.executable}"],
            cwd=project,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ},
        )
        assert result.returncode != 0, name
        (line,) = [text for text in result.stderr.splitlines() if text.startswith("error:")]
        assert line.startswith("error: NAME: "), line
    assert sorted(str(p) for p in project.rglob("*")) == before


def test_a_postgresql_migration_without_row_level_security_fails_the_fast_suite(bake: Bake) -> None:
    project = bake(database="postgresql")
    run_in(project, *NEW)
    (migration,) = project.glob("src/*/migrations/versions/postgresql_*_orders.py")
    text = migration.read_text()
    careless = "\n".join(line for line in text.splitlines() if "ROW LEVEL SECURITY" not in line)
    assert careless != text
    migration.write_text(careless)
    check = python("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_row_level_security.py")
    result = subprocess.run(
        check,
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "REQUIRE_POSTGRES": "1"},
    )
    assert result.returncode == 1, result.stdout[-3000:]
    assert "orders" in result.stdout
