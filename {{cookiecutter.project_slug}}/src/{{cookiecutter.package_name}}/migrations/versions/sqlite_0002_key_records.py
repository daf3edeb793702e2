"""Key records: revocations and last uses, by key id.

Revision ID: 0002
Revises: 0001
Created: 2026-12-07

Keyed by key id alone: ids are unique across tenants (one keys configuration), and these rows
belong to the operator, not to a tenant.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE key_revocations ("
        " key_id TEXT PRIMARY KEY,"
        " reason TEXT,"
        " revoked_by TEXT NOT NULL CHECK (revoked_by IN ('cli', 'holder')),"
        " revoked_at TEXT NOT NULL)"
    )
    op.execute("CREATE TABLE key_uses (key_id TEXT PRIMARY KEY, last_used TEXT NOT NULL)")


def downgrade() -> None:
    op.execute("DROP TABLE key_uses")
    op.execute("DROP TABLE key_revocations")
