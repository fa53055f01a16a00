"""Rows without padding: several samples per row, no attention across samples.

`packed`: samples are placed best-fit-decreasing into rows of at most `budget` tokens.
`padding_free`: the micro-batch the sampler drew is concatenated into one row at collate time
(the seed's samples per step, without the padding). Either way a row carries `position_ids`
that restart at 0 for every sample, the samples' boundaries as `cu_seq_lens_q/k` +
`max_length_q/k` (transformers' flash-attention kwargs, computed once here instead of in
every layer) and no attention mask. Varlen kernels (medscale.model.attention, flash
attention) read the boundaries; sdpa/eager build a block-diagonal causal mask from the
position_ids restarts. A sample's loss inside a row equals its loss alone.
"""
from __future__ import annotations

import bisect

from medscale.data.chat import IGNORE


def best_fit_decreasing(lengths: list[int], budget: int) -> list[list[int]]:
    """Sample indices grouped into bins of at most `budget` tokens: longest first, each into the
    bin with the least room that still fits it (a new bin when none does)."""
    if any(n > budget for n in lengths):
        raise ValueError(f"a sample of {max(lengths)} tokens exceeds the packing budget of {budget}")
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin id), sorted
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        pos = bisect.bisect_left(free, (lengths[i], -1))
        if pos == len(free):
            bins.append([i])
            room, b = budget - lengths[i], len(bins) - 1
        else:
            room, b = free.pop(pos)
            bins[b].append(i)
            room -= lengths[i]
        bisect.insort(free, (room, b))
    return bins


def pack_rows(input_ids: list[list[int]], labels: list[list[int]], budget: int) -> dict[str, list]:
    """Columns of the packed dataset: one row per bin."""
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "num_samples": []}
    for group in best_fit_decreasing([len(x) for x in input_ids], budget):
        ids, labs, pos = concat_lists([input_ids[i] for i in sorted(group)], [labels[i] for i in sorted(group)])
        out["input_ids"].append(ids)
        out["labels"].append(labs)
        out["position_ids"].append(pos)
        out["num_samples"].append(len(group))
    return out


def concat_lists(input_ids: list[list[int]], labels: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
    """Samples end to end: (input_ids, labels, position_ids restarting at 0 per sample). The first token
    of each sample carries no label: it is never predicted from the previous sample's tokens."""
    ids, labs, pos = [], [], []
    for x, y in zip(input_ids, labels):
        ids += x
        labs += [IGNORE] + list(y[1:])
        pos += range(len(x))
    return ids, labs, pos


def packing_efficiency(rows: dict[str, list] | list[list[int]], budget: int) -> float:
    """Real tokens / (rows x budget): 1.0 means no slot of the budget is wasted."""
    ids = rows["input_ids"] if isinstance(rows, dict) else rows
    return sum(len(x) for x in ids) / (len(ids) * budget) if ids else 0.0


def length_buckets(cap: int, smallest: int = 256) -> list[int]:
    """The row lengths a compiled step sees: powers of two from `smallest` below `cap`, then `cap` itself. A
    compiled graph (and a CUDA graph) is made per shape: a few shapes bound the recompiles; packed rows, filled
    near their budget, all land on `cap`."""
    out, n = [], smallest
    while n < cap:
        out.append(n)
        n *= 2
    return out + [cap]


def bucket_length(n: int, cap: int) -> int:
    """The bucket a row of `n` tokens is padded to (n itself past `cap`: a row is never cut)."""
    return next((b for b in length_buckets(cap) if b >= n), n)


def row_batch(input_ids: list[int], labels: list[int], position_ids: list[int], cap: int | None = None) -> dict:
    """One row as model inputs: [1, T] tensors, no attention mask, and the sample boundaries (starts
    where position_ids restart) as the varlen kwargs every attention layer reuses. With `cap` (compiled steps)
    the row is padded to its bucket by one dummy sample whose labels are all -100 (attention never crosses
    samples, so the loss is unchanged) and max_length is the row's length: a bound varlen kernels accept, one
    value per bucket, where the longest sample would be a new one per batch."""
    import torch

    if cap is not None and (extra := bucket_length(len(input_ids), cap) - len(input_ids)):
        input_ids, labels = input_ids + [0] * extra, labels + [IGNORE] * extra
        position_ids = position_ids + list(range(extra))
    starts = [i for i, p in enumerate(position_ids) if p == 0 or i == 0]
    cu = starts + [len(input_ids)]
    longest = len(input_ids) if cap is not None else max(b - a for a, b in zip(cu, cu[1:]))
    cu_t = torch.tensor(cu, dtype=torch.int32)
    return {"input_ids": torch.tensor([input_ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([position_ids], dtype=torch.long),
            "cu_seq_lens_q": cu_t, "cu_seq_lens_k": cu_t, "max_length_q": longest, "max_length_k": longest}


def concat_samples(features: list[dict], cap: int | None = None) -> dict:
    """padding_free: a micro-batch's samples (input_ids, labels) as one row without padding (but to its bucket
    under `cap`: see row_batch)."""
    return row_batch(*concat_lists([f["input_ids"] for f in features], [f["labels"] for f in features]), cap=cap)


class PackedCollator:
    """One packed row per micro-batch (position_ids carry the sample boundaries)."""

    def __call__(self, features: list[dict], cap: int | None = None) -> dict:
        if len(features) != 1:
            raise ValueError("packed batches hold one row per micro-batch (per_device_train_batch_size is 1)")
        f = features[0]
        return row_batch(f["input_ids"], f["labels"], f["position_ids"], cap=cap)
