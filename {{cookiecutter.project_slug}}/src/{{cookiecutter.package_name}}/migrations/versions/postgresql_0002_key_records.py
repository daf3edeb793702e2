"""Key records: revocations and last uses, by key id.

Revision ID: 0002
Revises: 0001
Created: 2026-12-07

Keyed by key id alone: ids are unique across tenants (one keys configuration), and these rows
belong to the operator, not to a tenant, so no row-level security applies (and no ``tenant``
column, which would put them under the forced policy that items have): every worker reads every
revocation whichever tenant its request serves, no route shows them to a tenant, and the
service writes a revocation only for the key a request presented.

No GRANT here: the owner's default privileges (docs/operations.md, "Roles") give the service's role
SELECT, INSERT, UPDATE and DELETE on both tables, which the start check requires.
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
        " key_id text PRIMARY KEY,"
        " reason text,"
        " revoked_by text NOT NULL CHECK (revoked_by IN ('cli', 'holder')),"
        " revoked_at timestamptz NOT NULL)"
    )
    op.execute("CREATE TABLE key_uses (key_id text PRIMARY KEY, last_used timestamptz NOT NULL)")


def downgrade() -> None:
    op.execute("DROP TABLE key_uses")
    op.execute("DROP TABLE key_revocations")
