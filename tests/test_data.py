"""Formats -> messages -> rendered text with loss masks; bad input names file:line."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import needs_realdata
from medscale.data.augment import TermMasker
from medscale.data.chat import IGNORE, encode, render_with_spans
from medscale.data.formats import detect, to_messages
from medscale.data.sources import DataError, load_conversations
from medscale.data.pipeline import held_prompts
from medscale.recipe import TermMasking, demo_data_dir

RECORDS = {
    "r1-think": {"instruction": "头痛怎么办？", "question": "经常头痛该怎么处理？", "think": "考虑紧张性头痛", "answer": "注意休息。", "metrics": "{}"},
    "medical-o1": {"Question": "发热三天？", "Complex_CoT": "先排除感染", "Response": "建议查血常规。"},
    "sharegpt": {"conversations": [{"from": "system", "value": "你是医生"}, {"from": "human", "value": "咳嗽"},
                                   {"from": "gpt", "value": "多喝水"}, {"from": "human", "value": "还有呢"},
                                   {"from": "gpt", "value": "必要时就医"}]},
    "huatuo": {"data": ["问：胃痛怎么办？", "答：少食多餐。"]},
    "alpaca": {"instruction": "解释高血压", "input": "成人", "output": "血压持续升高。"},
    "messages": {"messages": [{"role": "user", "content": "失眠"}, {"role": "assistant", "content": "<think>作息</think>规律作息"}]},
}


@pytest.mark.parametrize("fmt", sorted(RECORDS))
def test_every_format_is_detected_and_converted(fmt):
    rec = RECORDS[fmt]
    assert detect(rec) == fmt
    msgs = to_messages(rec, fmt)
    assert msgs[-1]["role"] == "assistant" and any(m["role"] == "user" for m in msgs)


def test_format_details():
    r1 = to_messages(RECORDS["r1-think"], "r1-think", prompt_field="instruction")
    assert r1[0]["content"] == "头痛怎么办？" and r1[1]["reasoning_content"] == "考虑紧张性头痛"
    assert to_messages(RECORDS["r1-think"], "r1-think")[0]["content"] == "经常头痛该怎么处理？"
    assert to_messages(RECORDS["huatuo"], "huatuo")[0]["content"] == "胃痛怎么办？"
    assert to_messages(RECORDS["huatuo"], "huatuo")[1]["content"] == "少食多餐。"
    assert to_messages(RECORDS["alpaca"], "alpaca")[0]["content"] == "解释高血压\n成人"
    m = to_messages(RECORDS["messages"], "messages")[1]
    assert (m["content"], m["reasoning_content"]) == ("规律作息", "作息")
    o1 = to_messages(RECORDS["medical-o1"], "medical-o1")[1]
    assert (o1["content"], o1["reasoning_content"]) == ("建议查血常规。", "先排除感染")


def _write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text, encoding="utf-8")
    return p


def test_malformed_json_line_names_file_and_line(tmp_path):
    good = json.dumps(RECORDS["r1-think"], ensure_ascii=False)
    p = _write(tmp_path, "d.jsonl", f"{good}\n{{not json\n")
    with pytest.raises(DataError, match=rf"{p}:2: malformed JSON"):
        load_conversations(str(p))


def test_missing_field_names_file_and_line(tmp_path):
    rec = dict(RECORDS["medical-o1"], Response="")
    p = _write(tmp_path, "d.jsonl", "\n" + json.dumps(rec, ensure_ascii=False) + "\n")
    with pytest.raises(DataError, match=rf"{p}:2: bad medical-o1 record: missing or empty field"):
        load_conversations(str(p))


def test_wrongly_shaped_record_names_file_and_line(tmp_path):
    p = _write(tmp_path, "d.jsonl", json.dumps({"conversations": ["not a turn"]}) + "\n")
    with pytest.raises(DataError, match=rf"{p}:1: bad sharegpt record"):
        load_conversations(str(p))


def test_unknown_layout_lists_formats_and_fields(tmp_path):
    p = _write(tmp_path, "d.jsonl", json.dumps({"foo": 1, "bar": 2}) + "\n")
    with pytest.raises(DataError, match=r"fields \['bar', 'foo'\].*sharegpt.*data.sources\[\]\.format"):
        load_conversations(str(p))


def test_a_near_miss_layout_names_the_closest_formats(tmp_path):
    p = _write(tmp_path, "d.jsonl", json.dumps({"Question": "头痛?", "Answer": "休息"}, ensure_ascii=False) + "\n")
    with pytest.raises(DataError, match=r"closest: medical-o1 \(Question, Complex_CoT, Response\)"):
        load_conversations(str(p))


def test_question_answer_records_and_wenda_lines_are_detected(tmp_path):
    """Issue 14: {question, answer} (MedicalGPT's GRPO sample) was not detected, {问, 答} not supported."""
    qa = _write(tmp_path, "qa.jsonl", json.dumps({"question": "咳嗽怎么办", "answer": "多喝水"}, ensure_ascii=False))
    [msgs] = load_conversations(str(qa))
    assert msgs == [{"role": "user", "content": "咳嗽怎么办"}, {"role": "assistant", "content": "多喝水"}]
    wd = _write(tmp_path, "c.txt.jsonl", json.dumps({"问": "发烧", "答": "退热"}, ensure_ascii=False))
    assert load_conversations(str(wd))[0][1]["content"] == "退热"


def test_a_json_array_in_a_jsonl_file_is_read_as_an_array(tmp_path, caplog):
    p = _write(tmp_path, "arr.jsonl", json.dumps([RECORDS["alpaca"]] * 3, ensure_ascii=False, indent=1))
    assert len(load_conversations(str(p))) == 3 and "one JSON array" in caplog.text


def test_invalid_utf8_reported_with_line(tmp_path):
    p = _write(tmp_path, "d.jsonl", json.dumps(RECORDS["huatuo"]).encode() + b"\n\xff\xfe bad\n")
    with pytest.raises(DataError, match=rf"{p}:2: not valid UTF-8"):
        load_conversations(str(p))


def test_one_invalid_utf8_byte_is_one_skippable_bad_record(tmp_path):
    """Defect: one bad byte failed the whole source even with data.on_bad_record=skip."""
    good = json.dumps(RECORDS["huatuo"], ensure_ascii=False).encode()
    broken = good.replace("胃".encode(), b"\xe8\x83")  # a multi-byte character cut short
    p = _write(tmp_path, "d.jsonl", b"\n".join([good] * 99 + [broken]) + b"\n")
    counts: dict = {}
    convs = load_conversations(str(p), on_bad_record="skip", max_bad_fraction=0.05, counts=counts)
    assert len(convs) == 99 and counts["bad_records"] == 1


def test_bom_crlf_blank_lines_and_limit(tmp_path):
    line = json.dumps(RECORDS["huatuo"], ensure_ascii=False)
    p = _write(tmp_path, "d.jsonl", ("\ufeff" + line + "\r\n\r\n" + line + "\r\n" + line).encode("utf-8"))
    assert len(load_conversations(str(p))) == 3
    assert len(load_conversations(str(p), limit=2)) == 2


def test_json_list_and_folder_sources(tmp_path):
    (tmp_path / "dir").mkdir()
    _write(tmp_path, "dir/a.json", json.dumps([RECORDS["alpaca"]] * 2, ensure_ascii=False))
    _write(tmp_path, "dir/b.jsonl", json.dumps(RECORDS["medical-o1"], ensure_ascii=False))
    assert len(load_conversations(str(tmp_path / "dir"))) == 3


def _labelled_text(tok, msgs):
    enc = encode(tok, msgs, 4096)
    return tok.decode([t for t in enc.labels if t != IGNORE]), tok.decode(enc.input_ids)


@pytest.fixture(params=["tiny", "qwen3"])
def tok(request, tiny_tokenizer):
    return tiny_tokenizer if request.param == "tiny" else request.getfixturevalue("qwen3_tokenizer")


def test_loss_only_on_assistant_and_think_trained(tok):
    msgs = [{"role": "system", "content": "系统提示"}, {"role": "user", "content": "用户问题"},
            {"role": "assistant", "content": "最终回答", "reasoning_content": "推理过程"}]
    trained, full = _labelled_text(tok, msgs)
    assert "推理过程" in trained and "最终回答" in trained and "<think>" in trained and "<|im_end|>" in trained
    assert "系统提示" not in trained and "用户问题" not in trained and "系统提示" in full


def test_empty_think_block_not_trained(tok):
    msgs = [{"role": "user", "content": "用户问题"}, {"role": "assistant", "content": "最终回答"}]
    trained, full = _labelled_text(tok, msgs)
    assert "<think>" in full and "</think>" in full          # Qwen3 renders an empty block...
    assert "<think>" not in trained and "</think>" not in trained  # ...which carries no loss
    assert trained.strip().startswith("最终回答")


def test_multi_turn_trains_every_assistant_turn_or_only_the_last(tok):
    msgs = to_messages(RECORDS["sharegpt"], "sharegpt")
    text, spans = render_with_spans(tok, msgs)
    assert [text[s:e].split("<|im_end|>")[0].split("\n")[-1] for s, e in spans] == ["多喝水", "必要时就医"]
    _, last = render_with_spans(tok, msgs, "last_assistant")
    assert last == spans[-1:]


def test_truncation_policies(tiny_tokenizer):
    msgs = [{"role": "user", "content": "问" * 10}, {"role": "assistant", "content": "答" * 400}]
    assert encode(tiny_tokenizer, msgs, 64, truncation="drop") is None
    enc = encode(tiny_tokenizer, msgs, 64, truncation="truncate_response")
    assert len(enc.input_ids) == 64 and enc.truncated and any(t != IGNORE for t in enc.labels)


def test_eval_split_is_deterministic_and_disjoint_by_prompt():
    prompts = Counter(f"q{i % 30}" for i in range(90))  # 30 prompts, 3 records each
    held = held_prompts(prompts, 10, seed=1)
    assert held_prompts(prompts, 10, seed=1) == held and held != held_prompts(prompts, 10, seed=2)
    assert len(held) == 4 and held < set(prompts), "whole prompts, until 10 records are held out"
    assert sum(prompts[p] for p in held_prompts(prompts, 0.2, seed=1)) >= 18
    with pytest.raises(DataError, match="data.eval_size=90 leaves no training records"):
        held_prompts(prompts, 90, seed=1)


def test_term_masking_masks_prompt_only_and_is_deterministic():
    masker = TermMasker(TermMasking(p=1.0, progressive=False), seed=3)
    msgs = [{"role": "user", "content": "我有高血压和糖尿病，头晕"}, {"role": "assistant", "content": "高血压需要服药"}]
    out = masker(msgs, step=5, progress=0.5, sample_id=7)
    assert "高血压" not in out[0]["content"] and "[MASK]" in out[0]["content"]
    assert out[1] == msgs[1]
    half = TermMasker(TermMasking(p=0.5, progressive=True), seed=3)
    runs = {half(msgs, 9, 1.0, 7)[0]["content"] for _ in range(3)}
    assert len(runs) == 1
    assert half(msgs, 0, 0.0, 7) == msgs  # progressive: nothing masked at the start


def test_demo_data_is_well_formed():
    convs = load_conversations(str(demo_data_dir() / "medical_r1_demo.jsonl"))
    assert len(convs) >= 190 and all(c[-1].get("reasoning_content") for c in convs)


@pytest.mark.parametrize("rel,fmt,n", [("delicate_medical_r1/val.jsonl", "r1-think", 241),
                                       ("medical_o1/medical_o1_zh_916.jsonl", "medical-o1", 916),
                                       ("medical_o1/demo_data.json", "medical-o1", 198),
                                       ("medicalgpt/medical_sft_1K_format.jsonl", "sharegpt", 1000)])
def test_real_medical_files_parse_and_render(rel, fmt, n, qwen3_tokenizer):
    path = needs_realdata(*rel.split("/"))
    convs = load_conversations(str(path))
    assert len(convs) == n
    for msgs in convs[:20]:
        enc = encode(qwen3_tokenizer, msgs, 8192)
        assert enc is not None and sum(t != IGNORE for t in enc.labels) > 0


# Written for this test in the shape of DeepSeek-R1-Distill's template: it drops everything up to
# </think> from every assistant turn (the final one too) and opens the generation prompt with <think>.
R1_STYLE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.role == 'user' %}<|User|>{{ m.content }}"
    "{% elif m.role == 'assistant' %}{% set c = m.content %}{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
    "<|Assistant|>{{ c }}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}"
)


def test_template_that_strips_reasoning_still_trains_it(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = R1_STYLE
    msgs = [{"role": "user", "content": "发热三天"},
            {"role": "assistant", "content": "建议查血常规", "reasoning_content": "先排除感染"}]
    text, spans = render_with_spans(tok, msgs)
    (a, b), = spans
    assert text[a:b] == "先排除感染\n</think>\n\n建议查血常规" + tok.eos_token
    assert text[:a].endswith("<|Assistant|><think>\n") and text.count("<think>") == 1
    trained, _ = _labelled_text(tok, msgs)
    assert "先排除感染" in trained and "发热三天" not in trained


def test_r1_style_multi_turn_trains_every_answer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = R1_STYLE
    msgs = [{"role": "user", "content": "咳嗽"}, {"role": "assistant", "content": "多喝水"},
            {"role": "user", "content": "还有呢"}, {"role": "assistant", "content": "必要时就医", "reasoning_content": "排除肺炎"}]
    text, spans = render_with_spans(tok, msgs)
    assert [text[a:b] for a, b in spans] == ["多喝水" + tok.eos_token,
                                             "排除肺炎\n</think>\n\n必要时就医" + tok.eos_token]
