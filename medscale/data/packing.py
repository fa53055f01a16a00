"""Packing: several samples per micro-batch row, no padding, no attention across samples.

Samples are placed best-fit-decreasing into rows of at most `budget` tokens. Each row
carries `position_ids` that restart at 0 for every sample and no attention mask;
transformers then builds a block-diagonal causal mask from the restarts (sdpa/eager)
or uses varlen kernels (flash attention), so a sample's loss inside a pack equals its
loss alone.
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
        ids, labs, pos = [], [], []
        for i in sorted(group):
            ids += input_ids[i]
            # the first token of a sample is never predicted from the previous sample's tokens
            labs += [IGNORE] + labels[i][1:]
            pos += list(range(len(input_ids[i])))
        out["input_ids"].append(ids)
        out["labels"].append(labs)
        out["position_ids"].append(pos)
        out["num_samples"].append(len(group))
    return out


def packing_efficiency(rows: dict[str, list] | list[list[int]], budget: int) -> float:
    """Real tokens / (rows x budget): 1.0 means no slot of the budget is wasted."""
    ids = rows["input_ids"] if isinstance(rows, dict) else rows
    return sum(len(x) for x in ids) / (len(ids) * budget) if ids else 0.0


class PackedCollator:
    """One packed row per micro-batch: no padding and no attention mask (position_ids carry the
    sample boundaries)."""

    def __call__(self, features: list[dict]) -> dict:
        import torch

        if len(features) != 1:
            raise ValueError("packed batches hold one row per micro-batch (per_device_train_batch_size is 1)")
        f = features[0]
        return {k: torch.tensor([f[k]], dtype=torch.long) for k in ("input_ids", "labels", "position_ids")}
