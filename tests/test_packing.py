"""Packing: best-fit-decreasing bins, and each sample's loss inside a pack equals its loss alone."""
from __future__ import annotations

import random

import pytest
import torch

from medscale.data.chat import IGNORE
from medscale.data.packing import PackedCollator, best_fit_decreasing, pack_rows, packing_efficiency


def test_bfd_respects_budget_and_uses_every_sample_once():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    lower_bound = -(-sum(lengths) // 128)
    assert len(bins) <= lower_bound * 1.05 + 1  # BFD is within a few percent of optimal here


def test_bfd_best_fit_choice():
    # 6 goes to the bin with the least room that fits (room 6 after the 4), not the emptier one
    assert best_fit_decreasing([7, 4, 6, 3], 10) == [[0, 3], [2, 1]]
    with pytest.raises(ValueError, match="exceeds the packing budget"):
        best_fit_decreasing([11], 10)


def test_pack_rows_restart_positions_and_mask_boundaries():
    rows = pack_rows([[1, 2, 3], [4, 5], [6]], [[IGNORE, 2, 3], [4, 5], [6]], budget=6)
    assert rows["num_samples"] == [3]
    assert rows["position_ids"][0] == [0, 1, 2, 0, 1, 0]
    assert rows["labels"][0] == [IGNORE, 2, 3, IGNORE, 5, IGNORE]
    assert packing_efficiency(rows, 6) == 1.0
    batch = PackedCollator()([{k: v[0] for k, v in rows.items()}])
    assert batch["input_ids"].shape == (1, 6) and "attention_mask" not in batch


def _sample_losses(logits, ids, spans):
    out = []
    for a, b in spans:
        lg, tgt = logits[a:b - 1], ids[a + 1:b]
        out.append(torch.nn.functional.cross_entropy(lg.float(), tgt, reduction="sum"))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_loss_inside_pack_equals_loss_alone(tiny_model_dir, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn).eval()
    g = torch.Generator().manual_seed(0)
    samples = [torch.randint(10, 1000, (n,), generator=g).tolist() for n in (37, 5, 64, 20)]
    rows = pack_rows(samples, samples, budget=200)
    assert rows["num_samples"] == [4]
    ids = torch.tensor(rows["input_ids"][0])
    bounds = [i for i, p in enumerate(rows["position_ids"][0]) if p == 0] + [len(ids)]
    spans = list(zip(bounds, bounds[1:]))
    with torch.no_grad():
        # use_cache=False as in training: transformers reads packed boundaries from position_ids only then
        packed = model(input_ids=ids[None], position_ids=torch.tensor(rows["position_ids"]), use_cache=False).logits[0]
        packed_losses = _sample_losses(packed, ids, spans)
        for (a, b), loss in zip(spans, packed_losses):
            alone = model(input_ids=ids[None, a:b], use_cache=False).logits[0]
            (ref,) = _sample_losses(alone, ids[a:b], [(0, b - a)])
            assert abs(loss.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item())), (a, b)


def test_packed_training_run(tiny_model_dir, tmp_path):
    from medscale.recipe import load_recipe
    from medscale.train.run import run

    s = run(load_recipe("tiny-demo", [f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path}/out",
                                      "data.packing=true", "train.max_steps=6", "eval.eval_steps=3",
                                      "track.swanlab=null", "train.logging_steps=1"]))
    st = s.data["train"]
    assert st["packs"] < st["kept"] and 0.5 < st["packing_efficiency"] <= 1.0
    assert st["pack_tokens"] == 512 * 8
    assert s.loss_last < s.loss_first and s.global_step == 6
