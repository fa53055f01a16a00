"""Sweeps on Ray Tune (a real one-node Ray cluster, tiny models on CPU): a 2 x 2 grid whose cells are trial jobs
of one sweep, one forced to fail while the others finish, the base evaluated once, a re-run that trains nothing new;
ASHA stopping a trial early for good; the leaderboard; the sweep file's expansion and its errors."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import QUICK_STEP, cli
from medscale.sweep.spec import SweepError, load_spec, plan_sweep, spec_from_recipe

if os.environ.get("CI"):
    import ray  # noqa: F401  (under CI a missing Ray is a failure, never a skip)
else:
    pytest.importorskip("ray.tune", reason="ray[tune] not installed")

COMMON = {"track.swanlab": None, "train.max_steps": 4, "train.logging_steps": 1, "train.save_steps": 2,
          "eval.eval_steps": 2, "data.eval_size": 8, "data.max_length": 256, "train.warmup_ratio": 0,
          "data.system_prompt": None}


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _overrides(args) -> dict:
    """`key=value` overrides as a sweep file's `overrides:` mapping."""
    return {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args)}


def _registry(home: Path):
    from medscale.registry import Registry

    return Registry(f"sqlite:///{home}/registry.db")


@contextlib.contextmanager
def on_loopback():
    """`--address` of the shared test cluster, which listens on loopback only (tests/ray_cluster.py): Ray would
    otherwise rewrite its 127.0.0.1 to this machine's network address (as RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 does)."""
    with pytest.MonkeyPatch.context() as mp:
        import ray._private.ray_constants as constants

        mp.setattr(constants, "ENABLE_RAY_CLUSTER", False)
        yield


# --------------------------------------------------------------------------- the 2 x 2 sweep (slow, shared)


@pytest.fixture(scope="module")
def grid_sweep(ray_cluster, tiny_model_dir, eval_data, tmp_path_factory):
    """`medscale sweep run` of a 2 x 2 grid (learning rate x what is trained) on the cluster; the last cell is
    forced to fail before training (every record is longer than its max_length). Run twice, the second time with
    -v (Ray Tune's own progress table)."""
    root = tmp_path_factory.mktemp("sweep")
    home = root / "home"
    data = root / "demo40.jsonl"
    from medscale.recipe import demo_data_dir

    data.write_text("".join((demo_data_dir() / "medical_r1_demo.jsonl").read_text(encoding="utf-8")
                            .splitlines(keepends=True)[:40]), encoding="utf-8")
    spec = _write(root / "grid.yaml", {
        "name": "grid2x2", "recipes": [{"recipe": "tiny-demo"}],
        "grid": {"lr": {"low": {"train.learning_rate": 3.0e-3}, "high": {"train.learning_rate": 1.0e-2}},
                 "head": {"lora": {"adapter.modules_to_save": None},
                          "full": {"adapter.modules_to_save": ["embed_tokens", "lm_head"]}}},
        "cells": [{"lr": "low", "head": "lora"}, {"lr": "low", "head": "full"}, {"lr": "high", "head": "lora"},
                  {"lr": "high", "head": "full", "overrides": {"data.max_length": 16},
                   "note": "forced to fail: every record is longer than 16 tokens"}],
        "overrides": {**COMMON, **_overrides(QUICK_STEP), "model.path": str(tiny_model_dir),
                      "eval.benchmarks": [str(eval_data["mcq"])],
                      "data.sources": [{"path": str(data), "format": "r1-think"}]},
        "bases": [{"label": "tiny-base", "path": str(tiny_model_dir)}]})
    env = {"MEDSCALE_HOME": str(home)}
    with on_loopback():
        first = cli("sweep", "run", str(spec), "--address", ray_cluster.gcs, "--json", env=env)
        reg = _registry(home)
        try:
            after_first = {j.name: reg.job(j.id).to_dict() for j in reg.jobs()}
        finally:
            reg.close()
        again = cli("sweep", "run", str(spec), "--address", ray_cluster.gcs, "--json", "-v", env=env)
    return {"root": root, "home": home, "spec": spec, "first": first, "again": again, "after_first": after_first,
            "env": env}


@pytest.mark.slow
def test_a_2x2_sweep_makes_four_trial_jobs_of_one_sweep_and_one_base_row(grid_sweep):
    first = grid_sweep["first"]
    assert first.returncode == 1, first.stderr  # one trial failed
    out = json.loads(first.stdout)
    reg = _registry(grid_sweep["home"])
    try:
        sweep = reg.sweep("grid2x2")
        assert sorted(t.label for t in sweep.trials) == ["high-full", "high-lora", "low-full", "low-lora"]
        jobs = {t.label: t.job for t in sweep.trials}
        assert all(j.kind == "trial" for j in jobs.values()) and len(reg.jobs()) == 4
        assert {j.name for j in jobs.values()} == {f"grid2x2.{label}" for label in jobs}
        # each trial's recipe is tiny-demo + its cell's overrides, fingerprinted
        low_full = reg.job(jobs["low-full"].id)
        recipe = yaml.safe_load(low_full.recipe_yaml)
        assert recipe["train"]["learning_rate"] == 3e-3 and recipe["adapter"]["modules_to_save"] == [
            "embed_tokens", "lm_head"] and recipe["train"]["max_steps"] == 4
        from medscale.recipe import load_recipe

        assert low_full.fingerprint == load_recipe("tiny-demo", sweep.grid[1]["overrides"]).fingerprint()
        assert Path(low_full.output_dir) == grid_sweep["home"] / "runs" / "sweeps" / "grid2x2" / "low-full"
        # the base is one row, measured once on the trials' questions, stored as no job's `base` result
        (base,) = [r for r in out["leaderboard"]["rows"] if r["kind"] == "base"]
        assert base["label"] == "tiny-base" and out["bases_measured"] == [sweep.bases[0]["path"]]
        base_results = [r for r in reg.results() if r.role == "base" and r.job_id is None]
        assert [(Path(r.benchmark).name, r.n, r.base_path) for r in base_results] == [
            ("mcq40", 40, sweep.bases[0]["path"])]
        # every finished trial scored its final adapter on the benchmark (and, in the run, its base on the same
        # questions) and logged its metrics as it ran
        for label in ("low-lora", "low-full", "high-lora"):
            final = [r for r in reg.results(job_id=jobs[label].id) if r.checkpoint is None]
            assert sorted((r.role, r.n) for r in final) == [("base", 40), ("tuned", 40)]
            steps = [m.step for m in reg.metrics(jobs[label].id) if m.eval_loss is not None]
            assert steps == [0, 2, 4]
    finally:
        reg.close()


@pytest.mark.slow
def test_a_failed_trial_is_reported_with_its_reason_and_the_others_finish(grid_sweep):
    out = json.loads(grid_sweep["first"].stdout)
    status = {t["label"]: t["status"] for t in out["trials"]}
    assert status == {"low-lora": "succeeded", "low-full": "succeeded", "high-lora": "succeeded",
                      "high-full": "failed"}
    (failed,) = [t for t in out["trials"] if t["status"] == "failed"]
    assert "no samples" in failed["reason"] or "max_length" in failed["reason"], failed["reason"]
    assert "trial high-full failed" in grid_sweep["first"].stderr
    rows = {r["label"]: r for r in out["leaderboard"]["rows"]}
    assert rows["high-full"]["status"] == "failed" and rows["high-full"]["value"] is None
    assert "forced to fail" in rows["high-full"]["note"] and failed["reason"] in rows["high-full"]["note"]
    assert all(rows[x]["value"] is not None for x in ("low-lora", "low-full", "high-lora"))
    shown = cli("sweep", "show", "grid2x2", "--md", env=grid_sweep["env"])
    assert shown.returncode == 0 and "| failed |" in shown.stdout and "high-full" in shown.stdout


@pytest.mark.slow
def test_sweep_progress_is_a_readable_line_per_trial_event_and_tunes_table_only_with_v(grid_sweep):
    first, again = grid_sweep["first"].stderr, grid_sweep["again"].stderr
    for label in ("low-lora", "low-full", "high-lora"):
        assert f"medscale: trial {label}: started" in first and f"medscale: trial {label}: ended" in first
    assert "medscale: trial low-lora: step 2, eval loss " in first
    assert "medscale: trial high-full: failed" in first
    assert "Trial status" not in first, "Tune's table is left out by default"
    assert "Trial status" in again and "high-full" in again.split("Trial status", 1)[1]  # -v: Tune's table
    assert "{'" not in first + again, "no trial is a dict cut at 20 characters"


@pytest.mark.slow
def test_running_the_sweep_again_trains_nothing_new(grid_sweep):
    again = grid_sweep["again"]
    assert again.returncode == 1  # the broken cell is tried again, and fails again before training
    out = json.loads(again.stdout)
    assert {t["label"]: t["ran"] for t in out["trials"]} == {"low-lora": False, "low-full": False,
                                                             "high-lora": False, "high-full": True}
    assert out["bases_measured"] == [], "the base was measured once"
    reg = _registry(grid_sweep["home"])
    try:
        for j in reg.jobs():
            now = reg.job(j.id).to_dict()
            before = grid_sweep["after_first"][j.name]
            assert now["attempts"] == before["attempts"] and now["checkpoints"] == before["checkpoints"], j.name
        assert len([r for r in reg.results() if r.role == "base" and r.job_id is None]) == 1, "measured once"
    finally:
        reg.close()


@pytest.mark.slow
def test_the_leaderboard_ranks_by_eval_loss_or_accuracy_and_marks_worse_than_base(grid_sweep):
    env = grid_sweep["env"]
    board = json.loads(cli("sweep", "show", "grid2x2", "--json", env=env).stdout)
    rows = board["rows"]
    ranked = [r for r in rows if r["rank"] is not None]
    assert [r["rank"] for r in ranked] == list(range(1, len(ranked) + 1)) and len(ranked) == 4  # 3 trials + base
    values = [r["value"] for r in ranked]
    assert values == sorted(values), "lower eval loss ranks first"
    base = next(r for r in rows if r["kind"] == "base")
    for r in rows:
        if r["kind"] == "trial" and r["value"] is not None:
            assert r["base_value"] == pytest.approx(base["value"], abs=1e-6)  # its own step-0 loss: the base's
            assert r["worse_than_base"] == (r["value"] > r["base_value"])
    acc = json.loads(cli("sweep", "show", "grid2x2", "--metric", "mcq40", "--json", env=env).stdout)
    scored = [r for r in acc["rows"] if r["value"] is not None]
    assert len(scored) == 4 and all(r["n"] == 40 and r["ci"][0] <= r["value"] <= r["ci"][1] for r in scored)
    assert [r["value"] for r in scored] == sorted((r["value"] for r in scored), reverse=True)
    for r in scored:
        if r["kind"] == "trial":
            assert r["worse_than_base"] is not None and "McNemar" in r["versus"]
    md = cli("sweep", "show", "grid2x2", "--metric", "mcq40", "--md", env=env).stdout
    assert "| # | model | kind | base | status | mcq40 acc % |" in md and "tiny-base" in md
    bad = cli("sweep", "show", "grid2x2", "--metric", "nope", env=env)
    assert bad.returncode == 2 and "no results for 'nope'" in bad.stderr and "mcq40" in bad.stderr


# --------------------------------------------------------------------------- ASHA


@pytest.mark.slow
def test_asha_stops_the_worse_trial_for_good(ray_cluster, tiny_model_dir, tmp_path):
    """On the shared test cluster (a sweep's own local Ray is started in tests/test_trust_sweepstop.py): two trials
    one after the other; the second learns nothing (lr 1e-7) and ASHA stops
    it at its first rung; it ends stopped_early (the registry and its own record say so), a re-run skips it, and
    nothing resumes it. The second is set to train far longer than the test could wait, so it cannot finish before
    ASHA's decision reaches it (on a loaded machine a 6-step trial did, and rightly ended `succeeded`)."""
    spec = _write(tmp_path / "asha.yaml", {
        "name": "asha", "recipes": [{"recipe": "tiny-demo"}],
        "grid": {"lr": {"good": {"train.learning_rate": 1.0e-2},
                        "idle": {"train.learning_rate": 1.0e-7, "train.max_steps": 100_000}}},
        "overrides": {**COMMON, "model.path": str(tiny_model_dir), "train.max_steps": 6,
                      "data.sources": [{"path": "${MEDSCALE_DEMO_DATA}/medical_r1_demo.jsonl", "format": "r1-think",
                                        "limit": 40}]},
        "scheduler": {"type": "asha", "grace_period": 2}, "max_concurrent": 1})
    home = tmp_path / "home"
    env = {"MEDSCALE_HOME": str(home)}
    on_cluster = ("--address", ray_cluster.gcs, "--json")
    with on_loopback():
        r = cli("sweep", "run", str(spec), *on_cluster, env=env)
    assert r.returncode == 0, r.stderr
    status = {t["label"]: t["status"] for t in json.loads(r.stdout)["trials"]}
    assert status == {"good": "succeeded", "idle": "stopped_early"}
    reg = _registry(home)
    try:
        idle = reg.job(reg.find("asha.idle"))
        assert idle.status == "stopped_early" and idle.step < 100_000
        assert "stopped early by the sweep's ASHA scheduler at step 2 " in idle.attempt_list[-1].exit_reason
        from medscale.jobs.record import read_journal

        assert "ASHA" in read_journal(idle.output_dir).stopped_early
        from medscale.jobs.client import sync_output_dir

        sync_output_dir(reg, idle.output_dir)  # the record on disk keeps it stopped early
        assert reg.job(idle.id).status == "stopped_early"
    finally:
        reg.close()
    with on_loopback():
        again = cli("sweep", "run", str(spec), *on_cluster, env=env)
    assert again.returncode == 0 and not any(t["ran"] for t in json.loads(again.stdout)["trials"])
    resumed = cli("jobs", "resume", "asha.idle", env=env)
    assert resumed.returncode == 2 and "stopped early" in resumed.stderr
    trained = cli("train", "tiny-demo", f"train.output_dir={idle.output_dir}", "name=asha.idle", env=env)
    assert trained.returncode == 2 and "never resumed" in trained.stderr


# --------------------------------------------------------------------------- the sweep file (fast)


def test_seed_004_sweep_is_the_seeds_grid():
    spec, text = load_spec("r1-distill-seed004")
    plan = plan_sweep(spec, text)
    got = {t.label: (t.recipe.train.learning_rate, t.recipe.train.max_steps) for t in plan.trials}
    # seed 004's table: versions 1, 5, 6 (2e-4 x 60), 7 (7B 3e-6 x 30), 8 (14B 5e-6 x 30); + 1.5B gentle, an addition
    assert got == {"1.5b-fast": (2e-4, 60), "7b-fast": (2e-4, 60), "14b-fast": (2e-4, 60),
                   "7b-gentle": (3e-6, 30), "14b-gentle": (5e-6, 30), "1.5b-gentle": (5e-6, 30)}
    assert "ADDITION" in plan.trial("1.5b-gentle").note
    assert all("ADDITION" not in (t.note or "") for t in plan.trials if t.label != "1.5b-gentle")
    assert sorted(Path(b.path).name for b in plan.bases) == [f"DeepSeek-R1-Distill-Qwen-{s}" for s in
                                                             ("1.5B", "14B", "7B")]
    assert all(t.base == t.recipe.model.path for t in plan.trials)
    assert [t.recipe.train.per_device_train_batch_size * t.recipe.train.gradient_accumulation_steps
            for t in plan.trials if t.label.endswith("fast")] == [64, 64, 64]


def test_grid_flags_tied_keys_cells_random_and_labels(tmp_path):
    spec, text = spec_from_recipe("tiny-demo", ["train.learning_rate=1e-3,3e-3",
                                                "adapter.modules_to_save=null,[embed_tokens, lm_head]"])
    plan = plan_sweep(spec, text, ["train.max_steps=3"])
    assert [t.label for t in plan.trials] == [
        "learning_rate_1e-3-modules_to_save_null", "learning_rate_1e-3-modules_to_save_embed_tokens_lm_head",
        "learning_rate_3e-3-modules_to_save_null", "learning_rate_3e-3-modules_to_save_embed_tokens_lm_head"]
    assert [t.recipe.train.learning_rate for t in plan.trials] == [1e-3, 1e-3, 3e-3, 3e-3]
    assert plan.trials[1].recipe.adapter.modules_to_save == ["embed_tokens", "lm_head"]
    assert all(t.recipe.train.max_steps == 3 for t in plan.trials) and plan.name == "tiny-demo-sweep"
    f = _write(tmp_path / "s.yaml", {
        "name": "tied", "recipes": [{"recipe": "tiny-demo", "label": "a"}, {"recipe": "tiny-demo", "label": "b"}],
        "grid": {"sched": {"fast": {"train.learning_rate": 2.0e-4, "train.max_steps": 60},
                           "slow": {"train.learning_rate": 5.0e-6, "train.max_steps": 30}}},
        "random": 3, "seed": 1})
    plan = plan_sweep(*load_spec(str(f)))
    assert len(plan.trials) == 3 and len({t.label for t in plan.trials}) == 3
    for t in plan.trials:  # tied: each value moves both keys together
        assert (t.recipe.train.learning_rate, t.recipe.train.max_steps) in ((2e-4, 60), (5e-6, 30))
        assert t.label.split("-")[0] in ("a", "b") and t.name == f"tied.{t.label}"
    assert [t.label for t in plan_sweep(*load_spec(str(f))).trials] == [t.label for t in plan.trials], "seeded"
    dry = cli("sweep", "run", str(f), "--dry-run", "--json")
    assert dry.returncode == 0 and len(json.loads(dry.stdout)["trials"]) == 3


@pytest.mark.parametrize("spec,message", [
    ({"name": "x", "recipes": [{"recipe": "tiny-demo"}], "grdi": {}},
     r"s.yaml:4: grdi: unknown key; did you mean 'grid'\? \(known: name"),
    ({"name": "x", "recipes": [{"recipe": "tiny-demo"}], "grid": {"lr": {"a": {"train.learning_rate": 1}}},
      "cells": [{"lr": "b"}]}, r"cells\[0\].lr: no value 'b' \(values: a\)"),
    ({"name": "x", "recipes": [{"recipe": "tiny-demo"}], "overrides": {"train.lerning_rate": 1}},
     r"trial tiny-demo: .*unknown key 'train.lerning_rate'"),
    ({"name": "x", "recipes": [{"recipe": "tiny-demo"}], "scheduler": {"type": "asha"},
      "overrides": {"eval.eval_strategy": "no"}}, r"never evaluates during training: set eval.eval_strategy=steps"),
    ({"name": "bad name", "recipes": [{"recipe": "tiny-demo"}]}, r"s.yaml:1: name: .*letters, digits"),
])
def test_a_bad_sweep_file_is_one_clear_error_and_nothing_is_written(tmp_path, medscale_home, spec, message):
    f = _write(tmp_path / "s.yaml", spec)
    r = cli("sweep", "run", str(f))
    assert r.returncode == 2, r.stdout
    import re

    assert re.search(message, r.stderr), r.stderr
    assert not medscale_home.exists(), "nothing written"


def test_a_sweep_name_reused_for_another_grid_is_refused(tmp_path, medscale_home):
    from medscale.registry import Registry
    from medscale.sweep.tune import register

    reg = Registry()
    try:
        register(reg, plan_sweep(*spec_from_recipe("tiny-demo", ["train.learning_rate=1e-3,3e-3"], "same")))
        with pytest.raises(SweepError, match=r"'same' is already in the registry with another grid \(trials "):
            register(reg, plan_sweep(*spec_from_recipe("tiny-demo", ["train.learning_rate=1e-3,5e-3"], "same")))
    finally:
        reg.close()


def test_a_rerun_runs_every_trial_but_the_finished_and_the_stopped_early(tmp_path, medscale_home):
    """Which trials a re-run starts, by what their jobs' records say: succeeded and stopped_early are done; failed,
    preempted, cancelled, queued ones run again (resuming from their verified checkpoints, train.resume=auto); a
    trial that trained but whose evaluation failed (an error on its sweep row) runs again too."""
    from medscale.registry import AttemptInfo, Registry
    from medscale.status import JobStatus
    from medscale.sweep.tune import pending, register, trial_spec

    plan = plan_sweep(*spec_from_recipe("tiny-demo", ["train.learning_rate=1,2,3,4,5,6"], "rerun"),
                      bases=["tiny=/models/tiny"])
    assert [(b.label, b.path) for b in plan.bases] == [("tiny", "/models/tiny")]
    reg = Registry()
    try:
        sweep_id, ids = register(reg, plan)
        outcome = {"learning_rate_1": "completed", "learning_rate_2": "failed", "learning_rate_3": "preempted",
                   "learning_rate_4": "cancelled", "learning_rate_6": "completed"}
        for t in plan.trials:
            if t.label in outcome:
                reg.upsert_attempt(trial_spec(t, plan.name), AttemptInfo(1, "local", "h", 1, "fp",
                                                                         status=outcome[t.label]))
        reg.set_status(ids["learning_rate_5"], JobStatus.STOPPED_EARLY)
        reg.set_trial_error(sweep_id, "learning_rate_6", "its evaluation failed")
        assert [t.label for t in pending(reg, plan)] == ["learning_rate_2", "learning_rate_3", "learning_rate_4",
                                                         "learning_rate_6"]
    finally:
        reg.close()
