"""Registry revision 0004: per-step metrics as a run logs them, sweeps and their trials; upgraded in place from a
registry written by revision 0003 (SQLite and PostgreSQL)."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, text

from medscale.jobs.client import sync_output_dir
from medscale.registry import JobSpec, MetricRow, Registry, RegistryError, SweepInfo
from test_registry import _upgrade_to, alembic_versions, attempt, head_revision, reg, spec  # noqa: F401 (reg)


def test_metrics_of_one_step_merge_train_and_eval_logs_and_a_later_attempt_replaces_them(reg):
    s = spec(kind="trial")
    reg.record_metrics(s, [MetricRow.from_log(0, {"eval_loss": 2.5, "eval_runtime": 0.3, "epoch": 0})])
    reg.record_metrics(s, [MetricRow.from_log(5, {"loss": 2.25, "learning_rate": 1e-3, "grad_norm": 0.75,
                                                  "tokens_per_s": 1234.5, "note": "text is not a metric"})])
    reg.record_metrics(s, [MetricRow.from_log(5, {"eval_loss": 2.0, "bench/mcq/acc": 0.25})])
    rows = reg.metrics(reg.find_by_key(s))
    assert [r.step for r in rows] == [0, 5] and [r.step for r in reg.metrics(reg.find_by_key(s), after_step=0)] == [5]
    assert (rows[0].eval_loss, rows[0].loss, rows[0].epoch, rows[0].values) == (2.5, None, 0.0, {"eval_runtime": 0.3})
    five = rows[1]
    assert (five.loss, five.eval_loss, five.learning_rate, five.grad_norm) == (2.25, 2.0, 1e-3, 0.75)
    assert five.values == {"tokens_per_s": 1234.5, "bench/mcq/acc": 0.25}
    # a resumed attempt trains step 5 again: its figures replace the old ones, the rest stays
    reg.record_metrics(s, [MetricRow.from_log(5, {"loss": float("nan"), "learning_rate": 9e-4})])
    five = reg.metrics(reg.find_by_key(s))[1]
    assert (five.loss, five.learning_rate, five.eval_loss) == (2.25, 9e-4, 2.0)
    assert five.values["nonfinite"] == ["loss"], "a diverged loss is named, not stored as a number"


def test_a_sweep_keeps_its_definition_grid_bases_and_trials(reg):
    grid = [{"label": "lr_0.001", "recipe": "tiny-demo", "overrides": ["train.learning_rate=0.001"]}]
    sid = reg.upsert_sweep(SweepInfo("s1", "name: s1\n", grid, [{"label": "tiny", "path": "/m/tiny"}]))
    t = spec("s1.lr_0.001", "/runs/sweeps/s1/lr_0.001", kind="trial")
    job_id = reg.add_trial(sid, t, "lr_0.001", grid[0])
    assert reg.upsert_sweep(SweepInfo("s1", "name: s1\n", grid, [])) == sid  # same name: same row, updated
    view = reg.sweep("s1")
    assert (view.id, view.grid, view.bases) == (sid, grid, [])
    (trial,) = view.trials
    assert (trial.label, trial.cell, trial.error, trial.job.id, trial.job.kind, trial.job.status) == \
        ("lr_0.001", grid[0], None, job_id, "trial", "queued")
    assert reg.sweep(str(sid)).name == "s1"
    # a finished trial stays finished when the sweep is registered again
    reg.upsert_attempt(t, attempt(1, status="completed"))
    assert reg.add_trial(sid, t, "lr_0.001", grid[0]) == job_id
    assert reg.sweep("s1").trials[0].job.status == "succeeded"
    reg.set_trial_error(sid, "lr_0.001", "evaluation failed: FileNotFoundError: /b.jsonl")
    assert reg.sweep("s1").trials[0].error.startswith("evaluation failed")
    with pytest.raises(RegistryError, match=r"no sweep 'nope'.*sweeps: s1"):
        reg.sweep("nope")
    assert [s.name for s in reg.sweeps()] == ["s1"]


def test_a_registry_made_by_revision_0003_upgrades_with_its_rows(registry_url):
    _upgrade_to(registry_url, "0003")
    engine = create_engine(registry_url)
    try:
        with engine.begin() as c:
            c.execute(text("INSERT INTO jobs (id, name, kind, output_dir, status, launcher, launcher_options, "
                           "recipe_yaml, fingerprint, cancel_requested, created_at, updated_at) VALUES (1, 'old', "
                           "'train', '/runs/old', 'succeeded', 'local', '{}', 'name: old', 'fp', false, "
                           "'2026-12-01 10:00:00', '2026-12-01 10:00:00')"))
            c.execute(text("INSERT INTO results (job_id, model, role, base_path, kind, benchmark, fingerprint, mode, "
                           "shots, n, accuracy, figures, outcomes, created_at) VALUES (1, 'old', 'tuned', '/m', "
                           "'benchmark', 'cmexam', 'q1', 'letter', 0, 10, 0.5, '{}', '[]', '2026-12-01 10:00:00')"))
    finally:
        engine.dispose()
    reg = Registry(registry_url)
    try:
        assert alembic_versions(registry_url) == [head_revision()] == ["0004"]
        old = reg.find("old")
        assert reg.job(old).status == "succeeded" and [r.accuracy for r in reg.results(job_id=old)] == [0.5]
        assert reg.metrics(old) == []
        reg.record_metrics(JobSpec("old", "/runs/old", "local", "name: old", "fp"),
                           [MetricRow.from_log(10, {"loss": 1.0})])
        assert [(m.step, m.loss) for m in reg.metrics(old)] == [(10, 1.0)]
        sid = reg.upsert_sweep(SweepInfo("later", "name: later\n"))
        assert reg.sweep("later").id == sid
    finally:
        reg.close()


def test_jobs_sync_backfills_metrics_from_the_newest_trainer_state(tmp_path):
    """A run whose registry was away (or a registry rebuilt from disk): `jobs sync` restores every logged step from
    trainer_state.json: the final one, else the newest checkpoint's."""
    from medscale.jobs.record import Journal

    out = tmp_path / "run"
    (out / "checkpoint-4").mkdir(parents=True)
    Journal("synced", str(out), kind="train", attempts=[attempt(1, status="completed")]).save()
    history = [{"step": 0, "eval_loss": 3.0}, {"step": 2, "loss": 2.5, "learning_rate": 1e-3, "grad_norm": 0.5},
               {"step": 4, "loss": 2.0, "learning_rate": 5e-4, "grad_norm": 0.25}, {"step": 4, "eval_loss": 2.75}]
    (out / "checkpoint-4" / "trainer_state.json").write_text(json.dumps({"global_step": 4, "log_history": history}))
    (out / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": history[:2]}))  # stale
    reg = Registry(f"sqlite:///{tmp_path}/r.db")
    try:
        assert sync_output_dir(reg, out)["metric_steps"] == 3
        rows = reg.metrics(reg.find("synced"))
        assert [(r.step, r.loss, r.eval_loss, r.learning_rate, r.grad_norm) for r in rows] == [
            (0, None, 3.0, None, None), (2, 2.5, None, 1e-3, 0.5), (4, 2.0, 2.75, 5e-4, 0.25)]
    finally:
        reg.close()
