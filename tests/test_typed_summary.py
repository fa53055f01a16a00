"""A run's summary is typed from its verdicts to every reader (issue 21, deliverable 3): `run_summary.json`'s
benchmark verdicts and forgetting guard are `medscale.verdicts` models, read through `RunSummary.load` alone, and a
summary the previous version wrote (its verdicts as plain dicts, `control: {}` for none) loads as they are and shows
in `medscale jobs show`, the report, and the resume that finds the job finished. Hand-built job folders: no training.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import cli
from medscale.jobs.checkpoint import write_manifest
from medscale.jobs.record import SUMMARY, RunPaths, RunSummary, SplitStats
from medscale.verdicts import ForgettingVerdict, RunBenchmark

# a benchmark's entry as the previous version's run_verdict wrote it: the paired verdict's fields and the run's line
OLD_BENCHMARK = {
    "benchmark": "run_mcq40", "a": "base", "b": "tuned", "n": 40, "acc_a": 0.3, "acc_b": 0.975, "diff": 0.675,
    "ci_low": 0.525, "ci_high": 0.825, "p_mcnemar": 3.7e-08, "a_only": 0, "b_only": 27, "resamples": 10000,
    "seed": 0, "verdict": "better", "degeneration": None,
    "contamination": {"n_questions": 40, "overlapping": 40, "share": 1.0, "ngram": 13, "threshold": 0.5,
                      "examples": ["q1", "q2"]},
    "line": "run_mcq40: base 30.0% -> tuned 97.5% (+67.5 points, 95% CI +52.5 to +82.5, McNemar p=3.7e-08, n=40): "
            "better; 100% of its questions overlap the training data"}
OLD_CONTROL = {"kind": "loss", "before": 2.0, "after": 2.5, "regression": 0.25, "threshold": 0.1, "flagged": True,
               "line": "FORGETTING: control set demo.jsonl: loss 2.0000 -> 2.5000 (+25.0%), beyond "
                       "eval.max_control_regression=0.1"}
HELD_OUT = ("held-out loss 2.1000 (base) -> 1.4000 (-33.3%): the fine-tune is better than the base model on "
            "held-out data")


def _old_job(root: Path, name: str, benchmarks: dict, control: dict, steps: int = 4) -> Path:
    """A finished job folder as the previous version left it: journal, recipe, the Trainer's log, a verified final
    checkpoint and run_summary.json in its layout."""
    out = root / name
    ckpt = out / f"checkpoint-{steps}"
    ckpt.mkdir(parents=True)
    started = {"launcher": "local", "host": "node1", "pid": 4242, "fingerprint": "fp", "world_size": 1,
               "resumed_from": None, "recipe_changes": [], "launcher_ids": {}, "started_at": "2026-12-01T10:00:00"}
    (out / "medscale_job.json").write_text(json.dumps({
        "format": 2, "name": name, "kind": "train", "output_dir": str(out), "launcher": "local",
        "launcher_options": {}, "fingerprint": "fp", "verified_steps": [steps],
        "attempts": [{**started, "number": 1, "status": "completed", "step": steps, "exit_reason": None,
                      "ended_at": "2026-12-01T10:05:00"}]}), encoding="utf-8")
    (out / "recipe.resolved.yaml").write_text(f"name: {name}\nmodel: {{path: {root / 'base'}}}\n", encoding="utf-8")
    history = [{"step": s, "loss": 3.0 - 0.4 * s, "learning_rate": 1e-4, "grad_norm": 1.0} for s in range(1, steps + 1)]
    history += [{"step": 0, "eval_loss": 2.1}, {"step": steps, "eval_loss": 1.4}]
    state = {"global_step": steps, "max_steps": steps, "log_history": history}
    (out / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    (ckpt / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    (ckpt / "adapter_model.safetensors").write_bytes(os.urandom(1024))
    write_manifest(ckpt, steps, {"job": name, "attempt": 1, "metrics": {"loss": history[steps - 1]["loss"]}})
    (out / SUMMARY).write_text(json.dumps({
        "recipe": name, "fingerprint": "fp", "host": "node1", "attempt": 1, "resumed_from": None, "world_size": 1,
        "steps_per_rank": [steps], "global_step": steps, "epochs": 1.0, "train_runtime_s": 12.5, "wall_s": 30.1,
        "loss_first": 2.6, "loss_last": 1.4, "train_loss_mean": 2.0, "eval_loss_base": 2.1, "eval_loss_final": 1.4,
        "eval_loss_best": 1.4, "eval_loss_change_pct": -33.3, "verdict": HELD_OUT, "trainable_params": 1000,
        "total_params": 100000, "data": {"train": {"records": 40, "kept": 40}}, "tokens_per_s": None,
        "tokens_per_s_per_device": None, "samples_per_s": None, "peak_mem_alloc_gb": None,
        "peak_mem_reserved_gb": None, "mfu": None, "first_step_s": None, "finished_from_checkpoint": None,
        "benchmarks": benchmarks, "control": control,
        "paths": {"adapter": str(out), "checkpoints": [ckpt.name], "trainer_state": str(out / "trainer_state.json"),
                  "loss_plot": str(out / "loss.png"), "swanlab": None}}, indent=2), encoding="utf-8")
    return out


@pytest.fixture
def old_jobs(tmp_path, medscale_home, monkeypatch):
    """Two old jobs synced into this test's registry: one judged on a benchmark and the control set, one that
    measured neither (`benchmarks: {}`, `control: {}`)."""
    monkeypatch.setenv("MEDSCALE_REGISTRY_URL", f"sqlite:///{medscale_home}/registry.db")
    judged = _old_job(tmp_path, "judged", {"run_mcq40": OLD_BENCHMARK}, OLD_CONTROL)
    plain = _old_job(tmp_path, "plain", {}, {})
    r = cli("jobs", "sync", str(judged), str(plain))
    assert r.returncode == 0, r.stdout + r.stderr
    return judged, plain


def test_a_summary_the_previous_version_wrote_loads_as_the_typed_verdicts_in_its_own_layout(old_jobs, tmp_path):
    judged, plain = old_jobs
    s = RunSummary.load(judged)
    verdict = s.benchmarks["run_mcq40"]
    assert isinstance(verdict, RunBenchmark) and isinstance(s.control, ForgettingVerdict)
    assert (verdict.verdict, verdict.n, verdict.contamination.share, verdict.said) == (
        "better", 40, 1.0, OLD_BENCHMARK["line"])
    assert s.control.flagged and s.control.change() == "loss +25.0% FORGETTING"
    assert s.lines() == [OLD_BENCHMARK["line"], OLD_CONTROL["line"]]
    assert RunSummary.load(plain).control is None and RunSummary.load(plain).lines() == []  # {}: not measured
    # its data and paths read typed: the counts it kept, and no default for those it did not
    assert isinstance(s.data.train, SplitStats) and (s.data.train.records, s.data.train.kept) == (40, 40)
    assert s.data.eval is None and s.data.splits() == [("train", s.data.train)]
    assert isinstance(s.paths, RunPaths) and (s.paths.adapter, s.paths.checkpoints) == (str(judged), ["checkpoint-4"])
    # written again, it is the same layout: the previous version's keys, the run's line under "line"
    (tmp_path / "again").mkdir()
    s.save(tmp_path / "again")
    old, new = (json.loads((d / SUMMARY).read_text()) for d in (judged, tmp_path / "again"))
    assert new == old


def test_jobs_show_and_the_report_show_an_old_summarys_verdicts(old_jobs, tmp_path):
    judged, plain = old_jobs
    shown = cli("jobs", "show", str(judged)).stdout
    assert "run summary (step 4)" in shown
    for line in (HELD_OUT, OLD_BENCHMARK["line"], OLD_CONTROL["line"]):
        assert line in shown, line
    summary = json.loads(cli("jobs", "show", str(judged), "--json").stdout)["summary"]
    assert summary["benchmarks"]["run_mcq40"] == OLD_BENCHMARK and summary["control"] == OLD_CONTROL
    plain_shown = cli("jobs", "show", str(plain)).stdout
    assert HELD_OUT in plain_shown and "control set" not in plain_shown

    r = cli("report", str(judged), str(plain), "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "rep" / "report.json").read_text(encoding="utf-8"))
    assert rep["forgetting"] == [
        {"run": "judged", "flagged": True, "line": OLD_CONTROL["line"]},
        {"run": "plain", "flagged": None, "line": "not measured (set eval.control: a general-domain set)"}]
    assert [o["verdict"] for o in rep["overview"]] == [HELD_OUT, HELD_OUT]
    rows = {v["label"]: v for v in rep["versions"]}
    assert rows["judged"]["forgetting"] == "loss +25.0% FORGETTING" and "FORGETTING" in rows["judged"]["verdict"]
    assert rows["plain"]["forgetting"] == "–" and "FORGETTING" not in rows["plain"]["verdict"]
    assert OLD_CONTROL["line"] in (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")


def test_a_finished_old_job_is_not_finished_again_and_a_damaged_summary_is_rewritten(old_jobs):
    """The resume that finds the job at its last step reads its summary: the previous version's is the run's (nothing
    to do); one that does not read is written again (the run is finished from its checkpoint), not a crash."""
    from medscale.jobs.resume import plan_start
    from medscale.recipe import load_recipe

    _, plain = old_jobs
    recipe = load_recipe("tiny-demo", [f"train.output_dir={plain}", "train.max_steps=4"])
    plan = plan_start(recipe)
    assert plan.finished and plan.summary is not None and plan.summary.verdict == HELD_OUT
    (plain / SUMMARY).write_text('{"recipe": "plain", "control": {"kind": "loss"}}', encoding="utf-8")
    plan = plan_start(recipe)
    assert plan.finished and plan.summary is None


def test_an_unreadable_summary_is_one_line_naming_the_file(old_jobs):
    judged, _ = old_jobs
    (judged / SUMMARY).write_text("{", encoding="utf-8")
    r = cli("jobs", "show", str(judged))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(judged / SUMMARY) in r.stderr and "not a readable run summary" in r.stderr and "mv " in r.stderr


def test_the_sweep_leaderboard_ranks_old_trials_by_their_forgetting_guard(old_jobs, tmp_path):
    from medscale.registry import JobSpec, Registry, SweepInfo

    base = str(tmp_path / "base")
    with Registry() as reg:
        sweep = reg.upsert_sweep(SweepInfo("old-sweep", "name: old-sweep\n", [], [{"label": "base", "path": base}]))
        for out in old_jobs:
            reg.add_trial(sweep, JobSpec(out.name, str(out), "local", "", "fp", kind="trial"), out.name,
                          {"base": base})
    r = cli("sweep", "show", "old-sweep", "--metric", "control", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["label"]: row for row in json.loads(r.stdout)["rows"]}
    judged, plain = rows["judged"], rows["plain"]
    assert (judged["value"], judged["worse_than_base"], judged["versus"]) == (0.25, True, OLD_CONTROL["line"])
    assert (plain["value"], plain["worse_than_base"]) == (None, None) and rows["base"]["value"] == 0.0
