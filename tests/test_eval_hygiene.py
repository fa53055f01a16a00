"""Issue 22's benchmark hygiene, the rest of it: ceval-med scores C-Eval's val split (its test labels are unpublished)
and says so; a recipe's benchmarks take the command line's dedupe / max_bad, in pre-flight and at eval steps."""
from __future__ import annotations

import json

import pytest
from conftest import cli, needs_realdata

from medscale.eval.bench import load_benchmark
from medscale.eval.run import load_benchmarks


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _ceval_export(folder, subject, val: int, test: int):
    """A subject file as the C-Eval export writes it: val rows, then test rows, each part's ids from 0. The test
    answers are what a copy has (empty as published, or unofficial ones)."""
    rows = [{"id": i, "question": f"{subject}验证题{i}", "A": "甲", "B": "乙", "C": "丙", "D": "丁",
             "answer": "ABCD"[i % 4], "explanation": ""} for i in range(val)]
    rows += [{"id": i, "question": f"{subject}测试题{i}", "A": "甲", "B": "乙", "C": "丙", "D": "丁",
              "answer": "" if i % 2 else "B", "explanation": ""} for i in range(test)]
    return _jsonl(folder / f"{subject}.jsonl", rows)


# ---- ceval-med scores the val split


def test_ceval_med_scores_the_val_rows_and_says_so(tmp_path):
    root = tmp_path / "eval"
    for subject, val, test in (("basic_medicine", 4, 7), ("physician", 5, 9)):
        _ceval_export(root / "ceval_medical", subject, val, test)
    b = load_benchmark("ceval-med", data_dir=root)
    assert [q.question for q in b.questions] == ([f"basic_medicine验证题{i}" for i in range(4)] +
                                                 [f"physician验证题{i}" for i in range(5)])
    assert not b.skipped and not b.dev and b.total == 9  # the test rows (half without answers) are not read
    assert b.split == "val rows (test rows not scored)"
    assert any(n.startswith("16 C-Eval test rows are not scored: C-Eval publishes no test labels") for n in b.notes)
    # the same files by path are the same benchmark; k-shot examples come out of the val rows, named
    assert load_benchmark(str(root / "ceval_medical")).fingerprint() == b.fingerprint()
    (shot,) = load_benchmarks(["ceval-med"], str(root), shots=2)
    assert len(shot.dev) == 2 and shot.total == 7 and shot.split == "val rows (test rows not scored) less 2 examples"
    assert all("验证题" in q.question for q in shot.dev)


def test_ceval_med_real_files_give_their_90_val_rows(monkeypatch):
    monkeypatch.setenv("MEDSCALE_EVAL_DATA", str(needs_realdata("eval")))
    b = load_benchmark("ceval-med")
    assert {s: sum(q.subject == s for q in b.questions) for s in ("basic_medicine", "clinical_medicine",
                                                                  "physician")} == {
        "basic_medicine": 19, "clinical_medicine": 22, "physician": 49}
    assert [q.source.rsplit("/", 1)[1] for q in b.questions[:2]] == ["basic_medicine.jsonl:1", "basic_medicine.jsonl:2"]
    assert b.split == "val rows (test rows not scored)" and b.total == 90 and not b.dev
    assert any(n.startswith("818 C-Eval test rows are not scored") for n in b.notes)


def test_eval_result_names_the_val_split_of_ceval_med(tiny_model_dir, tmp_path):
    root = tmp_path / "eval"
    _ceval_export(root / "ceval_medical", "clinical_medicine", 6, 10)
    r = cli("eval", str(tiny_model_dir), "--bench", "ceval-med", "--data-dir", str(root), "--json")
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert (res["split"], res["total"], res["n"]) == ("val rows (test rows not scored)", 6, 6)
    assert any("10 C-Eval test rows are not scored" in n for n in res["notes"])


# ---- a recipe's benchmarks take the command line's dedupe and max_bad


def _questions(n):
    return [{"id": f"q{i}", "question": f"Question {i}?", "A": f"a{i}", "B": f"b{i}", "C": f"c{i}", "D": f"d{i}",
             "answer": "ABCD"[i % 4]} for i in range(n)]


def _recipe(tiny_model_dir, tmp_path, entry: str):
    from medscale.recipe import load_recipe

    return load_recipe("tiny-demo", [f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path}/run",
                                     f"eval.benchmarks=[{entry}]"])


def _preflight_errors(recipe) -> str:
    from medscale.preflight import check

    return "\n".join(f.message for f in check(recipe, devices=False, registry=False).errors)


def test_recipe_benchmark_keys_are_validated_like_the_flags():
    import yaml

    from medscale.recipe import RecipeError, load_recipe, recipe_keys, validate

    for entry, message in (("{path: /x.jsonl, max_bad: 1.5}", "max_bad: Input should be less than or equal to 1"),
                           ("{path: /x.jsonl, max_bad: -0.1}", "max_bad: Input should be greater than or equal"),
                           ("{path: /x.jsonl, dedupe: maybe}", "dedupe: expected true or false"),
                           ("{path: /x.jsonl, max_bad: 0.05, skip_bad: false}",
                            "/x.jsonl: max_bad tolerates malformed questions and skip_bad: false stops at the first")):
        with pytest.raises(RecipeError, match=message):
            load_recipe("tiny-demo", [f"eval.benchmarks=[{entry}]"])
    r = load_recipe("tiny-demo", ["eval.benchmarks=[{path: /x.jsonl, max_bad: 0.05, dedupe: true}]"])
    (src,) = r.eval.benchmarks
    assert (src.skip_bad, src.max_bad, src.dedupe) == (True, 0.05, True)  # max_bad implies skip_bad, as --max-bad
    again = validate(yaml.safe_load(r.to_yaml()))  # the resolved recipe reloads to the same
    assert again.eval.benchmarks == r.eval.benchmarks and again.fingerprint() == r.fingerprint()
    documented = {r.key: r.description for r in recipe_keys() if r.section == "eval"}
    assert "like --dedupe" in documented["benchmarks[].dedupe"] and "like --max-bad" in documented[
        "benchmarks[].max_bad"] and "max_bad" in documented["benchmarks[].skip_bad"]


def test_a_recipe_benchmark_with_a_repeat_fails_preflight_naming_dedupe_and_passes_with_it(tiny_model_dir, tmp_path):
    from medscale.eval.bench import BenchmarkError
    from medscale.eval.callback import BenchmarkCallback

    path = _jsonl(tmp_path / "twice.jsonl", _questions(20) + _questions(1))
    strict = _recipe(tiny_model_dir, tmp_path, f"{{path: {path}}}")
    errors = _preflight_errors(strict)
    assert f"eval.benchmarks: {path}:21 repeats {path}:1 (the same id 'q0')" in errors
    assert f"in a recipe: eval.benchmarks: [{{path: {path}, dedupe: true}}]" in errors
    with pytest.raises(BenchmarkError, match="dedupe: true"):  # the eval-steps callback reads it the same way
        BenchmarkCallback.from_recipe(strict)
    deduped = _recipe(tiny_model_dir, tmp_path, f"{{path: {path}, dedupe: true}}")
    assert _preflight_errors(deduped) == ""
    (bench,) = BenchmarkCallback.from_recipe(deduped).benchmarks
    assert bench.total == 20 and any("--dedupe dropped 1 repeated questions" in n for n in bench.notes)


def test_a_recipe_benchmark_scores_the_usable_questions_up_to_its_max_bad(tiny_model_dir, tmp_path):
    from medscale.eval.callback import BenchmarkCallback

    rows = _questions(100)
    for i in (10, 40, 70):  # options that were images: empty in the export
        rows[i].update(A="", B="", C="", D="")
    path = _jsonl(tmp_path / "exam.jsonl", rows)
    errors = _preflight_errors(_recipe(tiny_model_dir, tmp_path, f"{{path: {path}, skip_bad: true}}"))
    assert "3 of 100 questions are malformed, more than --max-bad 0.01 allows" in errors
    assert f"(in a recipe: eval.benchmarks: [{{path: {path}, max_bad: 0.03}}])" in errors
    tolerant = _recipe(tiny_model_dir, tmp_path, f"{{path: {path}, max_bad: 0.05}}")
    assert _preflight_errors(tolerant) == ""
    (bench,) = BenchmarkCallback.from_recipe(tolerant).benchmarks
    assert bench.total == 97 and [s.split(" ")[0] for s in bench.skipped] == ["exam:11", "exam:41", "exam:71"]
