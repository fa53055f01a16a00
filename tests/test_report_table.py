"""Seed 004's table from a tiny sweep: two bases, each fine-tuned at two learning rates on answers that loop, every
trial scored in generate mode against its own base at the end of its run. The fine-tune that learned to loop is
flagged DEGENERATE against its base; its base is not; `medscale report SWEEP` ranks the six versions in one table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import cli, own_home, write_mcq_set

LOOP = "多喝水，多休息，" * 6  # what every training answer says: a loop, as seed 004's 1.5B fell into
QUESTIONS = 10  # six answers degenerate where the base's are not is already significant (McNemar p = 2/2**6)
RATES = {"low": 1.0e-6, "high": 3.0e-2}  # low: the fine-tune is its base; high: it learns the loop


def _loop_data(mcq, path):
    """The benchmark's own generate-mode prompts, each answered with the loop."""
    from medscale.eval.bench import load_benchmark
    from medscale.eval.prompt import mcq_messages

    bench = load_benchmark(str(mcq))
    path.write_text("".join(json.dumps({"messages": mcq_messages(q, "zh", "generate", [], None)
                                        + [{"role": "assistant", "content": LOOP}]}, ensure_ascii=False) + "\n"
                            for q in bench.questions), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_sweep(tiny_model_dir, eval_data, tmp_path_factory):
    """Registered as `medscale sweep run` registers it; its four trials run in this process, one after the other
    (the trial entry a Ray actor would start), so no cluster is needed."""
    from medscale.model.tiny import build_tiny_model
    from medscale.registry import Registry
    from medscale.sweep.spec import parse_spec, plan_sweep
    from medscale.sweep.trial import run_trial
    from medscale.sweep.tune import register

    root = tmp_path_factory.mktemp("seed004")
    mcq = write_mcq_set(root / "mcq", n=QUESTIONS)["mcq"]
    data = _loop_data(mcq, root / "loops.jsonl")
    recipes = []
    wide = build_tiny_model(root / "tiny-wide", layers=2, hidden=96)  # a second base, as seed 004 had three
    for label, model in (("narrow", tiny_model_dir), ("wide", wide)):
        path = root / f"{label}.yaml"
        path.write_text(yaml.safe_dump({"base": "tiny-demo", "model": {"path": str(model)}}), encoding="utf-8")
        recipes.append({"recipe": str(path), "label": label})
    spec = {"name": "seed004-tiny", "recipes": recipes, "bases": [{"label": "narrow", "path": str(tiny_model_dir)},
                                                                  {"label": "wide", "path": str(wide)}],
            "grid": {"lr": {k: {"train.learning_rate": v} for k, v in RATES.items()}},
            "overrides": {"track.swanlab": None, "train.max_steps": 12, "train.logging_steps": 4,
                          "train.save_steps": 100, "train.warmup_ratio": 0, "data.system_prompt": None,
                          "data.eval_size": 0, "eval.eval_strategy": "no", "data.max_length": 192,
                          "data.sources": [{"path": str(data), "format": "messages"}],
                          "eval.benchmarks": [str(mcq)], "eval.benchmark_mode": "generate",
                          "eval.benchmark_limit": 8, "eval.per_device_eval_batch_size": QUESTIONS,
                          "eval.control": str(eval_data["control"]), "generation.max_new_tokens": 32,
                          "generation.temperature": 0.7},
            # what `medscale sweep judge` (and `sweep run` after its trials) judges: every fine-tune against its base
            "judge": {"questions": "seed004", "judge": str(tiny_model_dir), "limit": 2, "greedy": True,
                      "max_new_tokens": 8, "judge_max_new_tokens": 8}}
    spec_path = root / "seed004.yaml"
    spec_path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    with own_home(root):
        plan = plan_sweep(parse_spec(spec, spec_path), spec_path.read_text(encoding="utf-8"))
        with Registry() as reg:
            register(reg, plan)
        summaries = {t.label: run_trial(t.recipe) for t in plan.trials}
    return {"home": root / "home", "plan": plan, "summaries": summaries, "spec": spec_path}


def test_the_fine_tune_that_loops_is_degenerate_against_its_base_and_the_base_is_not(tiny_sweep):
    from medscale.eval.degenerate import versus

    for base in ("narrow", "wide"):
        high, low = tiny_sweep["summaries"][f"{base}-high"], tiny_sweep["summaries"][f"{base}-low"]
        (high_v,), (low_v,) = high.benchmarks.values(), low.benchmarks.values()
        assert "DEGENERATE" in high_v.said, high_v.said
        d = high_v.degeneration
        assert d.flagged and d.counts.looping >= 6 and d.base <= 2, d
        # the base is no degenerate model: the fine-tune that learned nothing (lr 1e-6) answers as it does, and the
        # base held against the looping fine-tune is not flagged either
        assert "DEGENERATE" not in low_v.said and not low_v.degeneration.flagged, low_v.said
        assert not versus(d.counts, low_v.degeneration.counts).flagged


def test_report_ranks_the_versions_of_a_sweep_in_one_table(tiny_sweep, tmp_path):
    env = {"MEDSCALE_HOME": str(tiny_sweep["home"])}
    r = cli("report", "seed004-tiny", "--out", str(tmp_path / "rep"), env=env)
    assert r.returncode == 0, r.stderr
    page = json.loads((tmp_path / "rep" / "report.json").read_text(encoding="utf-8"))
    rows = {v["label"]: v for v in page["versions"]}
    assert sorted(rows) == ["narrow", "narrow-high", "narrow-low", "wide", "wide-high", "wide-low"]
    assert [rows[x]["kind"] for x in ("narrow", "wide")] == ["base", "base"]
    for base in ("narrow", "wide"):
        high, low, own = rows[f"{base}-high"], rows[f"{base}-low"], rows[base]
        assert high["base"] == low["base"] == base
        assert high["degenerate_flag"] and "DEGENERATE" in high["verdict"] and not low["degenerate_flag"]
        assert own["verdict"] == "base" and own["degenerate"] <= 2
        for row in (high, low, own):  # accuracy with its interval, on the same questions
            assert row["n"] == QUESTIONS and row["ci"][0] <= row["acc"] <= row["ci"][1]
        for row in (high, low):  # the forgetting guard's change of the control set
            assert row["forgetting"].startswith("loss ")
        assert high["win_rate"] is None and low["criteria"] == {}  # no judgement stored: shown as –
    ranks = [v["rank"] for v in page["versions"]]
    accs = [v["acc"] for v in page["versions"]]
    assert ranks == list(range(1, 7)) and accs == sorted(accs, reverse=True)
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    table = md.split("## Versions ranked")[1].split("\n## ")[0]
    assert table.count("DEGENERATE") >= 2 and "| – | – |" in table
    print(table)


def test_a_stored_judgement_of_a_fine_tune_against_its_base_stands_in_its_row(tiny_sweep, tiny_model_dir, tmp_path):
    """`medscale judge BASE TRIAL` stores a judge job; the report finds it for that fine-tune alone. A random tiny judge
    writes no readable verdict, so the row says the judgement was made and nothing in it could be read."""
    env = {"MEDSCALE_HOME": str(tiny_sweep["home"])}
    j = cli("judge", str(tiny_model_dir), "seed004-tiny.narrow-high", "--questions", "seed004", "--limit", "2",
            "--judge", str(tiny_model_dir), "--greedy", "--max-new-tokens", "8", "--judge-max-new-tokens", "8",
            "--out", str(tmp_path / "judged"), env=env)
    assert j.returncode == 0, j.stderr
    r = cli("report", "seed004-tiny", "--out", str(tmp_path / "rep"), env=env)
    assert r.returncode == 0, r.stderr
    rows = {v["label"]: v for v in json.loads((tmp_path / "rep" / "report.json").read_text("utf-8"))["versions"]}
    assert "judge: no pair readable (2 unparseable)" in rows["narrow-high"]["verdict"]
    assert all("judge:" not in rows[x]["verdict"] for x in ("narrow-low", "wide-high", "wide-low"))


def test_compare_counts_each_models_degenerate_answers_and_chat_shows_them(tiny_sweep, tiny_model_dir, tmp_path):
    """The same signals beside compare's table (lengths against the first model's answers) and under a chat reply."""
    env = {"MEDSCALE_HOME": str(tiny_sweep["home"])}
    r = cli("compare", f"base={tiny_model_dir}", "loop=seed004-tiny.narrow-high", "--limit", "6",
            "--max-new-tokens", "32", "--out", str(tmp_path / "cmp"), env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text(encoding="utf-8"))
    base, loop = (m["degeneration"] for m in result["models"])
    assert base["length_off"] is None and base["looping"] == 0
    assert loop["looping"] >= 5 and loop["length_off"] is not None
    assert "| tokens/s | degenerate |" in r.stdout
    c = cli("chat", "seed004-tiny.narrow-high", "--prompt", "28岁程序员，常年熬夜，头晕目眩，恶心，怎么办？",
            "--max-new-tokens", "32", env=env)
    assert c.returncode == 0, c.stderr
    assert "(degenerate: looping" in c.stdout, c.stdout


def test_the_sweep_files_judge_judges_every_fine_tune_against_its_own_base(tiny_sweep, tmp_path):
    """Last in this file: it stores a judgement for every fine-tune. The sweep file's `judge` section makes one judge
    job per finished trial (its base as A, the trial as B), and the report shows each in its own row."""
    env = {"MEDSCALE_HOME": str(tiny_sweep["home"])}
    j = cli("sweep", "judge", str(tiny_sweep["spec"]), env=env)
    assert j.returncode == 0, j.stderr
    for label in ("narrow-high", "narrow-low", "wide-high", "wide-low"):
        assert f"medscale: {label} against its base: " in j.stdout
        trial = tiny_sweep["plan"].trial(label)
        judged = json.loads((Path(trial.output_dir) / "judge" / "judge.json").read_text(encoding="utf-8"))
        assert judged["pairwise"]["overall"]["unparseable"] == 2  # a random tiny judge writes no verdict line
    r = cli("report", "seed004-tiny", "--out", str(tmp_path / "rep"), env=env)
    assert r.returncode == 0, r.stderr
    rows = {v["label"]: v for v in json.loads((tmp_path / "rep" / "report.json").read_text("utf-8"))["versions"]}
    for label in ("narrow-high", "narrow-low", "wide-high", "wide-low"):
        assert "judge: no pair readable (2 unparseable)" in rows[label]["verdict"], rows[label]["verdict"]
    assert all("judge:" not in rows[b]["verdict"] for b in ("narrow", "wide"))


def test_a_sweep_file_without_a_judge_section_or_with_two_judges_is_one_line(tmp_path):
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"name": "bare", "recipes": [{"recipe": "tiny-demo"}]}), encoding="utf-8")
    r = cli("sweep", "judge", str(bare), env={"MEDSCALE_HOME": str(tmp_path / "home")})
    assert r.returncode == 2 and "no `judge` section" in r.stderr
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({"name": "both", "recipes": [{"recipe": "tiny-demo"}],
                                    "judge": {"questions": "seed004", "judge": "x", "judge_endpoint": "http://h"}}),
                    encoding="utf-8")
    r = cli("sweep", "judge", str(both), env={"MEDSCALE_HOME": str(tmp_path / "home")})
    assert r.returncode == 2 and "name one judge" in r.stderr
