"""Data pipeline features: bad-record policy, truncation, mixing, saved datasets, caching, inspect/stats CLI,
and every real SFT file under ../shared/realdata with token statistics as SOURCES.md gives them."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import needs_realdata, run_cli
from medscale.data.chat import IGNORE, encode
from medscale.data.sources import DataError, load_conversations
from medscale.data.pipeline import build_datasets
from medscale.recipe import load_recipe

REC = {"instruction": "头痛怎么办", "question": "经常头痛怎么办", "think": "考虑紧张性头痛", "answer": "注意休息。"}


def _jsonl(path, records, extra_lines=()):
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_skip_bad_records_counts_them_and_fails_above_the_fraction(tmp_path):
    f = _jsonl(tmp_path / "d.jsonl", [REC] * 99, ["{broken", json.dumps({**REC, "answer": ""}, ensure_ascii=False)])
    counts: dict = {}
    assert len(load_conversations(str(f), on_bad_record="skip", max_bad_fraction=0.05, counts=counts)) == 99
    assert counts["bad_records"] == 2
    with pytest.raises(DataError, match=r"2 of 101 records are bad .*d.jsonl:100: malformed JSON"):
        load_conversations(str(f), on_bad_record="skip", max_bad_fraction=0.01)
    with pytest.raises(DataError, match=r"d.jsonl:100: malformed JSON"):
        load_conversations(str(f))


def test_truncate_prompt_from_the_left_keeps_the_answer(tiny_tokenizer):
    msgs = [{"role": "user", "content": "问" * 300}, {"role": "assistant", "content": "注意休息"}]
    full = encode(tiny_tokenizer, msgs, 10**6)
    enc = encode(tiny_tokenizer, msgs, 64, truncation="truncate_prompt_left")
    assert len(enc.input_ids) == 64 and enc.truncated
    assert enc.labels == full.labels[-64:] and enc.input_ids == full.input_ids[-64:]
    long_answer = [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答" * 300}]
    assert encode(tiny_tokenizer, long_answer, 64, truncation="truncate_prompt_left") is None


def _data_recipe(tmp_path, *extra):
    return load_recipe("tiny-demo", [f"train.output_dir={tmp_path}/out", *extra]).data


def test_mixing_weights_no_reasoning_and_saved_datasets(tmp_path, tiny_tokenizer):
    from datasets import Dataset

    a = _jsonl(tmp_path / "a.jsonl", [{**REC, "question": f"问题{i}"} for i in range(10)])
    plain = [{"instruction": f"指令{i}", "input": "", "output": "回答"} for i in range(10)]
    Dataset.from_list(plain).save_to_disk(str(tmp_path / "saved"))
    data = _data_recipe(tmp_path, f"data.sources=[{{path: {a}, weight: 2}}, {{path: {tmp_path}/saved, weight: 0.5}}]",
                        "data.eval_size=0", "eval.eval_strategy=no")
    built = build_datasets(data, tiny_tokenizer, seed=0)
    assert built.stats["train"]["records"] == 10 * 2 + 5
    think_only = data.model_copy(update={"no_reasoning": "drop"})
    built = build_datasets(think_only, tiny_tokenizer, seed=0)
    assert built.stats["train"]["records"] == 20 and built.stats["train"]["no_reasoning_dropped"] == 5


def test_cache_is_reused_and_keyed_by_options(tmp_path, tiny_tokenizer):
    data = _data_recipe(tmp_path)
    cache = tmp_path / "cache"
    first = build_datasets(data, tiny_tokenizer, 0, cache_dir=cache)
    again = build_datasets(data, tiny_tokenizer, 0, cache_dir=cache)
    assert "cache" in again.stats and again.train["input_ids"] == first.train["input_ids"]
    other = build_datasets(data.model_copy(update={"max_length": 256}), tiny_tokenizer, 0, cache_dir=cache)
    assert "cache" not in other.stats and len(list(cache.iterdir())) == 2
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "no half-written cache entry"


def test_inspect_marks_loss_tokens_when_piped(tmp_path, tiny_model_dir):
    f = _jsonl(tmp_path / "d.jsonl", [REC])
    p = run_cli("data", "inspect", str(f), "--tokenizer", str(tiny_model_dir), "--n", "1")
    assert p.returncode == 0, p.stderr
    body = p.stdout.split(" ---\n", 1)[1]  # after the record's header line (the first line names format, tokenizer)
    trained = body.split("[[", 1)[1].split("]]", 1)[0]
    assert "考虑紧张性头痛" in trained and "注意休息" in trained and "经常头痛怎么办" not in trained and "经常头痛怎么办" in body


def test_stats_json(tmp_path, tiny_model_dir):
    f = _jsonl(tmp_path / "d.jsonl", [{**REC, "answer": "答" * n} for n in (5, 50, 500)])
    p = run_cli("data", "stats", str(f), "--tokenizer", str(tiny_model_dir), "--max-len", "256",
                "--batch-size", "2", "--json")
    s = json.loads(p.stdout)
    assert s["records"] == 3 and s["over_max_len"] == 1 and s["tokens_max"] > 256
    assert 0 < s["padding_waste"] < 1 and 0 < s["packing_efficiency"] <= 1


# (file, roles counted, records, median, p90, max) as SOURCES.md states them; content tokens, no template
SOURCES = [
    ("medicalgpt/medical_sft_1K_format.jsonl", ("user", "assistant"), 1000, 112, 431, 2370),
    ("medicalgpt/sharegpt_zh_1K_format.jsonl", ("user", "assistant"), 992, 470, 1879, 29501),
    ("delicate_medical_r1/val.jsonl", ("assistant",), 241, 699, 920, 3091),
    ("medical_o1/medical_o1_zh_916.jsonl", ("assistant",), 916, 465, None, 918),
    ("medical_o1/demo_data.json", ("assistant",), 198, 609, None, 1065),
]


@pytest.mark.parametrize("rel,roles,n,median,p90,mx", SOURCES, ids=[s[0] for s in SOURCES])
def test_real_sft_files_match_sources_md(rel, roles, n, median, p90, mx, qwen3_tokenizer):
    path = needs_realdata(*rel.split("/"))
    convs = load_conversations(str(path), on_bad_record="skip", max_bad_fraction=0.01)
    assert len(convs) == n  # sharegpt_zh: 8 of its 1000 records have an empty turn and are skipped
    tok = lambda t: len(qwen3_tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    lens = np.array([sum(tok(m["content"]) + tok(m.get("reasoning_content", "")) for m in c if m["role"] in roles)
                     for c in convs])
    assert abs(np.median(lens) - median) <= 0.02 * median
    assert p90 is None or abs(np.percentile(lens, 90) - p90) <= 0.02 * p90
    assert lens.max() == mx
    # and every record renders with Qwen3's template with loss on its answer
    for msgs in convs[:50]:
        enc = encode(qwen3_tokenizer, msgs, 10**6)
        assert enc is not None and any(t != IGNORE for t in enc.labels)


def test_empty_after_filtering_is_an_error(tmp_path, tiny_tokenizer):
    f = _jsonl(tmp_path / "d.jsonl", [{**REC, "answer": "答" * 400}])
    data = _data_recipe(tmp_path, f"data.sources=[{{path: {f}}}]", "data.eval_size=0", "eval.eval_strategy=no",
                        "data.max_length=64")
    with pytest.raises(DataError, match="every record was dropped .*max_length 64"):
        build_datasets(data, tiny_tokenizer, 0)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no records"):
        load_conversations(str(empty))


def test_skip_limit_and_sample_train_on_the_first_n_and_validate_on_a_sample_of_the_rest(tmp_path, tiny_tokenizer):
    """Seed 003's split: train on the first records of a file, validate on a random sample of the records after
    them (no overlap, the training set whole)."""
    f = _jsonl(tmp_path / "h.jsonl", [{**REC, "question": f"问题{i}"} for i in range(50)])
    data = _data_recipe(tmp_path, f"data.sources=[{{path: {f}, limit: 30}}]", "data.eval_size=0",
                        f"data.eval_sources=[{{path: {f}, skip: 30, sample: 6}}]")
    built = build_datasets(data, tiny_tokenizer, seed=3)
    assert built.stats["train"]["records"] == 30 and built.stats["eval"]["records"] == 6
    train_q = {q for q in (tiny_tokenizer.decode(x) for x in built.train["input_ids"])}
    held = [tiny_tokenizer.decode(x) for x in built.eval["input_ids"]]
    numbers = [int(re.search(r"问题 ?(\d+)", t).group(1)) for t in held]
    assert all(30 <= n < 50 for n in numbers) and numbers == sorted(numbers) and len(set(numbers)) == 6
    assert not set(held) & train_q
    again = build_datasets(data, tiny_tokenizer, seed=3)
    assert [tiny_tokenizer.decode(x) for x in again.eval["input_ids"]] == held, "the sample is seeded"
    other = build_datasets(data, tiny_tokenizer, seed=4)
    assert [tiny_tokenizer.decode(x) for x in other.eval["input_ids"]] != held
    assert len(load_conversations(str(f), skip=45)) == 5
    with pytest.raises(DataError, match=r"no records after the first 50"):
        load_conversations(str(f), skip=50)
