"""Recipe `data` section -> tokenized train/eval datasets and the collator. `medscale.train.run`
gets its data only from here."""
from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from medscale.data.augment import TermMasker
from medscale.data.chat import IGNORE, encode
from medscale.data.packing import PackedCollator, concat_samples, pack_rows, packing_efficiency
from medscale.data.sources import DataError, expand_sources, load_conversations, sample_conversations
from medscale.paths import private_tree, temp_dir_beside
from medscale.recipe import DataSection, DataSource

log = logging.getLogger("medscale.data")


@dataclass
class SFTData:
    train: object  # datasets.Dataset
    eval: object | None
    collator: "SFTCollator"
    stats: dict = field(default_factory=dict)


def _load(sources: list[DataSource], data: DataSection, seed: int, counts: dict) -> list[list[dict]]:
    """All sources, each repeated or subsampled by its weight, records without reasoning dropped if asked."""
    convs = []
    for src in sources:
        got = sample_conversations(load_conversations(src.path, src.format, data.prompt_field, data.system_prompt,
                                                      src.limit, data.on_bad_record, data.max_bad_fraction, counts,
                                                      src.skip), src.sample, f"{seed}:{src.path}")
        whole, frac = int(src.weight), src.weight - int(src.weight)
        convs += got * whole + random.Random(f"{seed}:{src.path}").sample(got, round(frac * len(got)))
    if data.no_reasoning == "drop":
        kept = [c for c in convs if c[-1].get("reasoning_content")]
        counts["no_reasoning_dropped"] = len(convs) - len(kept)
        convs = kept
        if not convs:
            raise DataError("no records left after data.no_reasoning=drop")
    return convs


def _prompt_key(msgs: list[dict]) -> str:
    return next(m["content"] for m in msgs if m["role"] == "user")


def split_eval(convs: list[list[dict]], size: float, seed: int) -> tuple[list, list]:
    """Deterministic split by prompt, so no prompt appears in both train and eval."""
    if not size:
        return convs, []
    counts = Counter(_prompt_key(c) for c in convs)
    prompts = sorted(counts)
    random.Random(seed).shuffle(prompts)
    want = int(size) if size >= 1 else max(1, round(size * len(convs)))
    held, n = set(), 0
    for p in prompts:
        if n >= want:
            break
        held.add(p)
        n += counts[p]
    train = [c for c in convs if _prompt_key(c) not in held]
    if not train:
        raise DataError(f"data.eval_size={size} leaves no training records")
    return train, [c for c in convs if _prompt_key(c) in held]


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


def _tokenize(convs: list[list[dict]], tok, data: DataSection, counts: dict):
    from datasets import Dataset

    def fn(batch, idxs):
        out = {"input_ids": [], "labels": [], "status": [], "idx": idxs}
        for raw in batch["messages"]:
            enc = encode(tok, json.loads(raw), data.max_length, data.train_on, data.truncation)
            out["input_ids"].append(enc.input_ids if enc else [])
            out["labels"].append(enc.labels if enc else [])
            out["status"].append("dropped" if enc is None else ("truncated" if enc.truncated else "ok"))
        return out

    ds = Dataset.from_dict({"messages": [json.dumps(c, ensure_ascii=False) for c in convs]})
    with progress_bars(len(ds)):
        ds = ds.map(fn, batched=True, with_indices=True, num_proc=data.num_proc if len(ds) > 1000 else None,
                    desc="tokenizing")
    status = ds["status"]
    stats = {**counts, "records": len(ds), "dropped": status.count("dropped"), "truncated": status.count("truncated"),
             "max_length": data.max_length, "truncation": data.truncation}
    if (note := truncation_note(stats)) is not None:
        log.warning("%s", note)
    with progress_bars(len(ds)):
        ds = ds.filter(lambda s: s != "dropped", input_columns="status").remove_columns("status")
    if len(ds) == 0:
        raise DataError(f"every record was dropped (max_length {data.max_length}, truncation {data.truncation}): "
                         f"raise data.max_length or set data.truncation=truncate_response")
    lengths = [len(x) for x in ds["input_ids"]]
    stats.update(kept=len(ds), tokens=sum(lengths), max_tokens=max(lengths),
                 mean_tokens=round(sum(lengths) / len(lengths), 1),
                 label_tokens=sum(sum(1 for t in lab if t != IGNORE) for lab in ds["labels"]))
    return ds, stats


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
            return self.packed(features)
        feats = [self._features(f) for f in features]
        if self.data.batching == "padding_free":
            return concat_samples(feats)
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


def _from_cache(path: Path, data: DataSection, tok, seed: int) -> SFTData:
    from datasets import load_from_disk

    stats = json.loads((path / "stats.json").read_text())
    ev = load_from_disk(str(path / "eval")) if (path / "eval").is_dir() else None
    return SFTData(load_from_disk(str(path / "train")), ev, SFTCollator(tok, data, seed), {**stats, "cache": str(path)})


def _to_cache(path: Path, result: SFTData) -> None:
    """Written to a temp folder and renamed: a crash never leaves a cache entry that looks complete. The user's alone
    (paths.PRIVATE): it holds the training records, tokenized."""
    tmp = temp_dir_beside(path, private=True)
    try:
        with progress_bars(len(result.train)):
            result.train.save_to_disk(str(tmp / "train"))
            if result.eval is not None:
                result.eval.save_to_disk(str(tmp / "eval"))
        (tmp / "stats.json").write_text(json.dumps(result.stats))
        private_tree(tmp)
        tmp.rename(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not path.is_dir():  # another process may have won the race; otherwise it is a real failure
            raise


def build_datasets(data: DataSection, tok, seed: int, pack_budget: int | None = None,
                   cache_dir: Path | None = None) -> SFTData:
    """Train (packed when `pack_budget` is given) and eval (never packed: exact per-sample loss).
    With `cache_dir`, a build is saved under a key of data + tokenizer + options and reused."""
    if cache_dir is not None:
        path = cache_dir / cache_key(data, tok, seed, pack_budget)
        if (path / "stats.json").is_file():
            log.info("tokenized data from cache %s", path)
            return _from_cache(path, data, tok, seed)
    counts: dict = {}
    convs = _load(data.sources, data, seed, counts)
    if data.eval_sources:
        eval_counts: dict = {}
        train_convs, eval_convs = convs, _load(data.eval_sources, data, seed, eval_counts)
    else:
        (train_convs, eval_convs), eval_counts = split_eval(convs, data.eval_size, seed), {}
    train, stats = _tokenize(train_convs, tok, data, counts)
    if pack_budget:
        train = _pack(train, pack_budget, stats)
    result = SFTData(train, None, SFTCollator(tok, data, seed), {"train": stats})
    if eval_convs:
        result.eval, result.stats["eval"] = _tokenize(eval_convs, tok, data, eval_counts)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _to_cache(path, result)
    return result
