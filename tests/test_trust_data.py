"""Big and odd data (issue 20, item 28): text fields that are not text are bad records with file:line, a JSON-lines
file is read as it streams by, and training loads what `medscale check` tokenized instead of tokenizing again."""
from __future__ import annotations

import json
import os
import re
import threading

import pytest

from conftest import cli
from medscale.data.sources import DataError, iter_conversations, load_conversations
from medscale.recipe import demo_data_dir

GOOD = {"question": "发热三天怎么办？", "instruction": "我发烧三天了", "think": "先问体温。", "answer": "多饮水，及时就医。"}

NOT_TEXT = [  # (format, record, the field the error names)
    ("r1-think", {**GOOD, "question": 42}, "field 'question' is int"),
    ("r1-think", {**GOOD, "think": 7}, "field 'think' is int"),
    ("r1-think", {**GOOD, "answer": ["多饮水"]}, "field 'answer' is list"),
    ("messages", {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "好"}]},
     "content of turn 1 (user) is int"),
    ("messages", {"messages": [{"role": "user", "content": "问"},
                               {"role": "assistant", "content": [{"type": "text", "text": "答"}]}]},
     "content of turn 2 (assistant) is list"),
    ("sharegpt", {"conversations": [{"from": "human", "value": 1.5}, {"from": "gpt", "value": "答"}]},
     "value of turn 1 (user) is float"),
    ("huatuo", {"data": ["问：头痛", 12]}, "data[1] is int"),
    ("alpaca", {"instruction": "问", "input": {"age": 3}, "output": "答"}, "field 'input' is dict"),
    ("medical-o1", {"Question": "问", "Complex_CoT": True, "Response": "答"}, "field 'Complex_CoT' is bool"),
]


def _jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("fmt,record,named", NOT_TEXT, ids=[f"{f}-{n.split(' is ')[0]}" for f, _, n in NOT_TEXT])
def test_a_text_field_that_is_not_text_is_a_bad_record_named_by_file_and_line(fmt, record, named, tmp_path):
    """Defect: 404 records whose `question` was an integer were accepted (r1-think fell back to `instruction`; turn
    contents were printed with str())."""
    good = {"r1-think": GOOD, "messages": {"messages": [{"role": "user", "content": "问"},
                                                        {"role": "assistant", "content": "答"}]},
            "sharegpt": {"conversations": [{"from": "human", "value": "问"}, {"from": "gpt", "value": "答"}]},
            "huatuo": {"data": ["问：头痛", "答：休息"]}, "alpaca": {"instruction": "问", "output": "答"},
            "medical-o1": {"Question": "问", "Response": "答"}}[fmt]
    path = _jsonl(tmp_path / "d.jsonl", [good, record, *[good] * 198])
    with pytest.raises(DataError, match=rf"d\.jsonl:2: bad {fmt} record: {re.escape(named)}.*expected text"):
        load_conversations(path, fmt)
    counts: dict = {}
    assert len(load_conversations(path, fmt, on_bad_record="skip", counts=counts)) == 199
    assert counts["bad_records"] == 1


def test_medscale_check_counts_integer_questions_as_bad_records(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [GOOD] * 95 + [{**GOOD, "question": i} for i in range(5)])
    base = ["tiny-demo", f"data.sources=[{{path: '{path}', format: r1-think}}]", "data.eval_size=0",
            "eval.eval_strategy=no", f"train.output_dir={tmp_path}/out"]
    r = cli("check", *base)
    assert r.returncode == 2 and "d.jsonl:96: bad r1-think record: field 'question' is int" in r.stderr
    r = cli("check", *base, "data.on_bad_record=skip", "data.max_bad_fraction=0.1")
    assert r.returncode == 0 and "95 record(s), 5 bad record(s) skipped" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_lines_are_read_as_they_arrive_never_the_whole_file_first(suffix, tmp_path):
    """Defect: every file was read whole (then split, then parsed) before its first record: ~20x its size in memory
    for a 200k-line file. A named pipe proves the streaming: the first conversation comes out while the writer
    still holds the rest back, and is waiting for exactly that."""
    fifo = tmp_path / f"stream{suffix}"
    os.mkfifo(fifo)
    first_seen = threading.Event()
    line = json.dumps(GOOD, ensure_ascii=False) + "\n"

    def write():
        with fifo.open("w", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            first_seen.wait(timeout=120)  # a reader that waits for the end of the file never sets it
            f.write(line * 3 + "{broken\n")

    writer = threading.Thread(target=write)
    writer.start()
    convs = iter_conversations(str(fifo), "r1-think", on_bad_record="skip", max_bad_fraction=0.5)
    try:
        assert next(convs)[0]["content"] == GOOD["question"]
        assert not writer.join(0) and writer.is_alive(), "the rest of the file was not written yet"
        first_seen.set()
        rest = list(convs)
    finally:
        first_seen.set()
        writer.join()
    assert len(rest) == 3


def test_train_loads_what_medscale_check_tokenized(tiny_model_dir, tmp_path, monkeypatch):
    """Defect: `medscale check` tokenized the data and threw it away; `medscale train` tokenized it all again. Check
    now fills the run's own cache (same key: files, tokenizer, every option), and the run loads it."""
    from medscale.data import pipeline

    calls = []
    original = pipeline._tokenize

    def counted(convs, *args, **kwargs):
        calls.append(len(convs))
        return original(convs, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_tokenize", counted)
    data = demo_data_dir() / "medical_r1_demo.jsonl"
    run = ["tiny-demo", f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path}/out", "train.max_steps=2",
           f"data.sources=[{{path: '{data}', format: r1-think, limit: 40}}]", "data.eval_size=8",
           "eval.eval_strategy=no", "track.swanlab=null", "train.save_steps=1000"]
    r = cli("check", *run)
    assert r.returncode == 0, r.stderr
    assert sorted(calls) == [8, 32], "check tokenizes the train and eval split"
    r = cli("train", *run)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(calls) == [8, 32], "train tokenized again instead of loading check's cache"
    assert (tmp_path / "out" / "run_summary.json").is_file()
