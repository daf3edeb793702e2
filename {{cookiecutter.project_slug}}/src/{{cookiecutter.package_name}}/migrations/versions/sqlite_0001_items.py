"""Items, by tenant.

Revision ID: 0001
Revises:
Created: 2026-12-01

``IF NOT EXISTS``: a file made before migrations existed already holds this table, and is
adopted as it is.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE IF NOT EXISTS items ("
        " id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, created_at TEXT NOT NULL)"
    )
    op.execute("CREATE INDEX IF NOT EXISTS items_by_tenant ON items (tenant, created_at)")


def downgrade() -> None:
    op.execute("DROP TABLE items")
