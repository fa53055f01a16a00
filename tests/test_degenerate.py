"""Degeneration signals on answers written the way models fail (seed 004's loops, unfinished reasoning, the wrong
language) and on healthy ones that must pass; the paired DEGENERATE test on hand-counted flags."""
from __future__ import annotations

import pytest

from medscale.eval.degenerate import Counts, count, signals, versus

CASE = "28岁程序员，常年熬夜，最近头晕目眩，伴有恶心，请问可能是什么原因？应该怎么办？"

HEALTHY = ("<think>\n患者28岁，长期熬夜，出现头晕目眩和恶心。需要考虑睡眠不足导致的自主神经功能紊乱、颈椎病引起的椎基底动脉供血"
           "不足、低血糖、贫血，以及耳源性眩晕如良性阵发性位置性眩晕。还要排除高血压和少见的中枢性病变。\n</think>\n\n"
           "根据您的描述，头晕目眩伴恶心在长期熬夜的年轻人中比较常见，可能的原因包括：\n\n"
           "1. **睡眠不足与自主神经功能紊乱**：长期熬夜打乱生物钟，交感神经兴奋，容易出现头晕、乏力、恶心。\n"
           "2. **颈椎病**：程序员久坐低头，颈椎退变可压迫椎动脉，转头时头晕加重。\n"
           "3. **耳石症（BPPV）**：起床或翻身时突然天旋地转，持续不到一分钟，常伴恶心。\n"
           "4. **低血糖或贫血**：不吃早餐、饮食不规律时容易出现，可查血常规和血糖。\n"
           "5. **血压异常**：建议测量血压，排除高血压或低血压。\n\n"
           "**建议**：\n- 规律作息，保证每晚7到8小时睡眠，避免连续熬夜；\n- 每工作一小时起身活动，做颈部放松操；\n"
           "- 按时进食，避免空腹工作；\n- 若出现剧烈头痛、肢体无力、说话不清、视物重影，应立即就医，排除脑血管疾病；\n"
           "- 症状持续超过一周，建议到神经内科或耳鼻喉科就诊，必要时做颈椎片、头颅CT或前庭功能检查。")

LOOP = ("<think>\n患者头晕，恶心，考虑颈椎病。\n</think>\n\n建议您注意休息，" + "多喝水，多喝水，多喝水，" * 30)

STUTTER = "休息，，多休息，多休息，多休息多休息，，，，多休息，，，，多休息多休息多休息，，，"  # a loop sampled at 0.7

LOOP_IN_THINK = ("<think>\n头晕的原因可能是熬夜。" + "嗯，我再想想，头晕的原因可能是熬夜。" * 40)  # never closed either

UNCLOSED = ("<think>\n这位患者28岁，是程序员，经常熬夜，头晕目眩，恶心。首先考虑睡眠不足，其次考虑颈椎问题，还需要排除"
            "低血压、贫血、内耳疾病。患者有没有耳鸣？有没有听力下降？需要问清楚头晕的性质，是天旋地转还是头昏沉")

EMPTY = "<think>\n头晕伴恶心，考虑睡眠不足和颈椎病，应建议规律作息并就医检查。\n</think>\n\n"

ENGLISH = ("<think>\nThe patient is a 28-year-old programmer.\n</think>\n\nDizziness with nausea in a young "
           "programmer who often stays up late is most often caused by sleep deprivation, cervical spondylosis or benign paroxysmal "
           "positional vertigo. Keep a regular sleep schedule and see a neurologist if it persists.")


def test_a_healthy_long_answer_is_not_flagged():
    s = signals(CASE, HEALTHY)
    assert not s.degenerate, s.reasons()
    assert s.chars > 400


def test_a_loop_is_flagged():
    s = signals(CASE, LOOP)
    assert s.looping and s.reasons() == ["looping"]


def test_a_stuttering_loop_is_flagged_by_its_repeated_ngrams():
    assert signals(CASE, STUTTER).reasons() == ["looping"]


def test_a_loop_inside_an_unclosed_think_is_both():
    assert signals(CASE, LOOP_IN_THINK).reasons() == ["looping", "unclosed_think"]


def test_an_unclosed_think_is_flagged_also_when_the_prompt_opened_it():
    assert signals(CASE, UNCLOSED).reasons() == ["unclosed_think"]
    opened_by_prompt = UNCLOSED.removeprefix("<think>\n")  # R1 templates end the prompt with "<think>\n"
    assert signals(CASE, opened_by_prompt).reasons() == []
    assert signals(CASE, opened_by_prompt, opened=True).reasons() == ["unclosed_think"]


def test_an_empty_answer_after_the_think_block():
    assert signals(CASE, EMPTY).reasons() == ["empty_answer"]


def test_an_english_answer_to_a_chinese_question_and_the_other_way():
    assert signals(CASE, ENGLISH).reasons() == ["wrong_language"]
    assert signals("What causes dizziness and nausea in a programmer who stays up late?", HEALTHY).reasons() == \
        ["wrong_language"]
    assert not signals("What causes dizziness and nausea?", ENGLISH).degenerate
    # English terms inside a Chinese answer keep it Chinese
    assert not signals(CASE, "建议做头颅CT和MRI检查，必要时查血常规（CBC）和血糖，排除BPPV。").degenerate


def test_length_blown_up_or_collapsed_against_the_base():
    base = count([(CASE, HEALTHY), (CASE, HEALTHY), (CASE, HEALTHY)])
    assert base.length_off is None  # no base lengths: not measured
    short = "<think>\n颈椎病。\n</think>\n\n建议就医。"
    tuned = count([(CASE, HEALTHY), (CASE, short), (CASE, HEALTHY * 5)], base.chars)
    assert tuned.length_off == 2 and tuned.flags == [False, True, True]
    # the paired verdict checks the lengths itself when the counts were made without the base's
    later = versus(base, count([(CASE, HEALTHY), (CASE, short), (CASE, HEALTHY * 5)]))
    assert (later.counts.length_off, later.tuned_only) == (2, 2)


def test_counts_and_the_paired_verdict_follow_hand_counted_flags():
    pairs = [(CASE, HEALTHY)] * 4
    base = count(pairs)
    tuned = count([(CASE, LOOP), (CASE, UNCLOSED), (CASE, EMPTY), (CASE, ENGLISH)] + pairs)
    assert (tuned.n, tuned.looping, tuned.unclosed_think, tuned.empty_answer, tuned.wrong_language,
            tuned.degenerate) == (8, 1, 1, 1, 1, 4)
    assert tuned.line() == ("degenerate 4/8 (1 looping, 1 unclosed think, 1 empty answer, 1 wrong language)")
    # four discordant answers, all the tuned model's: p = 2 / 2**4 = 0.125, not significant at n=4
    four = versus(base, Counts(n=4, degenerate=4, flags=[True] * 4))
    assert (four.tuned_only, four.base_only, four.p_mcnemar, four.flagged) == (4, 0, 0.125, False)
    # six of them: p = 2 / 2**6 = 0.03125 < 0.05
    six = versus(Counts(n=6, flags=[False] * 6), Counts(n=6, degenerate=6, flags=[True] * 6))
    assert six.p_mcnemar == pytest.approx(0.03125) and six.flagged and "DEGENERATE" in six.line
    # the base degenerating more is no DEGENERATE for the fine-tune
    assert not versus(Counts(n=6, degenerate=6, flags=[True] * 6), Counts(n=6, flags=[False] * 6)).flagged
    with pytest.raises(ValueError, match="do not pair"):
        versus(base, tuned)
