"""Multiple-choice questions as chat messages, in the benchmark's language, zero- or k-shot.

A question is a user turn; its answer an assistant turn (the letter(s), or the option's text in option mode), so
k-shot examples are earlier turns of the same conversation. The text the model continues is rendered by
`medscale.data.chat.render_prompt`, the same rendering training uses.
"""
from __future__ import annotations

from medscale.data.chat import render_prompt
from medscale.eval.bench import Benchmark, Question

# mode -> (single-answer, several-answer) instruction
_INSTRUCTIONS = {
    "zh": {
        "letter": ("以下是单项选择题，请直接回答正确选项的字母。",
                   "以下是多项选择题（有多个正确答案），请直接回答所有正确选项的字母。"),
        "option": ("以下是单项选择题，请直接回答正确选项的内容。",
                   "以下是多项选择题（有多个正确答案），请直接回答正确选项的内容。"),
        "generate": ("以下是单项选择题。请先思考，最后一行写“答案：”加正确选项的字母。",
                     "以下是多项选择题（有多个正确答案）。请先思考，最后一行写“答案：”加所有正确选项的字母。"),
    },
    "en": {
        "letter": ("The following is a multiple-choice question. Answer with the letter of the correct option only.",
                   "The following question has several correct options. Answer with the letters of all correct "
                   "options only."),
        "option": ("The following is a multiple-choice question. Answer with the text of the correct option only.",
                   "The following question has several correct options. Answer with the text of a correct option "
                   "only."),
        "generate": ("The following is a multiple-choice question. Think it through, then end with a line "
                     "'Answer: ' and the letter of the correct option.",
                     "The following question has several correct options. Think it through, then end with a line "
                     "'Answer: ' and the letters of all correct options."),
    },
}


def question_text(q: Question, language: str, mode: str) -> str:
    """The user turn: instruction, question, lettered options."""
    instruction = _INSTRUCTIONS[language][mode][int(q.multi)]
    options = "\n".join(f"{letter}. {text}" for letter, text in q.options.items())
    return f"{instruction}\n\n{q.question}\n{options}"


def answer_text(q: Question, mode: str) -> str:
    """The assistant turn of a worked example (and of an SFT record that teaches the answer)."""
    if mode == "option":
        return q.options[q.answer[0]]
    return "".join(q.answer)


def mcq_messages(q: Question, language: str, mode: str = "letter", shots: list[Question] = (),
                 system_prompt: str | None = None) -> list[dict]:
    """The conversation that asks q: [system], k worked examples, then q itself (the last, user turn)."""
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for ex in shots:
        msgs += [{"role": "user", "content": question_text(ex, language, mode)},
                 {"role": "assistant", "content": answer_text(ex, "letter" if mode == "generate" else mode)}]
    msgs.append({"role": "user", "content": question_text(q, language, mode)})
    return msgs


def mcq_prompt(tok, bench: Benchmark, q: Question, mode: str = "letter", shots: int = 0, *,
               system_prompt: str | None = None, enable_thinking: bool | None = None) -> str:
    """The rendered text the model continues. Letter and option modes answer without thinking (the empty think
    block, as training renders an answer without reasoning); generate mode follows `enable_thinking`."""
    msgs = mcq_messages(q, bench.language, mode, bench.shots_for(q, shots), system_prompt)
    return render_prompt(tok, msgs, enable_thinking if mode == "generate" else False)
