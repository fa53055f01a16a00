"""Chat-template rendering with loss masks: only assistant tokens carry loss.

The text is the tokenizer's own template applied to the whole conversation, so training
sees exactly what inference will. Each assistant turn's span starts where the template's
generation prompt for that turn ends and runs through the end-of-turn token:
- a turn with reasoning is prompted with thinking on, so `<think>reasoning</think>` is trained;
- a turn without reasoning is prompted with `enable_thinking=False`, so the empty
  `<think>\\n\\n</think>` block Qwen3 inserts lands in the prompt and is not trained.
Reasoning is kept on the final assistant turn only: Qwen3-style templates drop it from
earlier turns anyway, and the model never sees earlier reasoning at inference.
"""
from __future__ import annotations

from medscale.errors import UserError

from dataclasses import dataclass

IGNORE = -100
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class TemplateError(UserError):
    """The tokenizer's chat template does not render conversations prefix-consistently."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def split_think(text: str, opened: bool = False) -> tuple[str | None, str | None]:
    """(think, answer) of an assistant's text, stripped; think is None when there is no think block. The answer is
    what follows the last </think> (a letter weighed while reasoning is no answer); it is None when a think block
    was opened (in the text, or by the prompt when `opened`) and never closed: the model ran out of budget."""
    if THINK_CLOSE in text:
        think, answer = text.rsplit(THINK_CLOSE, 1)
        return think.split(THINK_OPEN, 1)[-1].strip() or None, answer.strip()
    if opened or THINK_OPEN in text:
        return text.split(THINK_OPEN, 1)[-1].strip(), None
    return None, text.strip()


def _render(tok, msgs: list[dict], **kw) -> str:
    return tok.apply_chat_template(msgs, tokenize=False, **kw)


def _keep_last_reasoning(msgs: list[dict]) -> list[dict]:
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return [({k: v for k, v in m.items() if k != "reasoning_content"} if i != last else m)
            for i, m in enumerate(msgs)]


def _turn_start(tok, msgs: list[dict], i: int, full: str) -> int | None:
    """Where turn i's answer starts in `full`: the end of its generation prompt, rendered with thinking
    off when the turn has no reasoning (Qwen3's empty block then belongs to the prompt). R1-style
    templates open the prompt with `<think>\n` that history turns never show; that opener is tolerated."""
    thinking = bool(msgs[i].get("reasoning_content"))
    for kw in ({} if thinking else {"enable_thinking": False}, {}):
        prefix = _render(tok, msgs[:i], add_generation_prompt=True, **kw)
        for candidate in (prefix, prefix.removesuffix("<think>\n")):
            if full.startswith(candidate):
                return len(candidate)
    return None


def render_with_spans(tok, msgs: list[dict], train_on: str = "all_assistant") -> tuple[str, list[tuple[int, int]]]:
    """The conversation's text and the character spans that carry loss."""
    msgs = _keep_last_reasoning(msgs)
    full = _render(tok, msgs)
    eos = tok.eos_token
    turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    if train_on == "last_assistant":
        turns = turns[-1:]
    spans = []
    for i in turns:
        start = _turn_start(tok, msgs, i, full)
        reasoning = msgs[i].get("reasoning_content")
        if i == len(msgs) - 1 and (start is None or (reasoning and reasoning not in full[start:])):
            # Templates such as DeepSeek-R1's strip <think> from every turn, the final one too: train the
            # final turn as inference produces it, after the template's own generation prompt.
            prefix = _render(tok, msgs[:i], add_generation_prompt=True)
            opened = prefix.rstrip("\n").endswith("<think>")
            if reasoning:
                opener = "" if opened else "<think>\n"
                think = f"{opener}{reasoning}\n</think>\n\n"
            else:  # the prompt may have opened a think block: close it empty
                think = "\n</think>\n\n" if opened else ""
            full, start = f"{prefix}{think}{msgs[i]['content']}{eos}", len(prefix)
        elif start is None:
            raise TemplateError(f"the chat template renders turn {i} differently inside the conversation than as "
                                f"a generation prompt; medscale cannot tell which tokens are the answer")
        end = full.find(eos, start)
        end = len(full) if end < 0 else end + len(eos)
        spans.append((start, end))
    return full, spans


def encode(tok, msgs: list[dict], max_length: int, train_on: str = "all_assistant",
           truncation: str = "drop") -> Encoded | None:
    """Token ids + labels; None when the sample must be dropped (too long, or no trained token left)."""
    text, spans = render_with_spans(tok, msgs, train_on)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [tid if any(s <= a < e for s, e in spans) else IGNORE
              for tid, (a, _) in zip(ids, enc["offset_mapping"])]
    over = len(ids) - max_length
    truncated = over > 0
    if truncated:
        first_label = next((i for i, lab in enumerate(labels) if lab != IGNORE), len(labels))
        if truncation == "truncate_response":
            ids, labels = ids[:max_length], labels[:max_length]
        elif truncation == "truncate_prompt_left" and over <= first_label:
            ids, labels = ids[over:], labels[over:]
        else:  # drop, or a response that alone is longer than max_length
            return None
    if all(lab == IGNORE for lab in labels):
        return None
    return Encoded(ids, labels, truncated)


def render_prompt(tok, msgs: list[dict], enable_thinking: bool | None = None) -> str:
    """The text a model continues to write the next assistant turn after `msgs`: exactly the prefix training treats
    as that turn's prompt (see `_turn_start` and the R1 branch of `render_with_spans`), so evaluation and training
    cannot drift. enable_thinking=False gives the prompt of an answer without reasoning (Qwen3's empty think block,
    or an R1-style opened <think> closed empty); None leaves the template's default."""
    kw = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    prompt = _render(tok, msgs, add_generation_prompt=True, **kw)
    if enable_thinking is False and prompt.rstrip("\n").endswith("<think>"):
        prompt += "\n</think>\n\n"
    return prompt
