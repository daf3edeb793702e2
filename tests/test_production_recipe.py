"""The production recipe and systemd unit of each database choice name that choice only."""

from __future__ import annotations

import pytest

from .conftest import Bake

OWN = {"sqlite": ("ITEMS_DB",), "postgresql": ("DATABASE_URL_FILE", "alembic upgrade head")}


@pytest.mark.parametrize(("database", "other"), [("sqlite", "postgresql"), ("postgresql", "sqlite")])
def test_the_recipe_names_only_its_own_databases_variables(bake: Bake, database: str, other: str) -> None:
    project = bake(database=database)
    recipe = (project / "docs" / "production.md").read_text()
    for word in OWN[database]:
        assert word in recipe, word
    for word in (*OWN[other], "DATABASE_URL" if other == "postgresql" else "ITEMS_DB"):
        assert word not in recipe, word


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_only_the_sqlite_unit_may_write_a_state_directory(bake: Bake, database: str) -> None:
    project = bake(database=database, project_name="Globex Billing")
    unit = (project / "deploy" / "globex-billing.service").read_text()
    writes = "ReadWritePaths=/var/lib/globex-billing\n" in unit and "StateDirectory=globex-billing\n" in unit
    assert writes == (database == "sqlite"), unit
