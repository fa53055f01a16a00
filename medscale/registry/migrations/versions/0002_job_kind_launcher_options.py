"""job kind, launcher options and cancel time; attempt launcher ids in one JSON column, recipe changes

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

A new launcher no longer needs a column (and a migration) of its own: its ids go into attempts.launcher_ids.
Existing SLURM and Ray ids move there.
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="train"))
        b.add_column(sa.Column("launcher_options", sa.JSON(), nullable=False, server_default="{}"))
        b.add_column(sa.Column("cancel_requested_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("attempts") as b:
        b.add_column(sa.Column("launcher_ids", sa.JSON(), nullable=False, server_default="{}"))
        b.add_column(sa.Column("recipe_changes", sa.JSON(), nullable=False, server_default="[]"))
    attempts = sa.table("attempts", sa.column("id", sa.Integer), sa.column("slurm_job_id", sa.String),
                        sa.column("ray_job_id", sa.String), sa.column("launcher_ids", sa.JSON))
    conn = op.get_bind()
    rows = conn.execute(sa.select(attempts.c.id, attempts.c.slurm_job_id, attempts.c.ray_job_id)).all()
    for row_id, slurm, ray in rows:
        ids = {k: v for k, v in (("slurm_job_id", slurm), ("ray_job_id", ray)) if v}
        if ids:
            conn.execute(attempts.update().where(attempts.c.id == row_id).values(launcher_ids=ids))
    with op.batch_alter_table("attempts") as b:
        b.drop_column("slurm_job_id")
        b.drop_column("ray_job_id")


def downgrade() -> None:
    with op.batch_alter_table("attempts") as b:
        b.add_column(sa.Column("slurm_job_id", sa.String(64), nullable=True))
        b.add_column(sa.Column("ray_job_id", sa.String(128), nullable=True))
        b.drop_column("recipe_changes")
        b.drop_column("launcher_ids")
    with op.batch_alter_table("jobs") as b:
        b.drop_column("cancel_requested_at")
        b.drop_column("launcher_options")
        b.drop_column("kind")
