"""Evaluation inside a training run: a recipe that lists eval.benchmarks and eval.control is judged at its end (the
tuned model against the base it started from, same questions, paired verdict), logs the benchmarks at eval steps,
stores every result in the registry against the job, and can fail on forgetting. Also the eval job entry."""
from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.slow


def _registry_of(out):
    from medscale.registry import Registry

    return Registry(f"sqlite:///{out.parent}/home/registry.db")  # the session fixture trained under its own home


def test_the_run_judges_itself_on_its_benchmarks_and_the_control_set(mcq_job, noise_job, eval_data):
    out, summary, _ = mcq_job
    [name] = summary.benchmarks  # a benchmark given by path is named after its file
    assert name == eval_data["run_mcq"].stem
    verdict = summary.benchmarks[name]
    assert verdict.verdict == "better" and verdict.ci_low > 0 and verdict.n == 40
    assert verdict.acc_b >= 0.9 and "tuned" in verdict.said
    assert verdict.contamination.share == 1.0, "the run's own training data holds every question"
    assert summary.control.flagged and summary.control.kind == "loss", "fine-tuning on 40 letters forgets"
    noise = noise_job[1].benchmarks[name].verdict
    assert noise in ("worse", "no detectable difference"), noise
    # at eval steps: the benchmark and the control loss, logged like any metric (and so kept in checkpoints)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = [h for h in history if "control/loss" in h]  # the recipe's callback logs both in one entry
    assert [h["step"] for h in logged] == [0, 24, 48, 72, 96] and all(f"bench/{name}/acc" in h for h in logged)
    # stored against the job: the base and the tuned model, 40 questions each, outcomes kept for pairing
    reg = _registry_of(out)
    try:
        job = reg.find(str(out))
        rows = reg.results(job_id=job, outcomes=True)
        assert sorted(r.role for r in rows) == ["base", "tuned"]
        assert all(r.n == 40 and len(r.outcomes) == 40 and r.step == 96 for r in rows)
        tuned = next(r for r in rows if r.role == "tuned")
        assert tuned.accuracy == pytest.approx(verdict.acc_b)
    finally:
        reg.close()


def test_jobs_show_lists_the_results(mcq_job, monkeypatch):
    from conftest import cli

    out = mcq_job[0]
    monkeypatch.setenv("MEDSCALE_REGISTRY_URL", f"sqlite:///{out.parent}/home/registry.db")
    shown = json.loads(cli("jobs", "show", str(out), "--json").stdout)
    assert {(r["role"], r["n"]) for r in shown["results"]} == {("base", 40), ("tuned", 40)}
    table = cli("jobs", "show", str(out)).stdout
    assert "results" in table and "tuned" in table and "95% CI" in table


def test_forgetting_fails_the_job_when_the_recipe_asks(mcq_job, tmp_path):
    """eval.fail_on_regression: the flagged control regression makes the job end failed, with the reason; the
    summary (with the verdicts) is still written. Re-judged from the run's final checkpoint: no training."""
    from medscale.errors import RunFailed
    from medscale.jobs.record import RunSummary, read_journal
    from medscale.recipe import load_recipe
    from medscale.train.run import run

    out = tmp_path / "again"
    shutil.copytree(mcq_job[0], out, ignore=shutil.ignore_patterns("run_summary.json", "eval"))
    recipe = load_recipe(str(out / "recipe.resolved.yaml"), [f"train.output_dir={out}", "eval.fail_on_regression=true"])
    with pytest.raises(RunFailed, match=r"FORGETTING: control set .* \(eval\.fail_on_regression=true\)"):
        run(recipe)
    last = read_journal(out).last
    assert last.status == "failed" and "FORGETTING" in last.exit_reason
    assert RunSummary.load(out).control.flagged


def test_an_evaluation_job_runs_through_the_launcher_protocol(mcq_job, eval_data, monkeypatch):
    """`--entry eval`: the local launcher runs the eval entry on the recipe's trained model, against its base; the
    evaluation is a job of its own (kind eval) and its results are stored against the trained job."""
    from launcher.local import LocalLauncher
    from medscale.jobs.launch import LaunchRequest, entry_for
    from medscale.recipe import load_recipe

    out = mcq_job[0]
    monkeypatch.setenv("MEDSCALE_REGISTRY_URL", f"sqlite:///{out.parent}/home/registry.db")
    ref = str(out / "recipe.resolved.yaml")
    recipe = load_recipe(ref)
    launcher = LocalLauncher()
    request = LaunchRequest(recipe, ref, [], entry_for("eval"))
    assert launcher.wait(launcher.submit(launcher.prepare(request))) == 0
    report = json.loads((out / "eval" / "eval.json").read_text())
    assert report["verdicts"][0]["verdict"] == "better"
    reg = _registry_of(out)
    try:
        job = reg.job(reg.find(str(out / "eval")))
        assert (job.kind, job.status) == ("eval", "succeeded")
        assert len(reg.results(job_id=reg.find(str(out)))) == 4, "run's own two + the eval job's two"
    finally:
        reg.close()
