"""Big and odd data (issue 20, item 28): text fields that are not text are bad records with file:line, a JSON-lines
file is read as it streams by, and training loads what `medscale check` tokenized instead of tokenizing again."""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

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


def test_medscale_check_reads_each_data_file_once_and_a_cached_check_none(tiny_model_dir, tmp_path, monkeypatch):
    """Defect: check read every file twice (counting its records, then tokenizing), and a second check, on the
    tokenized data it had cached, stopped with an AttributeError traceback (the cache's path was taken for a
    split's statistics). The records are now counted while they are tokenized, and a check that finds them cached
    reads nothing and reports the same counts."""
    from medscale.data import sources

    reads = []
    original = sources.read_records

    def counted(path, *args, **kwargs):
        reads.append(path.name)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(sources, "read_records", counted)
    path = _jsonl(tmp_path / "d.jsonl", [{**GOOD, "question": f"问题{i}"} for i in range(58)]
                  + [{**GOOD, "question": 1}, {**GOOD, "think": 2}])
    run = ["tiny-demo", f"model.path={tiny_model_dir}", f"data.sources=[{{path: '{path}', format: r1-think}}]",
           "data.on_bad_record=skip", "data.max_bad_fraction=0.1", "data.eval_size=6",
           f"train.output_dir={tmp_path}/out"]
    for times_read in (1, 0):
        reads.clear()
        r = cli("check", *run)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "d.jsonl: 58 record(s), 2 bad record(s) skipped" in r.stdout
        assert "train: 52 of 52 records kept" in r.stdout and "eval: 6 of 6 records kept" in r.stdout
        assert reads == ["d.jsonl"] * times_read


def _user_prompts(ds) -> set[str]:
    return {next(m["content"] for m in json.loads(c) if m["role"] == "user") for c in ds["messages"]}


def test_records_go_to_disk_a_batch_at_a_time_as_the_file_streams_by(tiny_tokenizer, tmp_path):
    """Defect: every record was held in memory for tokenizing (the conversations as Python lists, then datasets'
    in-memory from_dict, map and filter): about 18 KB a record, 3.9 GB for 200k lines. Now they go to an arrow
    file in the cache's temp folder a batch (pipeline.BATCH) at a time, as the file is read: through a named pipe,
    the first batch is on disk while the writer still holds back the rest. What is built is memory-mapped from the
    cache entry, and the work files are gone from it."""
    from medscale.data.pipeline import BATCH, build_datasets
    from medscale.recipe import load_recipe

    fifo, cache = tmp_path / "stream.jsonl", tmp_path / "cache"
    os.mkfifo(fifo)
    rows = [json.dumps({**GOOD, "question": f"问题{i}"}, ensure_ascii=False) + "\n" for i in range(BATCH + 6)]
    on_disk = threading.Event()

    def write():
        with fifo.open("w", encoding="utf-8") as f:
            f.writelines(rows[:BATCH + 1])
            f.flush()
            for _ in range(1200):  # a reader that holds the file whole writes nothing before its end
                if any(p.stat().st_size for p in cache.rglob("*.arrow")):
                    on_disk.set()
                    break
                time.sleep(0.1)
            f.writelines(rows[BATCH + 1:])

    writer = threading.Thread(target=write)
    writer.start()
    data = load_recipe("tiny-demo", [f"data.sources=[{{path: '{fifo}', format: r1-think}}]", "data.eval_size=5",
                                     f"train.output_dir={tmp_path}/out"]).data
    try:
        built = build_datasets(data, tiny_tokenizer, seed=0, cache_dir=cache)
    finally:
        writer.join()
    assert on_disk.is_set(), "nothing was written before the whole file was read"
    assert len(built.train) == BATCH + 1 and len(built.eval) == 5
    assert not _user_prompts(built.train) & _user_prompts(built.eval), "eval_size holds out whole prompts"
    [entry] = cache.iterdir()
    for ds in (built.train, built.eval):
        assert ds.cache_files and all(Path(f["filename"]).is_relative_to(entry) for f in ds.cache_files)
    assert not list(cache.rglob("work")), "the work files are removed from the cache entry"


def test_a_weight_that_leaves_no_records_says_so(tiny_tokenizer, tmp_path):
    from medscale.data.pipeline import build_datasets
    from medscale.recipe import load_recipe

    path = _jsonl(tmp_path / "d.jsonl", [GOOD] * 3)
    data = load_recipe("tiny-demo", [f"data.sources=[{{path: '{path}', format: r1-think, weight: 0.1}}]",
                                     "data.eval_size=0", "eval.eval_strategy=no",
                                     f"train.output_dir={tmp_path}/out"]).data
    with pytest.raises(DataError, match=r"data.sources: no records left after their weights .* raise a weight"):
        build_datasets(data, tiny_tokenizer, seed=0)
