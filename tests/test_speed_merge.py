"""Issue 24, lever 1: accumulated micro-batches merged into fewer, larger ones where the memory plan fits them, at the
recipe's samples per step and the same per-token loss; the plan, check and the run's log say so."""
from __future__ import annotations

import json
import logging

import pytest

from tests.conftest import cli, tiny_run_recipe

DEMO = "${MEDSCALE_DEMO_DATA}/medical_r1_demo.jsonl"
BATCH = ["train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=2"]


def _train(tiny_model_dir, out, batching: str, merge: str, caplog):
    from medscale.train.run import run

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medscale.train"):
        run(tiny_run_recipe(tiny_model_dir, out, DEMO, "r1-think", *BATCH, f"data.batching={batching}",
                            f"train.merge_accumulation={merge}", "data.max_length=256", "train.max_steps=2",
                            "train.logging_steps=1", "adapter.modules_to_save=null", limit=16))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    memory = json.loads((out / "run_plan.json").read_text())["memory"]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("micro-batch ")]
    return [(h["loss"], h["grad_norm"]) for h in history if "loss" in h], memory, said


@pytest.mark.parametrize("batching", ["padded", "padding_free"])
def test_merged_micro_batch_trains_the_same_steps(tiny_model_dir, tmp_path, caplog, batching):
    """4 x 2 as written vs merged to 8 x 1 (no GPU: memory does not limit it): the same records make each of the
    2 steps, and the loss (averaged per token over the whole step) and gradient norm agree within 1e-5."""
    kept, kept_memory, kept_said = _train(tiny_model_dir, tmp_path / "kept", batching, "off", caplog)
    merged, memory, said = _train(tiny_model_dir, tmp_path / "merged", batching, "auto", caplog)
    assert (kept_memory["micro_batch"], kept_memory["accumulation"]) == (4, 2)
    assert kept_said == ["micro-batch 4 x accumulation 2 (kept: train.merge_accumulation=off)"]
    assert (memory["micro_batch"], memory["accumulation"]) == (8, 1)
    assert said == ["micro-batch 8 x accumulation 1 (was 4 x 2: no GPU here)"]
    assert len(merged) == len(kept) == 2
    for (loss_m, norm_m), (loss_k, norm_k) in zip(merged, kept):
        assert loss_m == pytest.approx(loss_k, rel=1e-5) and norm_m == pytest.approx(norm_k, rel=1e-5)


def _plan(tiny_model_dir, gpu_mem: str, *extra: str) -> dict:
    r = cli("plan", "tiny-demo", f"model.path={tiny_model_dir}", "data.max_length=512", *extra,
            "--gpu-mem", gpu_mem, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_plan_says_what_it_merges(tiny_model_dir):
    """`medscale plan --json`: the whole step in one micro-batch where it fits, the largest divisor of the step that
    fits where it does not, the recipe's as written with merge_accumulation=off; the text says why."""
    whole = _plan(tiny_model_dir, "16", *BATCH)
    assert (whole["micro_batch"], whole["accumulation"], whole["tokens"]) == (8, 1, 8 * 512)
    assert whole["batch_note"].startswith("micro-batch 8 x accumulation 1 (was 4 x 2: the plan fits 8 per step in ")
    part = _plan(tiny_model_dir, "0.85", "train.per_device_train_batch_size=2", "train.gradient_accumulation_steps=4")
    assert (part["micro_batch"], part["accumulation"]) == (4, 2) and "was 2 x 4" in part["batch_note"]
    off = _plan(tiny_model_dir, "16", *BATCH, "train.merge_accumulation=off")
    assert (off["micro_batch"], off["accumulation"], off["tokens"]) == (4, 2, 4 * 512)
    assert off["batch_note"] == "micro-batch 4 x accumulation 2 (kept: train.merge_accumulation=off)"
    packed = _plan(tiny_model_dir, "16", *BATCH, "data.batching=packed")
    assert (packed["micro_batch"], packed["accumulation"]) == (4, 2)
    assert "packed rows keep their own budget" in packed["batch_note"]
    text = cli("plan", "tiny-demo", f"model.path={tiny_model_dir}", *BATCH, "--gpu-mem", "16")
    assert "micro-batch 8 x accumulation 1 (was 4 x 2: the plan fits 8 per step in " in text.stdout


def test_bad_merge_key_is_one_line(tiny_model_dir):
    r = cli("plan", "tiny-demo", f"model.path={tiny_model_dir}", "train.merge_accumulation=yes", "--gpu-mem", "16")
    assert r.returncode == 2 and "train.merge_accumulation" in r.stderr + r.stdout
