"""Answer extraction on R1-style outputs written for these tests, the traps included: letters weighed while
reasoning, several letters, full-width and lower-case letters, a think block that never closed."""
from __future__ import annotations

import pytest

from medscale.eval.extract import extract_choice, split_answer

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


def test_split_answer_keeps_the_reasoning_apart():
    think, answer = split_answer(R1_ZH, thinking=True)
    assert "肌红蛋白在发病后" in think and answer.endswith("答案：B") and "</think>" not in answer
