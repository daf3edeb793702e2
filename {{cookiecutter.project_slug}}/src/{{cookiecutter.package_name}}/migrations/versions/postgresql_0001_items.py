"""Items, by tenant, behind row-level security.

Revision ID: 0001
Revises:
Created: 2026-12-01

Every query of the service names its tenant; the policy is the second line of defence: a
query that forgets the tenant (a missed WHERE, CWE-639) still sees only the rows of the tenant
that the transaction set in ``app.tenant``, and none at all when it set none. FORCE applies
the policy to the table's owner too (the role that runs these migrations), should it ever serve.

No GRANT here: the owner's default privileges (README, "Roles") give the service's role
SELECT, INSERT, UPDATE and DELETE on every table a migration creates, and nothing more.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE items ("
        " id text PRIMARY KEY,"
        " tenant text NOT NULL CHECK (tenant <> ''),"
        " name text NOT NULL,"
        " created_at timestamptz NOT NULL)"
    )
    op.execute("CREATE INDEX items_by_tenant ON items (tenant, created_at, id)")
    op.execute("ALTER TABLE items ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE items FORCE ROW LEVEL SECURITY")
    # current_setting(..., true) is NULL (or '' once a transaction has ended) without a
    # tenant: no row matches, none can be written.
    op.execute(
        "CREATE POLICY items_of_the_current_tenant ON items"
        " USING (tenant = current_setting('app.tenant', true))"
        " WITH CHECK (tenant = current_setting('app.tenant', true))"
    )


def downgrade() -> None:
    op.execute("DROP TABLE items")
