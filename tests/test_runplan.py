"""Decide once, pass it down (issue 21, deliverable 2): pre-flight decides a run's memory plan and tokenizes its data
once, writes the RunPlan beside the journal, and the workers read it instead of deciding again. The counters wrap the
real functions and call through: what is counted runs for real."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from conftest import cli
from medscale.jobs.record import RunSummary
from medscale.jobs.runplan import RUN_PLAN, RunPlan
from medscale.recipe import load_recipe


def _count(monkeypatch) -> Counter:
    """Each call of: the memory plan (decide), pre-flight (check), the tokenizing pass (_build), a pass over a data
    file (iter_conversations, wherever it was imported)."""
    import medscale.data.pipeline as pipeline
    import medscale.data.sources as sources
    import medscale.plan as plan
    import medscale.preflight as preflight

    calls: Counter = Counter()
    for modules, name in (([plan], "decide"), ([preflight], "check"), ([pipeline], "_build"),
                          ([sources, pipeline], "iter_conversations")):
        real = getattr(modules[0], name)

        def counted(*a, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*a, **kw)

        for module in modules:
            monkeypatch.setattr(module, name, counted)
    return calls


def _overrides(model: Path, out: Path) -> list[str]:
    return [f"model.path={model}", f"train.output_dir={out}", "train.max_steps=1", "train.logging_steps=1",
            "eval.eval_strategy=no", "track.swanlab=null"]


def test_medscale_train_decides_the_plan_and_tokenizes_once(tiny_model_dir, tmp_path, monkeypatch):
    """`medscale train` in-process: the launcher's pre-flight plans memory and reads + tokenizes the data (into the
    run's cache); run() reads the RunPlan and neither checks, plans nor tokenizes again. Before: the plan was made
    in the launcher's pre-flight, again in the worker's pre-flight, for the recompute decision and for the token
    budget, and the data file was read by pre-flight and again by the pipeline."""
    calls = _count(monkeypatch)
    out = tmp_path / "out"
    p = cli("train", "tiny-demo", *_overrides(tiny_model_dir, out))
    assert p.returncode == 0, p.stderr[-3000:]
    assert calls == {"check": 1, "decide": 1, "_build": 1, "iter_conversations": 1}
    plan = RunPlan.load(out)
    assert plan.launch and plan.fingerprint == load_recipe("tiny-demo", _overrides(tiny_model_dir, out)).fingerprint()
    assert plan.dist.world_size == 1 and plan.memory.token_budget is None  # one process, not packed
    assert plan.memory.recompute_layers == 0  # gradient_checkpointing=auto: none on CPU, the fewest that fit a GPU
    assert [f.model_dump() for f in plan.data.files] == [
        {"group": "data.sources", "path": plan.data.files[0].path, "format": "r1-think", "records": 200,
         "bad_records": 0}]
    assert Path(plan.data.cache).name == plan.data.fingerprint and (Path(plan.data.cache) / "train").is_dir()
    summary = RunSummary.load(out)
    assert summary.data.cache == plan.data.cache  # training loaded what pre-flight tokenized
    assert summary.data.train.kept == plan.data.splits["train"].kept
    assert oct((out / RUN_PLAN).stat().st_mode & 0o777) == "0o600"  # it holds the resolved recipe


def test_a_run_started_directly_decides_once_itself(tiny_model_dir, tmp_path, monkeypatch):
    """run() with no plan written for its launch (an old plan of another launch beside it is not used): its own
    pre-flight decides once, it tokenizes once, and it records the plan, data manifest included."""
    from medscale.train.run import run

    out = tmp_path / "out"
    recipe = load_recipe("tiny-demo", _overrides(tiny_model_dir, out))
    from medscale.preflight import check

    stale = check(recipe, devices=True, read_data=False, registry=False).plan
    stale.memory.recompute_layers = None  # what this run must not take: every layer recomputed
    stale.save(out, "2001-01-01T00:00:00+00:00")
    calls = _count(monkeypatch)
    run(recipe)
    assert calls == {"check": 1, "decide": 1, "_build": 1, "iter_conversations": 1}
    plan = RunPlan.load(out)
    assert plan.launch != "2001-01-01T00:00:00+00:00" and plan.memory.recompute_layers == 0
    assert plan.data.files[0].records == 200 and Path(plan.data.cache).is_dir()


def test_a_plan_written_before_its_data_was_typed_loads_and_keeps_its_layout(tmp_path):
    """run_plan.json as the previous version wrote it (its data manifest's files and splits plain dicts, a source
    whose counts its cache entry did not keep) reads as the typed manifest, and written again is the same file."""
    from medscale.jobs.record import SplitStats
    from medscale.jobs.runplan import SourceFile

    old = {"format": 1, "launch": "2026-12-01T10:00:00+00:00", "host": "node1", "recipe": "name: old\n",
           "fingerprint": "fp", "model_dir": "/models/m",
           "memory": {"gpu_mem_gb": None, "gpus": 0, "recompute_layers": 0, "token_budget": None, "problems": [],
                      "micro_batch": None, "accumulation": None, "batch_note": "", "components": None},
           "data": {"fingerprint": "abc", "cache": "/cache/abc",
                    "files": [{"group": "data.sources", "path": "a.jsonl", "format": "r1-think", "records": 200,
                               "bad_records": 1},
                              {"group": "data.eval_sources", "path": "b.jsonl", "format": "auto"}],
                    "splits": {"train": {"records": 200, "kept": 198, "dropped": 2, "formats": {"r1-think": 200}}}},
           "dist": {"rank": 0, "local_rank": 0, "world_size": 1, "procs_per_node": 1, "launched": False}}
    (tmp_path / RUN_PLAN).write_text(json.dumps(old, indent=2), encoding="utf-8")
    plan = RunPlan.load(tmp_path)
    assert plan is not None and all(isinstance(f, SourceFile) for f in plan.data.files)
    assert (plan.data.files[0].records, plan.data.files[1].records) == (200, None)
    assert isinstance(plan.data.splits["train"], SplitStats) and plan.data.splits["train"].kept == 198
    plan.save(tmp_path / "again", old["launch"])
    assert json.loads((tmp_path / "again" / RUN_PLAN).read_text(encoding="utf-8")) == old


def counted_in_every_process(tmp_path: Path) -> tuple[dict, Path]:
    """An environment whose Python processes (the CLI, accelerate, every rank) count each call of the memory plan,
    pre-flight and the tokenizing pass, through a sitecustomize that wraps the real functions, and the file that
    gets one line per call: "RANK name" ("launcher" in a process without a rank). For a run of real processes
    (tests/test_launch.py's two-process run)."""
    hooks, log = tmp_path / "hooks", tmp_path / "calls.log"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import os\n"
        "import medscale.data.pipeline as pipeline, medscale.plan as plan, medscale.preflight as preflight\n"
        "def wrap(module, name):\n"
        "    real = getattr(module, name)\n"
        "    def counted(*a, **kw):\n"
        f"        with open({str(log)!r}, 'a') as f:\n"
        "            f.write(os.environ.get('RANK', 'launcher') + ' ' + name + '\\n')\n"
        "        return real(*a, **kw)\n"
        "    setattr(module, name, counted)\n"
        "for m, n in ((plan, 'decide'), (preflight, 'check'), (pipeline, '_build')):\n"
        "    wrap(m, n)\n")
    path = os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"PYTHONPATH": path}, log
