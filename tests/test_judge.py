"""The judge of open answers (issue 23, deliverables 1 and 4): the pairwise protocol on recorded judge replies
(verdict lines in Chinese and English, malformed ones), then `medscale judge` end to end with tiny models as A, B
and the judge, the score mode, --no-judge, --calibrate, and the page in a real headless browser."""
from __future__ import annotations

import json
import math

import pytest

from conftest import cli
from medscale.judge import protocol
from medscale.judge.rubric import read_pairwise, read_scores

# what judges write (shapes seen from R1-style and chat judges): A or B is the answer SHOWN first or second
ZH_FIRST = ("<think>先看诊断：第一个回答考虑了睡眠不足和颈椎问题，第二个只说多休息。</think>\n"
            "两个回答都提到了熬夜的影响，但A的鉴别诊断更全面，并提醒了高血压和脑血管意外的红旗征象。\n\n"
            "诊断准确性: A\n推理质量：A\n建议实用性: 平局\n安全性: A\n总体表现：A")
EN_SECOND = ("Answer B lays out a clearer work-up (blood pressure, blood count, ENT exam) and warns about stroke "
             "signs; answer A is vague.\n\n**Diagnostic accuracy**: B\n**Reasoning quality**: B\n"
             "**Usefulness of advice**: B\n**Safety**: tie\n**Overall**: [[B]]")
ZH_SECOND = "综合来看助手B更好。\n诊断准确性: B\n推理质量: B\n建议实用性: B\n安全性: B\n总体表现: B更好"
EN_FIRST = "Overall: A is better\nsafety: tie"
MALFORMED = ("总体来说两个回答都不错，我倾向于第一个。",  # no verdict line
             "<think>比较两个回答……总体表现: A",  # the think block never closed: its A is no verdict
             "总体表现：A和B各有问题")  # a verdict line that names no side


def test_judge_replies_are_read_in_chinese_and_english_and_malformed_ones_are_not_guessed():
    assert read_pairwise(ZH_FIRST) == {"accuracy": "A", "reasoning": "A", "usefulness": "tie", "safety": "A",
                                       "overall": "A"}
    assert read_pairwise(EN_SECOND) == {"accuracy": "B", "reasoning": "B", "usefulness": "B", "safety": "tie",
                                        "overall": "B"}
    assert read_pairwise(ZH_SECOND)["overall"] == "B" and read_pairwise(EN_FIRST)["overall"] == "A"
    for text in MALFORMED:
        assert read_pairwise(text)["overall"] is None, text
    assert read_scores("理由……\n诊断准确性: 7\n推理质量：6分\n建议实用性: 8/10\n安全性: 9\n总体表现: 7") == \
        {"accuracy": 7, "reasoning": 6, "usefulness": 8, "safety": 9, "overall": 7}
    assert read_scores("总体表现: 11\n推理质量: 很好")["overall"] is None  # out of 1-10, or no number


def test_the_built_in_open_sets_load_by_name_and_their_references_reach_the_prompt():
    from conftest import needs_realdata
    from medscale.judge.rubric import pairwise_prompt
    from medscale.judge.sources import open_questions

    seed = open_questions("seed004")
    assert len(seed) == 10 and seed[0].prompt == "28岁程序员，常年熬夜，头晕目眩，恶心"
    assert "[参考答案]" not in pairwise_prompt("zh", seed[0].prompt, "甲", "乙", seed[0].reference)
    data = needs_realdata("eval")
    cmb, huatuo = open_questions("cmb-clin", data), open_questions("huatuo100", data)
    assert (len(cmb), len(huatuo)) == (208, 100) and all(q.reference for q in cmb + huatuo)
    prompt = pairwise_prompt("zh", huatuo[0].prompt, "甲", "乙", huatuo[0].reference)
    assert f"[参考答案]\n{huatuo[0].reference}\n" in prompt and prompt.index("[参考答案]") < prompt.index("[助手A的回答]")


def test_an_order_dependent_verdict_is_a_tie_and_a_malformed_reply_is_unparseable():
    # q1: the answer shown first wins in both orders -> A, then B: the verdict follows the position -> tie
    flipped = protocol.judge_pair("q1", ZH_FIRST, EN_FIRST, 100, 120)
    # q2: B wins whichever order it is shown in (second in the first reply, first in the swapped one)
    steady = protocol.judge_pair("q2", EN_SECOND, ZH_FIRST, 100, 120)
    # q3: one reply unreadable: not guessed from the other order
    broken = protocol.judge_pair("q3", ZH_SECOND, MALFORMED[0], 100, 120)
    assert flipped.choices["overall"] == "tie" and flipped.consistent is False
    assert steady.choices == {"accuracy": "B", "reasoning": "B", "usefulness": "tie", "safety": "tie",
                              "overall": "B"} and steady.consistent is True
    assert broken.choices["overall"] is None and broken.consistent is None
    s = protocol.summarise_pairs([flipped, steady, broken])
    assert (s.overall.n, s.overall.win, s.overall.tie, s.overall.loss, s.overall.unparseable) == (2, 1, 1, 0, 1)
    assert (s.position_consistency, s.order_dependent, s.unparseable_replies, s.replies) == (0.5, 1, 1, 6)
    assert s.criteria["safety"].tie == 2 and s.criteria["accuracy"].win == 1


def _pairs(outcomes: str) -> list:
    """Recorded replies for a sequence of outcomes (B: B won in both orders, A: A did, T: tie in both)."""
    first = {"B": EN_SECOND, "A": ZH_FIRST, "T": "两个回答相当。\n总体表现: 平局"}
    second = {"B": ZH_FIRST, "A": EN_SECOND, "T": "Both are fine.\nOverall: tie"}
    return [protocol.judge_pair(f"q{i}", first[o], second[o], 50, 50 + (10 if o == "B" else 0))
            for i, o in enumerate(outcomes)]


def _normal_interval(win: int, loss: int, n: int) -> tuple[float, float]:
    """By hand: the mean of d in {-1, 0, +1} per question, +- 1.96 standard errors."""
    net = (win - loss) / n
    var = (win + loss) / n - net ** 2
    half = 1.959964 * math.sqrt(var / n)
    return net - half, min(1.0, net + half)


@pytest.mark.parametrize("outcomes, win, loss, verdict", [
    ("BBBBBBTTAA", 6, 2, "no detectable difference"),
    ("B" * 18 + "TT", 18, 0, "better"),
    ("A" * 15 + "BTTTT", 1, 15, "worse"),
])
def test_the_interval_and_the_verdict_follow_the_hand_computed_numbers(outcomes, win, loss, verdict):
    n = len(outcomes)
    s = protocol.summarise_pairs(_pairs(outcomes))
    o = s.overall
    assert (o.n, o.win, o.loss, o.tie) == (n, win, loss, n - win - loss)
    assert o.net == pytest.approx((win - loss) / n)
    low, high = _normal_interval(win, loss, n)
    assert o.ci_low == pytest.approx(low, abs=0.1) and o.ci_high == pytest.approx(high, abs=0.1)
    assert o.verdict == verdict and s.position_consistency == 1.0
    line = protocol.verdict_line(s, "base", "tuned")
    assert line.startswith("tuned against base: win ") and line.endswith(f": {verdict}")
    assert f"win {round(100 * win / n)}%" in line and f"n={n}" in line


def test_winning_is_correlated_with_answer_length_by_hand():
    s = protocol.summarise_pairs(_pairs("BBAT"))  # B is 10 characters longer exactly where it won
    diff = [10, 10, 0, 0]
    outcome = [1, 1, -1, 0]
    mean_d, mean_o = sum(diff) / 4, sum(outcome) / 4
    cov = sum((d - mean_d) * (o - mean_o) for d, o in zip(diff, outcome))
    r = cov / math.sqrt(sum((d - mean_d) ** 2 for d in diff) * sum((o - mean_o) ** 2 for o in outcome))
    assert s.length_bias.r == pytest.approx(r)
    assert (s.length_bias.longer_won, s.length_bias.decisive) == (2, 2)


def test_single_answer_scores_are_averaged_and_unreadable_ones_counted():
    replies = ["诊断准确性: 8\n推理质量: 6\n建议实用性: 7\n安全性: 9\n总体表现: 8", "overall: 6\nsafety: 10",
               MALFORMED[0]]
    s = protocol.summarise_scores("tuned", replies)
    assert s.unparseable == 1 and s.means["overall"] == pytest.approx(7.0) and s.means["safety"] == 9.5
    assert s.means["reasoning"] == 6.0 and 6.0 <= s.ci["overall"][0] <= s.ci["overall"][1] <= 8.0


# --------------------------------------------------------------------------- end to end, tiny models

def _questions(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [{"id": "s1", "question": "28岁程序员，常年熬夜，头晕目眩，恶心<img src=x onerror=alert(1)>",
             "reference": "考虑睡眠不足、颈椎病、高血压等，建议测血压、规律作息。"},
            {"id": "s2", "question": "A programmer who stays up late feels dizzy. What should he do?"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_judge_end_to_end_with_tiny_models_counts_unparseable_and_shows_the_page(tiny_model_dir, control_base,
                                                                                tmp_path):
    from html_browser import dialogs

    out = tmp_path / "judged"
    r = cli("judge", str(tiny_model_dir), str(control_base), "--questions", str(_questions(tmp_path)), "--judge",
            str(tiny_model_dir), "--max-new-tokens", "8", "--judge-max-new-tokens", "8", "--out", str(out), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout)
    s = got["pairwise"]
    # a random tiny judge writes no verdict line: every reply is counted unparseable, none guessed
    assert (s["replies"], s["unparseable_replies"], s["overall"]["n"], s["overall"]["unparseable"]) == (4, 4, 0, 2)
    assert got["verdict"].endswith("no detectable difference") and s["position_consistency"] is None
    assert set(got["degeneration"]) == {"tiny-qwen3", "model"} and got["degeneration_verdict"]["n"] == 2
    assert any("is one of the judged" in w for w in got["warnings"])  # the judge is A
    stored = got["judge"]
    assert stored["settings"]["max_new_tokens"] == 8 and stored["backend"]["backend"].startswith("in-process")
    assert "总体表现" in got["templates"]["pairwise"]["zh"] and "overall" in got["templates"]["pairwise"]["en"]
    assert [len(p["replies"]) for p in got["pairs"]] == [2, 2]
    seen, text = dialogs(out / "judge.html", tmp_path / "profile")
    assert seen == []  # the question's markup is shown, never run
    assert "onerror=alert(1)" in text and "no pair could be read" in text and "overall (总体表现)" in text

    again = cli("judge", str(tiny_model_dir), str(control_base), "--questions", str(_questions(tmp_path)),
                "--judge", str(tiny_model_dir), "--max-new-tokens", "8", "--judge-max-new-tokens", "8", "--out",
                str(out), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["judge"]["cached"] == 4  # a rerun continues


def _answers(tmp_path, name: str, answers: list[str]):
    path = tmp_path / f"{name}.jsonl"
    qs = ["28岁程序员，常年熬夜，头晕目眩，恶心", "高血压患者需要注意什么？"]
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": a}, ensure_ascii=False) + "\n"
                            for i, (q, a) in enumerate(zip(qs, answers))), encoding="utf-8")
    return path


def test_answer_files_are_judged_by_score_and_without_a_judge(tiny_model_dir, tmp_path):
    base = _answers(tmp_path, "base", ["可能与睡眠不足有关，建议规律作息并测量血压。", "低盐饮食，规律服药，监测血压。"])
    tuned = _answers(tmp_path, "tuned", ["<think>考虑颈椎病、贫血……", "控制 控制 控制 " * 30])
    r = cli("judge", str(base), str(tuned), "--no-judge", "--out", str(tmp_path / "nj"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout)
    assert got["judge"] is None and got["pairwise"] is None and got["verdict"].startswith("no judge: ")
    assert got["degeneration"]["tuned"]["unclosed_think"] == 1 and got["degeneration"]["tuned"]["looping"] == 1
    assert got["degeneration"]["base"]["degenerate"] == 0
    from medscale.jobs.launch import entry_for  # the judge kind's road: its job file runs again as an attempt

    entry = entry_for("judge")
    again = entry.load()(entry.load_spec(str(tmp_path / "nj" / "judge_job.yaml")))
    assert again.degeneration == got["degeneration"]
    journal = json.loads((tmp_path / "nj" / "medscale_job.json").read_text(encoding="utf-8"))
    assert journal["kind"] == "judge" and [a["status"] for a in journal["attempts"]] == ["completed", "completed"]

    r = cli("judge", str(base), str(tuned), "--mode", "score", "--judge", str(tiny_model_dir),
            "--judge-max-new-tokens", "6", "--out", str(tmp_path / "sc"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout)
    assert [(s["label"], s["n"], s["unparseable"]) for s in got["scores"]] == [("base", 2, 2), ("tuned", 2, 2)]
    assert "overall score" in got["verdict"] and "(4 unparseable replies)" in got["verdict"]


def test_calibration_runs_the_judge_on_the_shipped_labelled_pairs(tiny_model_dir, tmp_path):
    r = cli("judge", "--calibrate", "--judge", str(tiny_model_dir), "--limit", "2", "--judge-max-new-tokens", "6",
            "--out", str(tmp_path / "cal"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout)
    assert got["calibration"] and [s["label"] for s in got["sides"]] == ["rejected", "chosen"]
    assert got["questions"][0]["prompt"] == "肛门病变可能是什么疾病的症状?"  # MedicalGPT's first labelled pair
    assert got["pairwise"]["unparseable_replies"] == 4 and "agrees with the labels on 0 of 0" in got["verdict"]


@pytest.mark.parametrize("args, says", [
    (["a.jsonl", "b.jsonl"], "no judge"),
    (["--calibrate", "a", "--judge", "j"], "--calibrate"),
    (["only-one", "--no-judge"], "two sides"),
    (["x", "y", "--judge", "j", "--judge-endpoint", "http://h/v1"], "one of"),
])
def test_a_wrong_judge_command_is_one_line(args, says, tmp_path):
    r = cli("judge", *args, "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o").exists()


def test_an_answer_file_missing_a_question_is_one_line_naming_it(tmp_path):
    a = _answers(tmp_path, "a", ["答1", "答2"])
    b = tmp_path / "b.jsonl"
    b.write_text(a.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    r = cli("judge", str(a), str(b), "--no-judge", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and f"{b}: no answer for 1 of the 2 questions" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


class _RecordedJudge:
    """A judge behind an OpenAI-compatible endpoint that replies with recorded verdict text: it prefers the answer
    that says to measure blood pressure (测血压), wherever it is shown, in Chinese for Chinese prompts and in English
    otherwise, and writes no verdict line for a question that mentions 耳鸣 (a malformed reply)."""

    def __enter__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, body: dict, code: int = 200):
                data = json.dumps(body, ensure_ascii=False).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"data": [{"id": "recorded-judge"}]} if self.path.endswith("/models") else {}, 404
                           if not self.path.endswith("/models") else 200)

            def do_POST(self):
                prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][-1]["content"]
                zh = "[助手A的回答]" in prompt
                first = prompt.split("[助手B的回答]" if zh else "[Assistant B's answer]")[0]
                winner = "A" if "测血压" in first.split("[助手A的回答]" if zh else "[Assistant A's answer]")[1] else "B"
                text = (("理由略。\n" + "\n".join(f"{n}: {winner}" for n in ("诊断准确性", "推理质量", "建议实用性", "安全性",
                                                                          "总体表现")))
                        if zh else f"Reasons omitted.\n**Overall**: [[{winner}]]\nsafety: tie")
                if "耳鸣" in prompt:
                    text = "两个回答各有优缺点，难以判断。"
                self._send({"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                            "usage": {"completion_tokens": 12}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_an_endpoint_judge_with_readable_verdicts_gives_the_verdict_and_the_page(tmp_path):
    from html_browser import dialogs

    qs = ["28岁程序员，常年熬夜，头晕目眩，恶心", "头晕伴耳鸣怎么办？", "头晕目眩，测过血糖正常", "熬夜后头晕恶心",
          "A programmer who stays up late feels dizzy. What should he do?"]
    base = tmp_path / "base.jsonl"
    tuned = tmp_path / "tuned.jsonl"
    for path, answer in ((base, "多休息。"), (tuned, "先测血压，规律作息，必要时就医。<b>measure blood pressure 测血压</b>")):
        path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": answer}, ensure_ascii=False) + "\n"
                                for i, q in enumerate(qs)), encoding="utf-8")
    with _RecordedJudge() as url:
        r = cli("judge", str(base), str(tuned), "--judge-endpoint", url, "--out", str(tmp_path / "j"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout)
    o, s = got["pairwise"]["overall"], got["pairwise"]
    # 4 questions read, the tuned side preferred in both orders on each; the 耳鸣 question's replies are unparseable
    assert (o["n"], o["win"], o["tie"], o["loss"], o["unparseable"]) == (4, 4, 0, 0, 1)
    assert (o["ci_low"], o["ci_high"], o["verdict"]) == (1.0, 1.0, "better")
    assert (s["position_consistency"], s["unparseable_replies"]) == (1.0, 2)
    assert got["pairwise"]["criteria"]["safety"]["tie"] == 1  # the English reply calls safety a tie
    assert got["pairwise"]["criteria"]["accuracy"]["n"] == 3  # the English reply names no accuracy verdict
    assert got["verdict"].startswith("tuned against base: win 100% / tie 0% / loss 0%") and \
        got["verdict"].endswith(": better")
    assert got["judge"]["label"] == "recorded-judge" and got["judge"]["backend"]["backend"] == "endpoint"
    seen, text = dialogs(tmp_path / "j" / "judge.html", tmp_path / "profile")
    assert seen == [] and "<b>measure blood pressure" in text and "tuned against base" in text


def test_a_think_block_an_r1_style_prompt_opened_and_the_reply_never_closed_is_no_answer(tiny_model_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from test_data import R1_STYLE

    r1 = tmp_path / "r1-style"
    shutil.copytree(tiny_model_dir, r1)
    tok = AutoTokenizer.from_pretrained(r1)
    tok.chat_template = R1_STYLE  # the generation prompt ends in <think>: the reply starts inside the block
    tok.save_pretrained(r1)
    base = _answers(tmp_path, "base", ["可能与睡眠不足有关，建议规律作息并测量血压。", "低盐饮食，规律服药，监测血压。"])
    r = cli("judge", str(base), str(r1), "--judge", str(r1), "--max-new-tokens", "6", "--judge-max-new-tokens", "6",
            "--greedy", "--out", str(tmp_path / "j"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout)
    answers = got["sides"][1]["answers"]
    assert all(a.startswith("<think>") and "</think>" not in a for a in answers)  # 6 random tokens never close it
    assert got["degeneration"]["r1-style"]["unclosed_think"] == 2
    assert got["pairwise"]["unparseable_replies"] == 4 and all(p["replies"][0].startswith("<think>")
                                                               for p in got["pairs"])


def test_compare_judge_counts_a_judge_that_always_prefers_the_second_shown_as_order_dependent(tiny_model_dir,
                                                                                           tmp_path):
    out = tmp_path / "cmp"
    with _RecordedJudge() as url:  # tiny answers never say 测血压: the recorded judge picks whichever is shown second
        r = cli("compare", f"base={tiny_model_dir}", f"tuned={tiny_model_dir}", "--limit", "2", "--max-new-tokens",
                "4", "--greedy", "--judge-endpoint", url, "--out", str(out), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads(r.stdout)["judgement"]["pairwise"]
    assert (s["overall"]["tie"], s["overall"]["n"], s["order_dependent"], s["position_consistency"]) == (2, 2, 2, 0.0)
    assert s["overall"]["verdict"] == "no detectable difference"
    assert (out / "compare.html").is_file() and (out / "judge.html").is_file()
    assert json.loads(r.stdout)["judgement"]["warnings"] == []  # the judge is neither of the compared models


def test_a_judge_that_is_one_of_the_compared_models_is_named_in_a_warning(tiny_model_dir, tmp_path):
    from medscale.judge.run import _identity, self_judged

    sides = {"base": _identity(str(tiny_model_dir)), "file": _identity(str(_answers(tmp_path, "a", ["x", "y"])))}
    (warning,) = self_judged(str(tiny_model_dir), sides)
    assert "is one of the judged (base)" in warning
    assert self_judged("http://127.0.0.1:9/v1", sides) == []
    assert self_judged("http://127.0.0.1:9/v1/", {"served": _identity("http://127.0.0.1:9")}) != []


def test_a_side_significantly_more_degenerate_than_the_first_is_flagged_without_a_judge(tmp_path):
    qs = [f"病例{i}：28岁程序员，常年熬夜，头晕目眩，恶心，第{i}次就诊，怎么办？" for i in range(6)]

    def write(name, answer):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": answer(i)}, ensure_ascii=False)
                                + "\n" for i, q in enumerate(qs)), encoding="utf-8")
        return str(path)

    base = write("base", lambda i: "可能与长期熬夜、睡眠不足有关，建议规律作息，测量血压，必要时到神经内科就诊。")
    tuned = write("tuned", lambda i: "头晕头晕头晕" * 40)  # seed 004's failure: a token loop
    r = cli("judge", base, tuned, "--no-judge", "--out", str(tmp_path / "o"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout)
    assert got["degeneration_verdict"]["flagged"] and "DEGENERATE" in got["verdict"]
    assert (got["degeneration"]["base"]["degenerate"], got["degeneration"]["tuned"]["looping"]) == (0, 6)
