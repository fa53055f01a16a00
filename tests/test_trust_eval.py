"""Nothing in a benchmark is miscounted in silence (issue 20 item 2, issue 22's benchmark hygiene) and `eval --out`
is checked before any work (item 7): repeated questions, the answer conventions, k-shot examples that must not be
scored, malformed questions named and counted, and the source, split and count beside every score."""
from __future__ import annotations

import json

import pytest
from conftest import cli, needs_realdata

from medscale.eval.bench import BenchmarkError, load_benchmark
from medscale.eval.run import load_benchmarks


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _questions(n, start=0):
    return [{"id": f"q{i}", "question": f"Question {i}?", "A": f"a{i}", "B": f"b{i}", "C": f"c{i}", "D": f"d{i}",
             "answer": "ABCD"[i % 4]} for i in range(start, start + n)]


def _error(path, **kw) -> str:
    with pytest.raises(BenchmarkError) as e:
        load_benchmark(str(path), **kw)
    return str(e.value)


# ---- item 2: a question asked twice counts twice


def test_a_file_written_in_twice_is_an_error_naming_both_places_and_dedupe_keeps_the_first(tmp_path):
    path = _jsonl(tmp_path / "twice.jsonl", _questions(20) * 2)
    msg = _error(path)
    assert f"{path}:21 repeats {path}:1 (the same id 'q0')" in msg and "20 repeated questions" in msg
    assert "--dedupe" in msg
    b = load_benchmark(str(path), dedupe=True)
    assert len(b.questions) == 20 and [q.source for q in b.questions] == [f"{path}:{n}" for n in range(1, 21)]
    assert any("--dedupe dropped 20 repeated questions" in note for note in b.notes)


def test_repeats_by_id_alone_and_by_text_with_shuffled_options(tmp_path):
    rows = _questions(5)
    rows[3]["id"] = "q1"  # another question under an id already used
    msg = _error(_jsonl(tmp_path / "ids.jsonl", rows))
    assert "ids.jsonl:4 repeats" in msg and "ids.jsonl:2 (the same id 'q1')" in msg
    rows = _questions(5)
    rows.append({**rows[2], "id": "q9", "A": rows[2]["D"], "D": rows[2]["A"], "answer": "D"})  # options shuffled
    msg = _error(_jsonl(tmp_path / "text.jsonl", rows))
    assert "text.jsonl:6 repeats" in msg and "text.jsonl:3 (the same question and options)" in msg
    # a scored question that repeats a k-shot example would be asked with its answer shown
    for split, rows in (("dev", _questions(2)), ("test", _questions(3))):
        (tmp_path / "folder" / split).mkdir(parents=True)
        _jsonl(tmp_path / "folder" / split / "s.jsonl", rows)
    assert "test/s.jsonl:1 repeats" in _error(tmp_path / "folder")


def test_a_published_set_keeps_its_repeats_and_says_so(monkeypatch):
    monkeypatch.setenv("MEDSCALE_EVAL_DATA", str(needs_realdata("eval")))
    mmlu = load_benchmark("mmlu-med")
    assert len(mmlu.questions) == 1089 and any("78 questions repeat an earlier one" in n for n in mmlu.notes)
    assert len(load_benchmark("mmlu-med", dedupe=True).questions) == 1089 - 78


# ---- item 2: integer answers, one stated convention per file


def test_integer_answers_are_read_in_one_stated_convention(tmp_path):
    rows = [{"question": f"Q{i}", "choices": ["a", "b", "c", "d"], "answer": i % 4} for i in range(8)]
    b = load_benchmark(str(_jsonl(tmp_path / "zero.jsonl", rows)))
    assert [q.answer for q in b.questions[:4]] == [("A",), ("B",), ("C",), ("D",)]
    assert any("read counting from 0 (0 = A, 1 = B)" in n for n in b.notes)
    one_based = [{**r, "answer": 1 + r["answer"]} for r in rows]  # 4 of 4 options: no option number 4 from 0
    msg = _error(_jsonl(tmp_path / "out.jsonl", one_based))
    assert "out.jsonl:4" in msg and "answer 4 is outside 0..3: option numbers in this file count from 0" in msg
    rows[5]["answer"] = "B"
    msg = _error(_jsonl(tmp_path / "mixed.jsonl", rows))
    assert "mix conventions: line 1 gives an option number (0), line 6 a letter or text ('B')" in msg
    rows[5]["answer"] = 4
    msg = _error(_jsonl(tmp_path / "both.jsonl", rows))
    assert "line 1 answers 0 (counting options from 0) and line 6 answers 4 of 4 options (counting from 1)" in msg
    # MedMCQA's cop: 1-based in its original release, known from a file that answers 4 of 4 and never 0
    medmcqa = [{"question": f"Q{i}", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1 + i % 4}
               for i in range(4)]
    b = load_benchmark(str(_jsonl(tmp_path / "cop.jsonl", medmcqa)))
    assert [q.answer for q in b.questions] == [("A",), ("B",), ("C",), ("D",)]
    assert any("read counting from 1 (1 = A, 2 = B)" in n for n in b.notes)


# ---- item 2: k-shot examples are never scored


def test_shots_without_a_dev_split_take_examples_out_of_scoring(tmp_path):
    path = _jsonl(tmp_path / "nodev.jsonl", _questions(20))
    (b,) = load_benchmarks([str(path)], shots=3)
    example_ids = {q.id for q in b.dev}
    assert len(b.dev) == 3 and len(b.questions) == 17 and not example_ids & {q.id for q in b.questions}
    assert all([e.id for e in b.shots_for(q, 3)] == [e.id for e in b.dev] for q in b.questions)
    assert any(f"the 3 examples before every question are {', '.join(q.id for q in b.dev)}, taken out of scoring"
               in n for n in b.notes)
    (again,) = load_benchmarks([str(path)], shots=3)  # the same examples every time: base and tuned pair
    assert again.fingerprint() == b.fingerprint() and b.total == 17 and "less 3 examples" in b.split
    (cut,) = load_benchmarks([str(path)], shots=3, limit=10)  # examples set apart first, then the subset
    assert len(cut.questions) == 10 and not {q.id for q in cut.questions} & example_ids
    with pytest.raises(BenchmarkError, match="needs a dev split or more than 5 questions"):
        load_benchmarks([str(_jsonl(tmp_path / "tiny.jsonl", _questions(5)))], shots=5)


# ---- issue 22: benchmark hygiene


def test_an_answer_naming_the_option_field_maps_to_that_option(tmp_path):
    rows = [{"question": f"Q{i}", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "answer": f"op{'abcd'[i]}"}
            for i in range(4)]
    b = load_benchmark(str(_jsonl(tmp_path / "fields.jsonl", rows)))
    assert [q.answer for q in b.questions] == [("A",), ("B",), ("C",), ("D",)]  # not the letter O


def test_identical_options_and_missing_answers_are_caught_at_load_with_their_ids(tmp_path):
    rows = _questions(6)
    rows[1].update(B="same", C="same", answer="C")  # the answer cannot be told from B
    rows[2].update(A="img", B="img", C="img", D="img")  # all four the same
    del rows[3]["answer"]
    rows[4]["answer"] = ""
    rows[5]["answer"] = None
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    assert "bad.jsonl:2 (question bad:2): options B and C are identical ('same')" in _error(path)
    b = load_benchmark(str(path), max_bad=1.0)
    assert [q.id for q in b.questions] == ["bad:1"]
    assert b.skipped == [f"bad:2 ({path}:2): options B and C are identical ('same') and the answer is one of them: "
                         f"a right choice cannot be told from a wrong one",
                         f"bad:3 ({path}:3): options A and B and C and D are identical ('img') and the answer is "
                         f"one of them: a right choice cannot be told from a wrong one",
                         f"bad:4 ({path}:4): missing answer: no field 'answer'",
                         f"bad:5 ({path}:5): missing answer: field 'answer' is empty",
                         f"bad:6 ({path}:6): missing answer: field 'answer' is empty"]
    # a repeated wrong option leaves the question answerable: scored
    rows = _questions(2)
    rows[0].update(B="same", C="same", answer="A")
    assert len(load_benchmark(str(_jsonl(tmp_path / "ok.jsonl", rows))).questions) == 2


def test_skip_bad_scores_the_usable_questions_up_to_max_bad(tmp_path):
    rows = _questions(100)
    for i in (10, 40, 70):  # options that were images: empty in the export
        rows[i].update(A="", B="", C="", D="")
    path = _jsonl(tmp_path / "exam.jsonl", rows)
    msg = _error(path)
    assert "exam.jsonl:11" in msg and "--skip-bad" in msg and "--max-bad" in msg
    msg = _error(path, skip_bad=True)
    assert "3 of 100 questions are malformed, more than --max-bad 0.01 allows" in msg
    assert "pass --max-bad 0.03 to score the 97 usable ones" in msg
    b = load_benchmark(str(path), skip_bad=True, max_bad=0.05)
    assert len(b.questions) == 97 and [s.split(" ")[0] for s in b.skipped] == ["exam:11", "exam:41", "exam:71"]
    assert load_benchmark(str(path), max_bad=0.05).skipped == b.skipped  # --max-bad implies --skip-bad
    with pytest.raises(BenchmarkError, match="--strict stops at the first"):
        load_benchmark(str(path), skip_bad=False, max_bad=0.05)


# ---- through the command: one line and exit 2, or the result that says what it measured


def test_eval_refuses_repeats_and_scores_the_usable_questions_saying_what_it_measured(tiny_model_dir, tmp_path):
    from medscale.registry import Registry

    twice = _jsonl(tmp_path / "twice.jsonl", _questions(20) * 2)
    r = cli("eval", str(tiny_model_dir), "--bench", str(twice))
    assert r.returncode == 2 and f"{twice}:21 repeats {twice}:1" in r.stderr and "Traceback" not in r.stderr
    r = cli("eval", str(tiny_model_dir), "--bench", str(twice), "--dedupe", "--json")
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert res["n"] == 20 and any("--dedupe dropped 20 repeated questions" in n for n in res["notes"])
    assert (res["source"], res["split"], res["total"]) == (str(twice), "every row", 20)
    reg = Registry()
    try:  # the stored result says what it measured too
        assert [(r.figures["source"], r.figures["total"]) for r in reg.results()] == [(str(twice), 20)]
    finally:
        reg.close()
    rows = _questions(40)
    rows[7].update(A="", B="", C="", D="")
    exam = _jsonl(tmp_path / "exam.jsonl", rows)
    r = cli("eval", str(tiny_model_dir), "--bench", str(exam), "--skip-bad", "--max-bad", "0.05", "--shots", "2")
    assert r.returncode == 0, r.stderr
    assert ", n=37, skipped 1," in r.stdout  # 40, less the malformed one, less the 2 examples
    assert f"benchmark: {exam}, every row less 2 examples, 37 questions" in r.stdout
    assert f"- skipped exam:8 ({exam}:8): answer D is an empty option" in r.stdout


def test_eval_out_in_the_way_is_refused_before_anything_is_measured_or_stored(tiny_model_dir, tmp_path):
    from medscale.registry import Registry

    bench = _jsonl(tmp_path / "b.jsonl", _questions(4))
    taken = tmp_path / "results"
    taken.write_text("my notes\n")
    r = cli("eval", str(tiny_model_dir), "--bench", str(bench), "--out", str(taken))
    assert r.returncode == 2 and f"--out {taken}: it is a file" in r.stderr and "Traceback" not in r.stderr
    assert taken.read_text() == "my notes\n"
    reg = Registry()
    try:
        assert reg.results() == []
    finally:
        reg.close()

