"""End-to-end training on CPU with a tiny random Qwen3: real HF Trainer, real peft, real files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medscale.recipe import load_recipe
from medscale.train.callbacks import AdaptiveClipper

pytestmark = pytest.mark.slow


def _recipe(tiny_model_dir, out, *extra):
    return load_recipe("tiny-demo", [f"model.path={tiny_model_dir}", f"train.output_dir={out}", "train.max_steps=24",
                                     "train.logging_steps=2", "train.save_steps=12", "eval.eval_steps=12",
                                     "track.swanlab=null", *extra])


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    from medscale.train.run import run

    out = tmp_path_factory.mktemp("run") / "out"
    return run(_recipe(tiny_model_dir, out)), out


def test_loss_decreases_and_outputs_are_complete(trained):
    summary, out = trained
    assert summary.world_size == 1 and summary.global_step == 24
    assert summary.loss_last < summary.loss_first - 0.5
    assert summary.eval_loss_final < summary.eval_loss_base and "better than the base" in summary.verdict
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer_config.json", "trainer_state.json",
                 "recipe.resolved.yaml", "loss.png", "run_summary.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "run_summary.json").read_text())["fingerprint"] == summary.fingerprint
    for ckpt in ("checkpoint-12", "checkpoint-24"):
        assert (out / ckpt / "adapter_model.safetensors").is_file() and (out / ckpt / "recipe.resolved.yaml").is_file()


def test_throughput_metrics_are_logged(trained):
    summary, out = trained
    logs = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert logs and all(h["tokens_per_s"] > 0 and h["samples_per_s"] > 0 for h in logs)
    assert summary.tokens_per_s > 0 and summary.data.train.label_tokens > 0
    # real tokens only: the run saw no more tokens than its samples contain, padding excluded
    assert logs[-1]["num_input_tokens_seen"] <= 24 * 8 * summary.data.train.max_tokens


def test_adapter_reloads_with_peft_and_generates(trained, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out = trained
    tok = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompt = tok.apply_chat_template([{"role": "user", "content": "高血压患者需要注意什么？"}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        base_logits = base(**ids).logits
        model = PeftModel.from_pretrained(base, out).eval()
        tuned_logits = model(**ids).logits
        gen = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert not torch.allclose(base_logits, tuned_logits), "the adapter changes the model"
    assert gen.shape[1] > ids["input_ids"].shape[1]
    assert tok.decode(gen[0, ids["input_ids"].shape[1]:])


def test_adaptive_clipping_rule():
    c = AdaptiveClipper(static=0.3, percentile=50, window=4, min_history=3)
    for n in (1.0, 2.0):
        c.observe(n)
    assert c.threshold() == 0.3  # too little history: the static max_grad_norm
    for n in (3.0, 4.0, 100.0, float("nan")):
        c.observe(n)
    assert c.threshold() == pytest.approx(3.5)  # median of the last 4 finite norms: 2, 3, 4, 100


def test_adaptive_clipping_in_training(tiny_model_dir, tmp_path):
    from medscale.train.run import run

    summary = run(_recipe(tiny_model_dir, tmp_path / "out", "train.max_steps=8", "train.logging_steps=1",
                          "eval.eval_strategy=no", "train.max_grad_norm=0.01",
                          "train.adaptive_clip={percentile: 50, window: 10, min_history: 3}"))
    logs = [h for h in json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    thresholds = [h["clip_threshold"] for h in logs]
    assert thresholds[0] == 0.01 and thresholds[-1] > 0.01 and summary.global_step == 8


def test_term_masking_reaches_the_batches(tiny_model_dir, tiny_tokenizer):
    from medscale.data.pipeline import build_datasets

    r = _recipe(tiny_model_dir, "/unused", "data.term_masking={p: 1.0, progressive: false}")
    data = build_datasets(r.data, tiny_tokenizer, seed=0)
    feats = [data.train[i] for i in range(8)]
    masked = data.collator(feats)
    plain = build_datasets(_recipe(tiny_model_dir, "/unused").data, tiny_tokenizer, seed=0).collator(feats)
    text = tiny_tokenizer.batch_decode(masked["input_ids"])
    assert any("[MASK]" in t for t in text)
    # the answers (labels) are identical: masking touches the prompt only
    strip = lambda lab: [t for t in lab.tolist() if t != -100]  # noqa: E731
    assert [strip(x) for x in masked["labels"]] == [strip(x) for x in plain["labels"]]


def test_progressive_masking_reaches_dataloader_workers(tiny_model_dir, tiny_tokenizer):
    """Defect (suspected from reading, confirmed): the Trainer tells the collator the step in the main process, so
    with train.dataloader_num_workers > 0 the workers' copies never saw it and masking stayed at p=0."""
    from torch.utils.data import DataLoader

    from medscale.data.pipeline import build_datasets

    r = _recipe(tiny_model_dir, "/unused", "data.term_masking={p: 1.0, progressive: true}")
    data = build_datasets(r.data, tiny_tokenizer, seed=0)
    loader = DataLoader(data.train, batch_size=8, collate_fn=data.collator, num_workers=1, persistent_workers=True,
                        prefetch_factor=1)
    batches = iter(loader)
    masked = lambda b: any("[MASK]" in t for t in tiny_tokenizer.batch_decode(b["input_ids"]))  # noqa: E731
    assert not masked(next(batches)), "progress 0: nothing masked yet"
    data.collator.set_progress(100, 100)  # the ramp's end, told in the main process only
    next(batches)  # prefetched before the step changed
    assert masked(next(batches)), "a worker must see the step the main process set"


def test_verdict_says_plainly_when_the_fine_tune_is_worse(tiny_model_dir, tmp_path):
    """Seed 004: most fine-tunes were worse than the base and nothing said so. Here the summary does."""
    from medscale.train.run import run

    summary = run(_recipe(tiny_model_dir, tmp_path / "out", "train.max_steps=6", "eval.eval_steps=3",
                          "train.learning_rate=0.5", "train.warmup_ratio=0", "train.max_grad_norm=0"))
    assert summary.eval_loss_final > summary.eval_loss_base
    assert "WORSE than the base model" in summary.verdict


def test_swanlab_cloud_without_key_falls_back_to_offline(tiny_model_dir, tmp_path, monkeypatch):
    from medscale.train.tracking import finish_swanlab, start_swanlab

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    r = _recipe(tiny_model_dir, tmp_path / "out", "track.swanlab={project: p, mode: cloud}")
    assert start_swanlab(r, rank=1) == (None, None)  # rank 0 only
    cb, logdir = start_swanlab(r, rank=0)
    try:
        assert cb is not None and logdir == str(tmp_path / "out" / "swanlog")
        assert list((tmp_path / "out" / "swanlog").glob("run-*"))
    finally:
        finish_swanlab()


def test_swanlab_never_gets_a_token_from_the_git_remote_or_the_command_line(tiny_model_dir, tmp_path, monkeypatch):
    """Defect: SwanLab's metadata file stored the git remote URL with its embedded token and the full command line,
    mode 0644. Its git/runtime/package probes are off now and the log folder is private."""
    import subprocess
    import sys

    from medscale.train.tracking import finish_swanlab, start_swanlab

    repo = tmp_path / "project"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "remote", "add", "origin",
                    "https://alice:ghp_SECRETTOKEN123@github.com/lab/medical.git"], check=True)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["medscale", "train", "x", "--hf-token=hf_CMDLINESECRET"])
    r = _recipe(tiny_model_dir, tmp_path / "out", "track.swanlab={project: p, mode: offline}")
    cb, logdir = start_swanlab(r, rank=0)
    try:
        assert cb is not None
    finally:
        finish_swanlab()
    files = [p for p in Path(logdir).rglob("*") if p.is_file()]
    assert files, "SwanLab wrote its offline run"
    for f in files:
        data = f.read_bytes()
        assert b"SECRETTOKEN123" not in data and b"CMDLINESECRET" not in data, f
    assert Path(logdir).stat().st_mode & 0o077 == 0, "the log folder is private"


def test_throughput_meter_leaves_the_warm_up_step_out_of_the_run_totals(monkeypatch):
    from types import SimpleNamespace

    from medscale.train import callbacks

    clock = iter([0.0, 10.0, 10.0, 11.0, 11.0, 12.0])  # step 1 takes 10 s (compilation), steps 2 and 3 take 1 s
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    meter = callbacks.ThroughputMeter(samples_per_step=4, world_size=1, flops_per_token=None)
    state = SimpleNamespace(num_input_tokens_seen=0)
    for seen in (100, 200, 300):
        meter.on_step_begin(None, state, None)
        state.num_input_tokens_seen = seen
        meter.on_step_end(None, state, None)
    assert meter.summary() == {"tokens_per_s": 100.0, "tokens_per_s_per_device": 100.0, "samples_per_s": 4.0,
                               "first_step_s": 10.0}
    assert meter.pop_window()["tokens_per_s"] == 25.0  # the log window itself keeps every step


def test_auto_recompute_recomputes_the_plans_layers_and_learns_the_same(tmp_path, monkeypatch):
    """gradient_checkpointing=auto on a (pretended) GPU whose memory calls for some recompute: the run recomputes
    exactly the first layers the plan chose (their MLP runs twice per micro-batch: forward and recompute), and
    every setting learns the same numbers, since recompute changes memory, not results."""
    from transformers import TrainerCallback

    from medscale import plan as plan_mod
    from medscale.model.tiny import build_tiny_model
    from medscale.train.callbacks import decoder_blocks
    from medscale.train.run import run

    model = build_tiny_model(tmp_path / "tiny4", layers=4, hidden=64)
    base = ["train.max_steps=3", "train.logging_steps=1", "eval.eval_strategy=no", "data.eval_size=0",
            "train.use_liger_kernel=true"]  # Liger is ignored on CPU; the plan then leaves the logits out
    recipe = lambda gc, out: _recipe(model, tmp_path / out, *base, f"train.gradient_checkpointing={gc}")  # noqa: E731
    gb = next(g / 1e4 for g in range(6000, 20000)
              if plan_mod.plan(recipe("auto", "probe"), g / 1e4).recompute_layers == 2)  # 2 of 4 layers

    class CountMlpCalls(TrainerCallback):
        """Calls of each layer's MLP, and of the embedding (once per micro-batch: it is never recomputed)."""

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.calls = [0] * 5
            count = lambda i: lambda *_: self.calls.__setitem__(i, self.calls[i] + 1)  # noqa: E731
            for i, block in enumerate(decoder_blocks(model)):
                block.mlp.register_forward_pre_hook(count(i))
            model.get_input_embeddings().register_forward_pre_hook(count(4))

    seen = {}
    for gc in ("auto", "true", "false"):  # only auto on the pretended GPU: false would not fit it (the plan refuses)
        monkeypatch.setattr(plan_mod, "device_memory_gb", lambda: gb if gc == "auto" else None)
        counter = CountMlpCalls()
        summary = run(recipe(gc, gc), callbacks=[counter])
        per_batch = [c / counter.calls[-1] for c in counter.calls[:-1]]
        history = json.loads((tmp_path / gc / "trainer_state.json").read_text())["log_history"]
        seen[gc] = per_batch, [h["loss"] for h in history if "loss" in h], summary.global_step
    assert seen["auto"][0] == [2, 2, 1, 1]
    assert seen["true"][0] == [2, 2, 2, 2] and seen["false"][0] == [1, 1, 1, 1]
    assert seen["auto"][2] == seen["true"][2] == seen["false"][2] == 3
    assert seen["auto"][1] == pytest.approx(seen["true"][1], rel=1e-5)
    assert seen["auto"][1] == pytest.approx(seen["false"][1], rel=1e-5)
