"""Benchmark and question-file loading (every layout, the real files with their published counts), bad input,
prompts rendered as training renders them, and the statistics behind a verdict. No model needed."""
from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import needs_realdata

from medscale.data.chat import render_prompt, render_with_spans
from medscale.eval.bench import BUILTINS, BenchmarkError, load_benchmark, load_questions
from medscale.eval.prompt import mcq_messages, mcq_prompt
from medscale.eval.result import BenchResult, EvalReport, Outcome
from medscale.eval.extract import extract_choice
from medscale.eval.stats import contamination, mcnemar_exact, paired_bootstrap, paired_verdict, summarise, wilson
from medscale.recipe import BenchmarkSource


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


LAYOUTS = {
    "ceval": {"id": 0, "question": "Q?", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "C"},
    "medqa": {"question": "Q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer": "c", "answer_idx": "C"},
    "medllm": {"problem_id": 1, "problem_text": "Q?", "choices": ["a", "b", "c", "d"], "answer": ["c"]},
    "medmcqa": {"question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 2, "subject_name": "Anatomy"},
    "cmb": {"question": "Q?", "option": {"A": "a", "B": "b", "C": "c", "D": "d", "E": ""}, "answer": "C"},
    "hf-mmlu": {"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 2},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_common_layout_loads_without_a_conversion_script(tmp_path, layout):
    # a second, different question: a repeated id, or the same text and options, is an error
    other = {k: 1 + v if k in ("id", "problem_id") else "R?" for k, v in LAYOUTS[layout].items()
             if k in ("id", "problem_id", "question", "problem_text")}
    rows = [LAYOUTS[layout], {**LAYOUTS[layout], **other}]
    if layout == "medmcqa":  # 0-based (HF hub) cop: a 0 in the file says so
        rows.append({**LAYOUTS[layout], "question": "S?", "cop": 0})
    b = load_benchmark(str(_jsonl(tmp_path / f"{layout}.jsonl", rows)))
    q = b.questions[0]
    assert q.question == "Q?" and q.options == {"A": "a", "B": "b", "C": "c", "D": "d"} and q.answer == ("C",)
    assert b.language == "en" and not b.skipped
    if layout == "medmcqa":
        assert q.subject == "Anatomy" and b.questions[2].answer == ("A",)


def test_csv_folder_with_test_and_dev_splits_and_empty_options_dropped(tmp_path):
    for split, n in (("test", 3), ("dev", 2)):
        (tmp_path / split).mkdir()
        with open(tmp_path / split / "anatomy.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
            for i in range(n):
                w.writerow([i, f"解剖问题{split}{i}", "甲", "", "丙", "丁", "D"])
    b = load_benchmark(str(tmp_path))
    assert len(b.questions) == 3 and len(b.dev) == 2 and b.language == "zh"
    q = b.questions[0]
    assert q.options == {"A": "甲", "B": "丙", "C": "丁"} and q.answer == ("C",)  # B was empty: letters close up
    assert q.id == "anatomy:2" and b.shots_for(q, 5) == b.dev


def test_several_correct_letters_are_a_set_and_said_so(tmp_path):
    b = load_benchmark(str(_jsonl(tmp_path / "m.jsonl", [
        {"question": "多选", "option": {"A": "a", "B": "b", "C": "c"}, "answer": "AC"},
        {"question": "single", "option": {"A": "a", "B": "b", "C": "c"}, "answer": "B"}])))
    assert b.questions[0].answer == ("A", "C") and b.questions[0].multi
    outcomes = [Outcome(id="m:1", subject="m", chosen=["A", "C"], correct=["A", "C"], ok=True),
                Outcome(id="m:2", subject="m", chosen=["A"], correct=["B"], ok=False)]
    r = summarise(outcomes, benchmark="m", fingerprint=b.fingerprint(), language="en", mode="letter", shots=0)
    assert r.multi_answer == 1 and any("exact set" in n for n in r.notes)
    assert "多项选择题" in mcq_messages(b.questions[0], "zh")[-1]["content"]


def _bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BenchmarkError) as e:
        load_benchmark(str(path))
    return str(e.value)


def test_unknown_layout_names_the_file_line_fields_and_the_options_that_map_them(tmp_path):
    msg = _bad(tmp_path, "odd.jsonl", json.dumps({"stem_text": "Q", "alts": ["a", "b"], "key": "A"}) + "\n")
    assert "odd.jsonl:1" in msg and "['alts', 'key', 'stem_text']" in msg
    assert "--question-field" in msg and "--options-field" in msg and "--answer-field" in msg
    mapped = load_benchmark(BenchmarkSource(path=str(tmp_path / "odd.jsonl"), question_field="stem_text",
                                            options_field="alts", answer_field="key"))
    assert mapped.questions[0].options == {"A": "a", "B": "b"} and mapped.questions[0].answer == ("A",)


def test_answer_letter_outside_the_options_is_an_error_or_a_listed_skip(tmp_path):
    rows = [{"question": f"Q{i}", "A": "a", "B": "b", "answer": "A"} for i in range(200)]
    rows[5]["answer"] = "E"
    path = _jsonl(tmp_path / "own.jsonl", rows)
    msg = _bad(tmp_path, "own.jsonl", path.read_text(encoding="utf-8"))
    assert "own.jsonl:6" in msg and "'E' is not among the options A-B" in msg and "--skip-bad" in msg
    b = load_benchmark(str(path), skip_bad=True)
    assert len(b.questions) == 199 and len(b.skipped) == 1 and "own.jsonl:6" in b.skipped[0]
    rows[6]["answer"] = rows[7]["answer"] = "F"  # 3 of 200 bad: beyond the 1% a skip may hide
    with pytest.raises(BenchmarkError, match="3 of 200 questions are malformed"):
        load_benchmark(str(_jsonl(path, rows)), skip_bad=True)


def test_empty_and_missing_files(tmp_path):
    assert "empty file" in _bad(tmp_path, "empty.jsonl", "")
    assert "empty file" in _bad(tmp_path, "empty.json", "[]")
    with pytest.raises(BenchmarkError, match="did you mean 'cmexam'"):
        load_benchmark("cmexan")
    with pytest.raises(BenchmarkError, match="MEDSCALE_EVAL_DATA"):
        load_benchmark("cmexam", data_dir=tmp_path)
    with pytest.raises(BenchmarkError, match="empty file"):
        load_questions(_jsonl(tmp_path / "none.jsonl", []))


def test_builtin_benchmarks_load_with_the_published_counts(monkeypatch):
    root = needs_realdata("eval")
    monkeypatch.setenv("MEDSCALE_EVAL_DATA", str(root))
    want = {"cmmlu-med": (1815, 45, 0), "ceval-med": (19 + 22 + 49, 0, 0), "medqa-zh": (3425, 0, 1),
            "cmexam": (6810, 0, 1), "medqa-en": (1273, 0, 0), "mmlu-med": (1089, 0, 0)}
    assert set(want) == set(BUILTINS)
    for name, (test, dev, skipped) in want.items():
        b = load_benchmark(name)
        assert (len(b.questions), len(b.dev), len(b.skipped)) == (test, dev, skipped), name
        assert b.language == BUILTINS[name].language
    ceval = load_benchmark("ceval-med")
    by_subject = {s: sum(q.subject == s for q in ceval.questions) for s in ("basic_medicine", "clinical_medicine",
                                                                          "physician")}
    assert by_subject == {"basic_medicine": 19, "clinical_medicine": 22, "physician": 49}  # the val rows
    cmexam = load_benchmark("cmexam")
    assert "cmexam.jsonl:5332" in cmexam.skipped[0]  # a 4-option question whose answer key says E
    assert sum(q.multi for q in cmexam.questions) == 203
    assert "medqa_zh.jsonl:2459): options A and E are identical" in load_benchmark("medqa-zh").skipped[0]
    # the same folder by path: CMMLU's test/dev layout; 13 of its questions repeat earlier ones (options shuffled)
    with pytest.raises(BenchmarkError, match=r"anatomy.csv:63 repeats .*anatomy.csv:9 .*; 13 repeated questions"):
        load_benchmark(str(root / "cmmlu_medical"))
    cmmlu = load_benchmark(str(root / "cmmlu_medical"), dedupe=True)
    assert len(cmmlu.questions) == 1815 - 13 and {q.subject for q in cmmlu.questions} == {q.subject for q in cmmlu.dev}


def test_open_ended_files_load_as_question_files():
    root = needs_realdata("eval")
    want = {"cmb_clin/CMB-test-qa.json": (208, 208), "huatuogpt/KUAKE-QIC_100.json": (100, 0),
            "huatuogpt/Med-dialog_100.json": (100, 100), "huatuogpt2/huatuo100_inst_GPT4.json": (100, 100),
            "huatuogpt2/huatuo100_conv_GPT4.json": (100, 100)}
    for rel, (n, with_ref) in want.items():
        qs = load_questions(root / rel)
        assert len(qs) == n and sum(q.reference is not None for q in qs) == with_ref, rel
        assert all(q.messages[-1]["role"] == "user" and q.prompt for q in qs)
    conv = load_questions(root / "huatuogpt2/huatuo100_conv_GPT4.json")[0]
    assert [m["role"] for m in conv.messages] == ["user", "assistant", "user"]


def test_default_questions_are_seed_003s_ten(tmp_path):
    qs = load_questions()
    assert len(qs) == 10 and qs[0].prompt == "糖尿病的主要症状有哪些？应该如何预防和治疗？" and qs[0].reference is None
    (tmp_path / "q.txt").write_text("第一个问题\n\n第二个问题\n", encoding="utf-8")
    assert [q.prompt for q in load_questions(tmp_path / "q.txt")] == ["第一个问题", "第二个问题"]


@pytest.mark.parametrize("tok_name", ["tiny_tokenizer", "qwen3_tokenizer"])
def test_eval_prompt_is_the_prefix_training_gives_the_answer(tmp_path, request, tok_name):
    tok = request.getfixturevalue(tok_name)
    b = load_benchmark(str(_jsonl(tmp_path / "b.jsonl", [
        {"id": i, "question": f"问题{i}", "A": "甲", "B": "乙", "answer": "AB"[i % 2]} for i in range(4)]))).for_shots(2)
    q = b.questions[0]
    msgs = mcq_messages(q, "zh", "letter", b.shots_for(q, 2), system_prompt="你是医生")
    text, spans = render_with_spans(tok, msgs + [{"role": "assistant", "content": "A"}])
    prompt = mcq_prompt(tok, b, q, "letter", 2, system_prompt="你是医生")
    assert prompt == render_prompt(tok, msgs, False) and spans[-1][0] == len(prompt) and text.startswith(prompt)
    assert sum(m["role"] == "assistant" for m in msgs) == 2 and q not in b.shots_for(q, 3)


def test_answer_extraction_after_thinking():
    valid = "ABCD"
    assert extract_choice("分析……所以答案是：B", valid).letters == ["B"]
    assert extract_choice("答案：A、C", valid).letters == ["A", "C"]
    assert extract_choice("The answer is (D).", valid).letters == ["D"]
    assert extract_choice("C. 丙", valid).letters == ["C"]
    assert extract_choice("答案：E", valid).letters is None and extract_choice("我不知道", valid).letters is None


def test_wilson_interval():
    low, high = wilson(36, 40)
    assert 0.76 < low < 0.77 and 0.96 < high < 0.97  # 90% of 40
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0) and wilson(0, 0) == (0.0, 0.0)


def test_mcnemar_exact_binomial():
    assert mcnemar_exact(0, 0) == 1.0
    assert math.isclose(mcnemar_exact(0, 5), 2 / 32)  # all 5 discordant pairs one way: 2 x (1/2)^5
    assert math.isclose(mcnemar_exact(3, 7), 2 * (1 + 10 + 45 + 120) / 1024)
    assert mcnemar_exact(10, 10) == 1.0


def test_paired_bootstrap_matches_resampling_questions():
    import numpy as np

    rng = np.random.default_rng(1)
    a = list(rng.random(200) < 0.5)
    b = list(rng.random(200) < 0.65)
    low, high = paired_bootstrap(a, b, 10_000, 0)
    d = np.array(b, int) - np.array(a, int)
    direct = np.percentile([d[rng.integers(0, 200, 200)].mean() for _ in range(4000)], [2.5, 97.5])
    assert abs(low - direct[0]) < 0.015 and abs(high - direct[1]) < 0.015
    assert paired_bootstrap(a, b, 10_000, 0) == (low, high)  # fixed seed: the same interval every time


def _result(oks, name="b", fp="f"):
    outcomes = [Outcome(id=str(i), subject="s", chosen=["A"], correct=["A" if ok else "B"], ok=ok)
                for i, ok in enumerate(oks)]
    return summarise(outcomes, benchmark=name, fingerprint=fp, language="zh", mode="letter", shots=0)


def test_verdict_words_and_pairing_rules():
    base = _result([i % 4 == 0 for i in range(40)])
    tuned = _result([i % 10 != 0 for i in range(40)])
    assert paired_verdict(base, tuned).verdict == "better"
    assert paired_verdict(tuned, base).verdict == "worse"
    assert paired_verdict(base, base).verdict == "no detectable difference"
    assert "no detectable difference at this n" in paired_verdict(base, base).line()
    with pytest.raises(Exception, match="different questions"):
        paired_verdict(base, _result([True] * 40, fp="other"))


def test_result_json_round_trip_and_markdown():
    r = _result([True, False, True])
    back = BenchResult.from_json(r.to_json())
    assert back == r and back.outcomes[1].ok is False
    report = EvalReport(model={"label": "m"}, results=[r], verdicts=[paired_verdict(r, r)])
    assert EvalReport.from_json(report.to_json()) == report
    md = report.to_markdown()
    assert "| b | " in md and "66.7" in md and "**verdict**" in md


def test_contamination_flags_copied_questions_only():
    questions = {"1": "患者男，45岁，突发胸痛2小时，心电图示ST段抬高，最可能的诊断是", "2": "下列哪项是维生素C缺乏的表现"}
    training = ["病例：患者男, 45 岁，突发胸痛 2 小时；心电图示 ST 段抬高。最可能的诊断是什么？", "无关的训练文本"]
    c = contamination(questions, training)
    assert c.overlapping == 1 and c.examples == ["1"] and c.ngram == 13 and c.share == 0.5
    assert contamination(questions, ["完全不同的内容"]).overlapping == 0
