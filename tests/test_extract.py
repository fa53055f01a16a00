"""Answer extraction and sampled scores (pass@1, majority vote, clustered intervals). Extraction on R1-style outputs written for these tests, the traps included: letters weighed while
reasoning, several letters, full-width and lower-case letters, a think block that never closed."""
from __future__ import annotations

import pytest

from medscale.data.chat import split_think
from medscale.eval.extract import extract_choice
from medscale.eval.sampled import Sample, paired_sampled_verdict, score_samples, unclustered_interval

ABCD = "ABCD"

R1_ZH = """好的，我现在要解决这个问题。题目问的是急性心肌梗死最早升高的血清标志物。
选项A是肌钙蛋白，B是肌红蛋白，C是CK-MB，D是LDH。答案是A吗？不对，肌钙蛋白升高得比较晚。
肌红蛋白在发病后1-2小时就开始升高，所以应该选B。
</think>

急性心肌梗死后最早升高的是肌红蛋白（2小时内）。

答案：B"""

CASES = [
    ("zh 答案：", R1_ZH, True, ["B"]),
    ("zh 答案是 in prose", "嗯……\n</think>\n综合分析，本题答案是C，因为其余选项均与病理不符。", True, ["C"]),
    ("zh 故选", "</think>\nA选项错误，B选项也错误，D选项与题意不符，故选C。", True, ["C"]),
    ("zh 正确答案为 bold", "推理略\n</think>\n**正确答案为：D**", True, ["D"]),
    ("zh 选项 full-width", "想一想\n</think>\n正确选项是Ｃ。", True, ["C"]),
    ("full-width colon and letter", "</think>\n答案：Ａ", True, ["A"]),
    ("boxed", "Let me think.\n</think>\nThe drug of choice is penicillin.\n\n$\\boxed{B}$", True, ["B"]),
    ("boxed text", "</think>\n\\boxed{\\text{D}}", True, ["D"]),
    ("en Answer:", "Okay, option A looks right at first, but C fits better.\n</think>\nAnswer: C", True, ["C"]),
    ("en answer is (X)", "</think>\nThe correct answer is (A) Aspirin.", True, ["A"]),
    ("lowercase after marker", "</think>\nanswer: b", True, ["B"]),
    ("several letters zh", "</think>\n本题为多选题，答案：A、C、D", True, ["A", "C", "D"]),
    ("several letters run together", "</think>\n答案：ACD", True, ["A", "C", "D"]),
    ("several letters en", "</think>\nAnswer: B and D", True, ["B", "D"]),
    ("final letter line", "分析完毕。\n</think>\n维生素B12缺乏导致巨幼细胞贫血。\n\nD", True, ["D"]),
    ("final letter line with text", "</think>\n\nB. 肌红蛋白", True, ["B"]),
    ("last conclusion wins", "</think>\n起初我认为答案是A，但复核后，答案是C。", True, ["C"]),
    ("no think: plain answer", "答案：B", False, ["B"]),
]


@pytest.mark.parametrize("name,text,thinking,letters", CASES, ids=[c[0] for c in CASES])
def test_the_concluded_letters_are_found(name, text, thinking, letters):
    got = extract_choice(text, ABCD, thinking)
    assert (got.status, got.letters) == ("ok", letters)


def test_a_letter_weighed_while_reasoning_is_not_an_answer():
    """The think block names A and B and even says 答案是A; the answer after </think> names none."""
    text = "选项A不对，B也许对。答案是A吗？\n</think>\n这道题需要更多信息才能判断。"
    got = extract_choice(text, ABCD, thinking=True)
    assert (got.status, got.letters) == ("no_answer", None)


def test_a_think_block_that_never_closed_is_over_budget_not_unanswered():
    """R1's prompt opens <think>, so the generated text has no opening tag; without </think> it is all reasoning,
    even when it contains 答案是A."""
    text = "首先，肌钙蛋白……答案是A吗？再想想，肌红蛋白"
    assert extract_choice(text, ABCD, thinking=True).status == "over_budget"
    assert extract_choice("<think>still going: Answer: A", ABCD, thinking=False).status == "over_budget"
    assert extract_choice(text, ABCD, thinking=False).status == "ok"  # no think expected: the text is the answer


def test_an_english_word_a_is_not_option_a():
    got = extract_choice("</think>\nThe answer is a bit unclear without imaging.", ABCD, thinking=True)
    assert got.status == "no_answer"


def test_a_letter_outside_the_options_is_no_answer():
    got = extract_choice("</think>\n答案：E", ABCD, thinking=True)
    assert (got.status, got.letters) == ("no_answer", None)
    assert extract_choice("</think>\n答案：E", "ABCDE", thinking=True).letters == ["E"]


def test_split_think_keeps_the_reasoning_apart():
    think, answer = split_think(R1_ZH, opened=True)
    assert "肌红蛋白在发病后" in think and answer.endswith("答案：B") and "</think>" not in answer


# --------------------------------------------------------------------------- sampled scores (k answers a question)


def _samples(table: dict[str, tuple[str, list]]) -> list[Sample]:
    """{id: (correct letter, [per sample: letter, None (no answer) or "over" (out of think budget)])}"""
    out = []
    for qid, (correct, chosen) in table.items():
        for i, c in enumerate(chosen):
            status = "over_budget" if c == "over" else "no_answer" if c is None else "ok"
            out.append(Sample(id=qid, sample=i, status=status, chosen=[c] if status == "ok" else None,
                              correct=[correct]))
    return out


def test_pass_at_1_with_four_samples_matches_the_hand_computation():
    s = score_samples(_samples({"q1": ("A", ["A", "A", "B", "A"]),        # 3/4, majority A (right), agreement 3/4
                                "q2": ("C", ["B", "B", "C", None]),       # 1/4, majority B (wrong), agreement 2/4
                                "q3": ("D", ["over", "over", "D", "D"])}))  # 2/4, tie: sample 0's "none" wins
    assert s.pass1 == pytest.approx((3 / 4 + 1 / 4 + 2 / 4) / 3)
    assert s.majority_acc == pytest.approx(1 / 3)
    assert s.agreement == pytest.approx((3 / 4 + 2 / 4 + 2 / 4) / 3)
    assert (s.n, s.k, s.over_budget, s.no_answer) == (3, 4, 2, 1)
    assert [q.majority for q in s.questions] == [["A"], ["B"], None]
    assert s.ci_low <= s.pass1 <= s.ci_high


def test_the_clustered_interval_is_wider_than_the_unclustered_on_correlated_samples():
    """Each question's 8 samples all agree (a question is either known or not): 320 answers carry the information of
    40 questions, and only the clustered bootstrap says so."""
    table = {f"q{i}": ("A", ["A" if i % 2 else "B"] * 8) for i in range(40)}
    samples = _samples(table)
    s = score_samples(samples)
    low, high = unclustered_interval(samples)
    assert s.pass1 == 0.5 and (s.ci_high - s.ci_low) > 2 * (high - low)


def test_the_paired_sampled_verdict_pairs_by_question_and_averages_over_samples():
    a = _samples({f"q{i}": ("A", ["A", "B", "B", "B"]) for i in range(60)})  # pass@1 1/4 everywhere
    b = _samples({f"q{i}": ("A", ["A", "A", "A", "B"]) for i in range(60)})  # 3/4 everywhere
    v = paired_sampled_verdict(a, b, benchmark="mcq")
    assert (v.acc_a, v.acc_b, v.diff, v.n, v.b_only, v.verdict) == (0.25, 0.75, 0.5, 60, 60, "better")
    with pytest.raises(Exception, match="different questions"):
        paired_sampled_verdict(a, b[:-4])
