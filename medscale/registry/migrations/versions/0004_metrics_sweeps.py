"""per-step metrics of a job as its run logs them; sweeps and their trials

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08

`metrics`: one row per (job, optimizer step): loss, eval loss, learning rate, gradient norm and epoch in columns
(what reports query), every other scalar the run logged at that step in `values`. `sweeps`: a sweep definition (its
YAML, the expanded grid, the base models it is ranked against); `sweep_trials`: which jobs (kind `trial`) are its
trials, with their cell of the grid and the reason when one failed outside its own record.
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("eval_loss", sa.Float(), nullable=True),
        sa.Column("learning_rate", sa.Float(), nullable=True),
        sa.Column("grad_norm", sa.Float(), nullable=True),
        sa.Column("epoch", sa.Float(), nullable=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("logged_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("job_id", "step", name="uq_metrics_job_step"),
    )
    op.create_index("ix_metrics_job_id", "metrics", ["job_id"])
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("definition_yaml", sa.Text(), nullable=False),
        sa.Column("grid", sa.JSON(), nullable=False),
        sa.Column("bases", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "sweep_trials",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sweep_id", sa.Integer(), sa.ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=False),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, unique=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("cell", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.UniqueConstraint("sweep_id", "label", name="uq_sweep_trials_sweep_label"),
    )
    op.create_index("ix_sweep_trials_sweep_id", "sweep_trials", ["sweep_id"])


def downgrade() -> None:
    op.drop_table("sweep_trials")
    op.drop_table("sweeps")
    op.drop_table("metrics")
