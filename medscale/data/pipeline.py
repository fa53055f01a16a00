"""Recipe `data` section -> tokenized train/eval datasets and the collator. `medscale.train.run`
gets its data only from here."""
from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from medscale.data.augment import TermMasker
from medscale.data.chat import IGNORE, encode
from medscale.data.packing import PackedCollator, concat_samples, pack_rows, packing_efficiency
from medscale.data.sources import DataError, expand_sources, iter_conversations, sample_indices
from medscale.paths import private_tree, temp_dir_beside
from medscale.recipe import DataSection, DataSource

log = logging.getLogger("medscale.data")
# Records per arrow write and per tokenizing batch: what is ever held in memory at once, whatever the file's size.
BATCH = 1000


@dataclass
class SFTData:
    train: object  # datasets.Dataset
    eval: object | None
    collator: "SFTCollator"
    stats: dict = field(default_factory=dict)
    cache: Path | None = None  # the cache entry it was loaded from (what a RunPlan names)


def _features(**columns: str):
    """datasets Features from column types: "string", "bool", "int64", or "int32[]" for a list of int32 (token ids
    fit int32: half of what Python ints would be written as, on disk and in the pages read)."""
    from datasets import Features, Sequence, Value

    return Features({k: Sequence(Value(v[:-2])) if v.endswith("[]") else Value(v) for k, v in columns.items()})


def _on_disk(rows, path: Path, features) -> object:
    """Rows written to an arrow file as they come, `BATCH` at a time, and opened memory-mapped: a file of any size
    is never held whole (datasets' from_dict / from_list would hold it, and map on it would hold its output too)."""
    from datasets import Dataset
    from datasets.arrow_writer import ArrowWriter

    with ArrowWriter(path=str(path), features=features, writer_batch_size=BATCH) as writer:
        for row in rows:
            writer.write(row)
        writer.finalize()
    return Dataset.from_file(str(path))


def _prompt_key(msgs: list[dict]) -> str:
    return next(m["content"] for m in msgs if m["role"] == "user")


def _raw_rows(convs):
    for c in convs:
        yield {"messages": json.dumps(c, ensure_ascii=False), "prompt": _prompt_key(c),
               "reasoning": bool(c[-1].get("reasoning_content"))}


def _load(sources: list[DataSource], data: DataSection, seed: int, counts: dict, work: Path, *, group: str):
    """All sources, each repeated or subsampled by its weight, records without reasoning dropped if asked: one
    dataset on disk (in `work`), read once as the files stream by. `counts` gets, besides the bad records and
    formats, each source's records and bad records (`medscale check` reports them without reading again)."""
    from datasets import concatenate_datasets

    parts = []
    for i, src in enumerate(sources):
        bad_before = counts.get("bad_records", 0)
        got = _on_disk(_raw_rows(iter_conversations(src.path, src.format, data.prompt_field, data.system_prompt,
                                                    src.limit, on_bad_record=data.on_bad_record,
                                                    max_bad_fraction=data.max_bad_fraction, counts=counts,
                                                    skip=src.skip)),
                       work / f"{group}-{i}.arrow", _features(messages="string", prompt="string", reasoning="bool"))
        if (picked := sample_indices(len(got), src.sample, f"{seed}:{src.path}")) is not None:
            got = got.select(picked)
        counts.setdefault("sources", []).append({"records": len(got),
                                                 "bad_records": counts.get("bad_records", 0) - bad_before})
        whole, frac = int(src.weight), src.weight - int(src.weight)
        parts += [got] * whole
        if part := round(frac * len(got)):
            parts.append(got.select(random.Random(f"{seed}:{src.path}").sample(range(len(got)), part)))
    if not parts:
        raise DataError(f"data.{group}: no records left after their weights (each source's records x its weight "
                        f"rounds to 0): raise a weight")
    ds = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if data.no_reasoning == "drop":
        kept = ds.filter(lambda flags: flags, input_columns="reasoning", batched=True, batch_size=BATCH)
        counts["no_reasoning_dropped"] = len(ds) - len(kept)
        ds = kept
        if not len(ds):
            raise DataError("no records left after data.no_reasoning=drop")
    return ds


def held_prompts(prompts: Counter, size: float, seed: int) -> set[str]:
    """The prompts held out for eval (`prompts`: how many records each has; `size` > 0: data.eval_size): chosen by
    prompt, so no prompt appears in both train and eval; deterministic for a seed."""
    total = sum(prompts.values())
    order = sorted(prompts)
    random.Random(seed).shuffle(order)
    want = int(size) if size >= 1 else max(1, round(size * total))
    held, n = set(), 0
    for p in order:
        if n >= want:
            break
        held.add(p)
        n += prompts[p]
    if n >= total:
        raise DataError(f"data.eval_size={size} leaves no training records")
    return held


def _split_eval(ds, size: float, seed: int):
    """(train, eval or None), split by held_prompts; the prompts are counted a batch at a time."""
    if not size:
        return ds, None
    prompts: Counter = Counter()
    for batch in ds.select_columns("prompt").iter(batch_size=BATCH):
        prompts.update(batch["prompt"])
    held = held_prompts(prompts, size, seed)
    return tuple(ds.filter(lambda ps, out=out: [(p in held) == out for p in ps], input_columns="prompt",
                           batched=True, batch_size=BATCH) for out in (False, True))


SHOW_PROGRESS_FROM = 5000  # records: below this, tokenizing takes seconds and its progress bars are only noise


@contextmanager
def progress_bars(records: int):
    """datasets' progress bars (map, filter, save) only for work long enough to watch."""
    import datasets

    hide = records < SHOW_PROGRESS_FROM and datasets.is_progress_bar_enabled()
    if hide:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if hide:
            datasets.enable_progress_bars()


def truncation_note(stats: dict) -> str | None:
    """What data.max_length and data.truncation did to a split's records, with the keys that change it (the run's
    log, its end-of-run report, `medscale check`); None when every record fit."""
    n, dropped, cut = stats.get("records", 0), stats.get("dropped", 0), stats.get("truncated", 0)
    max_len, policy = stats.get("max_length", "?"), stats.get("truncation", "drop")
    parts = []
    if dropped:
        why = ("longer than data.max_length" if policy == "drop" else
               "too long to cut (their prompt alone fills data.max_length) or left with no trained token")
        fix = ("raise data.max_length, or set data.truncation=truncate_response to train on their first "
               f"{max_len} tokens" if policy == "drop" else "raise data.max_length")
        parts.append(f"{dropped} of {n} records ({dropped / max(n, 1):.0%}) dropped: {why} ({max_len} tokens, "
                     f"data.truncation={policy}); {fix}")
    if cut:  # kept, but cut (dropped ones are counted apart)
        parts.append(f"{cut} of {n} records ({cut / max(n, 1):.0%}) cut to data.max_length="
                     f"{max_len} (data.truncation={policy}); raise data.max_length to train on them whole")
    return "; ".join(parts) or None


def _tokenize(raw, tok, data: DataSection, counts: dict):
    """`raw`'s conversations (on disk) tokenized into a dataset beside them, `BATCH` records at a time: records
    data.max_length drops never come out, and the statistics are read from arrow columns, never from Python lists
    of every record's tokens."""
    import pyarrow.compute as pc

    def fn(batch, idxs):
        out = {"messages": [], "input_ids": [], "labels": [], "idx": [], "truncated": [], "label_tokens": []}
        for raw_msgs, i in zip(batch["messages"], idxs):
            enc = encode(tok, json.loads(raw_msgs), data.max_length, data.train_on, data.truncation)
            if enc is None:
                continue
            for k, v in (("messages", raw_msgs), ("input_ids", enc.input_ids), ("labels", enc.labels), ("idx", i),
                         ("truncated", enc.truncated), ("label_tokens", sum(t != IGNORE for t in enc.labels))):
                out[k].append(v)
        return out

    with progress_bars(len(raw)):
        ds = raw.map(fn, batched=True, batch_size=BATCH, writer_batch_size=BATCH, with_indices=True,
                     remove_columns=raw.column_names, desc="tokenizing",
                     num_proc=data.num_proc if data.num_proc > 1 and len(raw) > BATCH else None,  # 1: no pool
                     features=_features(messages="string", input_ids="int32[]", labels="int32[]", idx="int64",
                                        truncated="bool", label_tokens="int64"))
    stats = {**counts, "records": len(raw), "dropped": len(raw) - len(ds),
             "truncated": pc.sum(ds.data.column("truncated")).as_py() or 0,
             "max_length": data.max_length, "truncation": data.truncation}
    if (note := truncation_note(stats)) is not None:
        log.warning("%s", note)
    if len(ds) == 0:
        raise DataError(f"every record was dropped (max_length {data.max_length}, truncation {data.truncation}): "
                         f"raise data.max_length or set data.truncation=truncate_response")
    lengths = pc.list_value_length(ds.data.column("input_ids"))
    stats.update(kept=len(ds), tokens=pc.sum(lengths).as_py(), max_tokens=pc.max(lengths).as_py(),
                 mean_tokens=round(pc.mean(lengths).as_py(), 1),
                 label_tokens=pc.sum(ds.data.column("label_tokens")).as_py())
    return ds.remove_columns(["truncated", "label_tokens"]), stats


class SFTCollator:
    """A micro-batch as model inputs, by data.batching: padded to its longest sample (labels with -100),
    concatenated into one row (padding_free), or a packed row as built. Re-renders prompts with term
    masking when the recipe asks for it (before concatenation, so masked lengths are exact).

    The training step reaches the collator through shared memory: with `train.dataloader_num_workers > 0` it runs
    in worker processes that were given a copy of it, and a plain attribute set in the main process would never
    reach them (progressive masking would stay at p=0). Batches prefetched before a step lag it by the prefetch
    depth (a few steps), which a ramp over hundreds of steps does not notice."""

    def __init__(self, tok, data: DataSection, seed: int):
        import multiprocessing

        from transformers import DataCollatorForSeq2Seq

        self.tok, self.data = tok, data
        self.masker = TermMasker(data.term_masking, seed) if data.term_masking else None
        self._shared = multiprocessing.RawArray("d", 2)  # step, progress: shared with DataLoader workers
        self.pad = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE, pad_to_multiple_of=8)
        self.packed = PackedCollator()
        # under train.compile: rows padded to a few lengths up to this cap (packing.bucket_length); None: as they are
        self.row_cap: int | None = None

    def set_progress(self, step: int, max_steps: int) -> None:
        self._shared[0], self._shared[1] = step, step / max(max_steps, 1)

    @property
    def step(self) -> int:
        return int(self._shared[0])

    @property
    def progress(self) -> float:
        return self._shared[1]

    def _features(self, f: dict) -> dict:
        ids, labels = f["input_ids"], f["labels"]
        if self.masker is not None and "messages" in f:
            msgs = self.masker(json.loads(f["messages"]), self.step, self.progress, f["idx"])
            enc = encode(self.tok, msgs, self.data.max_length, self.data.train_on, self.data.truncation)
            if enc is not None:
                ids, labels = enc.input_ids, enc.labels
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    def __call__(self, features: list[dict]) -> dict:
        if "position_ids" in features[0]:
            return self.packed(features, self.row_cap)
        feats = [self._features(f) for f in features]
        if self.data.batching == "padding_free":
            return concat_samples(feats, self.row_cap)
        return self.pad(feats)


def _pack(ds, budget: int, stats: dict):
    from datasets import Dataset

    rows = pack_rows(ds["input_ids"], ds["labels"], budget)
    stats.update(packs=len(rows["input_ids"]), pack_tokens=budget,
                 packing_efficiency=round(packing_efficiency(rows, budget), 4),
                 samples_per_pack=round(len(ds) / len(rows["input_ids"]), 3))
    return Dataset.from_dict(rows)


def cache_key(data: DataSection, tok, seed: int, pack_budget: int | None) -> str:
    """Data files (path, size, mtime) + tokenizer (vocabulary, template) + every option that shapes a sample."""
    h = hashlib.sha256()
    for src in data.sources + data.eval_sources:
        for f in expand_sources(src.path):
            for part in sorted(f.rglob("*")) if f.is_dir() else [f]:
                st = part.stat()
                h.update(f"{part.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(f"{tok.chat_template}|{tok.eos_token}|{seed}|{pack_budget}".encode())
    h.update(json.dumps(data.model_dump(mode="json", exclude={"num_proc"}), sort_keys=True).encode())
    return h.hexdigest()[:20]


def cache_root() -> Path:
    """Where tokenized data is cached: `medscale check` fills it, so the run it checked loads instead of tokenizing."""
    from medscale import medscale_home

    return medscale_home() / "cache" / "data"


def _from_cache(path: Path, data: DataSection, tok, seed: int, stats: dict) -> SFTData:
    from datasets import load_from_disk

    ev = load_from_disk(str(path / "eval")) if (path / "eval").is_dir() else None
    return SFTData(load_from_disk(str(path / "train")), ev, SFTCollator(tok, data, seed), stats, path)


def cached_datasets(path: Path, data: DataSection, tok, seed: int) -> SFTData | None:
    """The cache entry at `path` (the one a RunPlan names: pre-flight tokenized it), or None when it is gone."""
    if not (path / "stats.json").is_file():
        return None
    log.info("tokenized data from cache %s", path)
    return _from_cache(path, data, tok, seed, {**json.loads((path / "stats.json").read_text()), "cache": str(path)})


def _build(data: DataSection, tok, seed: int, pack_budget: int | None, work: Path) -> SFTData:
    """The datasets, written in the folder `work` as they are made (the source files are read once)."""
    work.mkdir(exist_ok=True)
    counts: dict = {}
    ds = _load(data.sources, data, seed, counts, work, group="sources")
    if data.eval_sources:
        eval_counts: dict = {}
        train_raw, eval_raw = ds, _load(data.eval_sources, data, seed, eval_counts, work, group="eval_sources")
    else:
        (train_raw, eval_raw), eval_counts = _split_eval(ds, data.eval_size, seed), {}
    train, stats = _tokenize(train_raw, tok, data, counts)
    if pack_budget:
        train = _pack(train, pack_budget, stats)
    result = SFTData(train, None, SFTCollator(tok, data, seed), {"train": stats})
    if eval_raw is not None:
        result.eval, result.stats["eval"] = _tokenize(eval_raw, tok, data, eval_counts)
    return result


def _to_cache(path: Path, data: DataSection, tok, seed: int, pack_budget: int | None) -> SFTData:
    """Built in a temp folder and renamed: a crash never leaves a cache entry that looks complete. The user's alone
    (paths.PRIVATE): it holds the training records, tokenized; so does the work in progress, inside the temp
    folder (mkdtemp's 0700)."""
    tmp = temp_dir_beside(path, private=True)
    try:
        result = _build(data, tok, seed, pack_budget, tmp / "work")
        with progress_bars(len(result.train)):
            result.train.save_to_disk(str(tmp / "train"))
            if result.eval is not None:
                result.eval.save_to_disk(str(tmp / "eval"))
        (tmp / "stats.json").write_text(json.dumps(result.stats))
        shutil.rmtree(tmp / "work")
        private_tree(tmp)
        tmp.rename(path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, OSError) or not (path / "stats.json").is_file():  # else another process won the race
            raise
    return _from_cache(path, data, tok, seed, json.loads((path / "stats.json").read_text()))


def build_datasets(data: DataSection, tok, seed: int, pack_budget: int | None = None,
                   cache_dir: Path | None = None) -> SFTData:
    """Train (packed when `pack_budget` is given) and eval (never packed: exact per-sample loss), on disk: memory
    holds a batch of records, not the files. With `cache_dir`, a build is saved under a key of data + tokenizer +
    options and reused; without, it lives in datasets' temporary folder, removed when the process ends."""
    if cache_dir is None:
        from datasets.fingerprint import get_temporary_cache_files_directory

        return _build(data, tok, seed, pack_budget, Path(tempfile.mkdtemp(dir=get_temporary_cache_files_directory())))
    path = cache_dir / cache_key(data, tok, seed, pack_budget)
    if (cached := cached_datasets(path, data, tok, seed)) is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    return _to_cache(path, data, tok, seed, pack_budget)
