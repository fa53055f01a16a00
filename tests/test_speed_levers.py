"""Issue 24, lever 5 (the optimizer and the step): a training step that neither logs, saves nor evaluates makes no
host-device sync of medscale's or the Trainer's loop (each one stalls the host until the GPU has finished the step);
the recipe picks fused AdamW and the data loader's pinned memory."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import torch

from tests.conftest import tiny_run_recipe

DEMO = "${MEDSCALE_DEMO_DATA}/medical_r1_demo.jsonl"
# What makes the host wait for the device when called on a GPU tensor.
SYNCS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu")
# The loop's code: medscale's, the Trainer's and transformers' mask making (the rest of the model's own forward and
# torch's optimizers are not counted).
LOOP = (str(Path(__file__).resolve().parent.parent / "medscale"), "transformers/trainer.py",
        "transformers/masking_utils.py")


def test_a_quiet_step_makes_no_host_device_sync(tiny_model_dir, tmp_path, monkeypatch):
    """Defect: the finiteness check read its device flag every step and the Trainer's token count read one every
    micro-batch (`.item()`), so the host waited for the GPU before it could queue the next step; transformers'
    packed-row detection read one every forward of the varlen path (the collator's boundaries now make its masks)
    and adaptive clipping read the gradient norm every step (its threshold now stays on the device). Every call that
    would sync is counted (not changed) from the loop's own code: steps that log, save or end may read, the others
    none. The run uses fused AdamW, which a recipe can now pick over paged 8-bit."""
    from transformers import TrainerCallback

    from medscale.train.run import run

    calls: Counter = Counter()
    step = [0]

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, **kw):
            caller = sys._getframe(1).f_code.co_filename
            if any(part in caller for part in LOOP):
                calls[step[0]] += 1
            return original(self, *a, **kw)
        return wrapper

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))

    class Steps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            step[0] = state.global_step + 1

        def on_train_begin(self, args, state, control, optimizer=None, **kw):
            fused.append(optimizer.optimizer.defaults.get("fused") if hasattr(optimizer, "optimizer")
                         else optimizer.defaults.get("fused"))

    fused: list = []
    out = tmp_path / "quiet"
    run(tiny_run_recipe(tiny_model_dir, out, DEMO, "r1-think", "data.batching=padding_free", "data.max_length=256",
                        "train.max_steps=5", "train.logging_steps=4", "train.optim=adamw_torch_fused",
                        "train.per_device_train_batch_size=1", "train.gradient_accumulation_steps=2",
                        "adapter.modules_to_save=null", "model.attn_implementation=varlen",
                        "train.adaptive_clip={percentile: 90, window: 4, min_history: 2}",
                        limit=16), callbacks=[Steps()])  # 5 steps in one epoch
    step[0] = 0
    logged = {h["step"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h}
    assert logged == {1, 4} and fused == [True]
    quiet = {s: calls[s] for s in range(1, 6) if s not in logged | {5}}  # the last step reads before the final save
    assert quiet == {2: 0, 3: 0}, quiet
    assert all(calls[s] > 0 for s in logged), "a logging step reads the loss: the counting sees the loop's syncs"


def test_pinned_memory_is_a_recipe_key(tiny_model_dir, tmp_path):
    """train.dataloader_pin_memory (default on) pins batches and copies them without blocking where there is a GPU;
    on CPU nothing is pinned (pinning warns there); workers stay alive across epochs; the Trainer field itself is the
    recipe key's."""
    import pytest

    from medscale.recipe import RecipeError, load_recipe
    from medscale.train.args import training_arguments

    def args(*extra):
        return training_arguments(load_recipe("tiny-demo", [f"model.path={tiny_model_dir}", "track.swanlab=null",
                                                            f"train.output_dir={tmp_path / 'o'}", *extra]), False)

    cuda = torch.cuda.is_available()
    default = args()
    assert default.dataloader_pin_memory is cuda and default.accelerator_config.non_blocking is cuda
    assert not default.dataloader_persistent_workers
    off = args("train.dataloader_pin_memory=false", "train.dataloader_num_workers=2")
    assert off.dataloader_pin_memory is False and off.accelerator_config.non_blocking is False
    assert off.dataloader_persistent_workers and off.dataloader_num_workers == 2
    with pytest.raises(RecipeError, match="train.trainer_args.dataloader_pin_memory: set train.dataloader_pin_memory"):
        args("train.trainer_args={dataloader_pin_memory: false}")


def test_speed_semantics_dry_run_splits_the_variants(tmp_path, monkeypatch, capsys):
    """bench/speed.py --semantics (issue 24): `seed` runs the seed stack (hf_baseline.py at the recipe's 4 x 2), then
    the recipe as shipped, the seed stack reproduced on medscale's batches (the loss reference), the levers (fused
    AdamW among them), never a packed variant, over 50 steps; `packed` runs only the packed ones."""
    from tests.conftest import SHARED, bench_script, needs_realdata

    assets = tmp_path / "assets"
    (assets / "delicate_medical_r1").mkdir(parents=True)
    for name, src in (("qwen3_tokenizer", needs_realdata("qwen3_tokenizer")),
                      ("delicate_medical_r1/val.jsonl", needs_realdata("delicate_medical_r1", "val.jsonl")),
                      ("model_configs.json", needs_realdata("model_configs.json")),
                      ("hf_baseline.py", SHARED / "gpu" / "hf_baseline.py")):
        (assets / name).symlink_to(src)
    speed = bench_script("speed")

    def dry(semantics):
        monkeypatch.setattr(sys, "argv", ["speed.py", "--assets", str(assets), "--dry-run", "--suite", "qwen3-1.7b",
                                          "--semantics", semantics])
        monkeypatch.setenv("OUT", str(tmp_path / "out"))
        speed.main()
        return capsys.readouterr().out.strip().splitlines()

    baseline, shipped, reference, *levers = dry("seed")
    assert "hf_baseline.py --shape qwen3-1.7b" in baseline and "--bs 4 --accum 2" in baseline
    assert all("--steps 50" in line for line in (baseline, shipped, reference, *levers))
    assert shipped.split()[-1].startswith("train.output_dir="), "as shipped: no override after the run's own"
    assert "data.batching=padded" in reference and "model.fp32_frozen_weights=true" in reference
    assert "train.merge_accumulation=off" in reference and "train.use_liger_kernel=false" in reference
    assert any(line.endswith("train.optim=adamw_torch_fused") for line in levers)
    assert not any("data.batching=packed" in line or "train.logging_steps=1" in line
                   for line in (shipped, reference, *levers)), "the recipe's samples per step and log lines"
    baseline, *packed = dry("packed")
    assert packed and all("data.batching=packed" in line and "train.logging_steps=1" in line for line in packed)
    assert not list((tmp_path / "out").glob("speed_*.json")), "a dry run writes no result"
