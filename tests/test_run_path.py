"""From run() to trainer.train() the code reads top to bottom (issue 21, deliverable 2): `medscale train`'s run()
enters each stage module once, in the order run() lists them, traced by bench/run_path.py's own tracer."""
from __future__ import annotations

import sys

from conftest import bench_script


def _run_path():
    return bench_script("run_path")


def test_medscale_train_enters_each_stage_module_once(tiny_model_dir, tmp_path, monkeypatch):
    """The worker path of `medscale train` (the local launcher's pre-flight decided the RunPlan): no stage module
    is entered again by a later stage (only LEAVES, the vocabulary, may be), and the stages come in run()'s order.
    Before: 20 stages, model.load, model.resolve, jobs.attempt, the callbacks and the trackers entered again by
    later stages. Traced from run()'s call on, so the launcher's pre-flight runs at full speed."""
    import medscale.train.run as train_run
    from medscale.cli.train import launch_here

    run_path, real_run = _run_path(), train_run.run
    tracer = run_path.ModulePath(from_run=True)

    def trace(frame, event, arg):
        tracer(frame, event, arg)
        if tracer.done:  # trainer.train() was called: the path ends there
            sys.setprofile(None)

    def traced_run(*a, **kw):
        sys.setprofile(trace)
        try:
            return real_run(*a, **kw)
        finally:
            sys.setprofile(None)

    monkeypatch.setattr(train_run, "run", traced_run)
    code, _ = launch_here("tiny-demo", [f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path / 'out'}",
                                        "train.max_steps=1", "eval.eval_strategy=no", "track.swanlab=null"])
    path = tracer.result()
    assert code == 0 and path["reached_train"]
    assert {m: n for m, n in path["re_entered"].items() if not run_path.is_leaf(m)} == {}
    stages = [next((m for m in stage if not run_path.is_leaf(m)), None) for stage in path["stage_modules"]]
    assert [m for m in stages if m] == ["medscale.preflight", "medscale.train.args", "medscale.train.data",
                                        "medscale.jobs.resume", "medscale.jobs.attempt", "medscale.train.session"]
