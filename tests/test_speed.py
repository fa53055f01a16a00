"""Speed paths on CPU: data.batching in recipes, the varlen attention's own code (layout, GQA, boundaries)
against a reference kernel, and the memory plan (shapes, components, budgets, refusals, CLI)."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import needs_realdata
from medscale.recipe import RecipeError, load_recipe


# --------------------------------------------------------------------------- recipe: data.batching

def test_gpu_recipes_default_to_padding_free_varlen_and_demo_stays_padded():
    for name in ("qwen3-1.7b-qlora-v1", "qwen3-1.7b-qlora-v3", "qwen3-8b-lora-huatuo", "r1-distill-7b-lora-fast"):
        r = load_recipe(name)
        assert (r.data.batching, r.model.attn_implementation) == ("padding_free", "varlen"), name
    assert load_recipe("tiny-demo").data.batching == "padded"


def test_legacy_packing_key_reads_as_batching():
    assert load_recipe("tiny-demo", ["data.packing=true"]).data.batching == "packed"
    assert load_recipe("tiny-demo", ["data.packing=false"]).data.batching == "padded"
    with pytest.raises(RecipeError, match="contradicts data.batching=padding_free"):
        load_recipe("tiny-demo", ["data.packing=true", "data.batching=padding_free"])


@pytest.mark.parametrize("overrides, message", [
    (["data.batching=packed", "data.term_masking.p=0.1"], "use data.batching=padding_free"),
    (["data.pack_tokens=4096"], "applies only to data.batching=packed"),
    (["data.batching=packed", "data.pack_tokens=100"], "below data.max_length=512"),
    (["data.batching=ragged"], "data.batching"),
])
def test_batching_errors_name_the_key_and_fix(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("tiny-demo", overrides)


def test_padding_free_allows_term_masking():
    r = load_recipe("qwen3-1.7b-qlora-v3")
    assert r.data.term_masking is not None and r.data.batching == "padding_free"


# --------------------------------------------------------------------------- varlen attention, kernel branch

def _reference_varlen(new_api: bool):
    """torch's varlen_attn semantics (causal attention inside each cu_seqlens segment), in float32 sdpa."""
    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale=None, window_size=None, enable_gqa=False, is_causal=False):
        assert q.dtype == torch.bfloat16 and cu_q.dtype == torch.int32 and max_q == max(cu_q.diff().tolist())
        assert window_size == (-1, 0) if new_api else is_causal
        if not new_api:
            assert k.shape[1] == q.shape[1], "old kernels get key/value heads repeated"
        out = torch.empty_like(q)
        cu = cu_q.tolist()
        for a, b in zip(cu, cu[1:]):
            qs, ks, vs = (x[a:b].transpose(0, 1).float() for x in (q, k, v))
            out[a:b] = torch.nn.functional.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True).transpose(0, 1).to(out.dtype)
        return out

    names = {"query", "key", "value", "scale"} | ({"window_size", "enable_gqa"} if new_api else {"is_causal"})
    return kernel, frozenset(names)


@pytest.mark.parametrize("new_api", [True, False], ids=["torch>=2.11", "torch2.10"])
@pytest.mark.parametrize("given", ["cu_seq_lens", "position_ids"])
def test_varlen_branch_matches_per_sample_attention(monkeypatch, new_api, given):
    from medscale.model import attention as att

    monkeypatch.setattr(att, "KERNEL_DEVICES", {"cpu"})
    monkeypatch.setattr(att, "_varlen_kernel", lambda: _reference_varlen(new_api))
    g = torch.Generator().manual_seed(0)
    lens, hq, hkv, d = [5, 11, 3], 4, 2, 8
    t = sum(lens)
    q, k, v = (torch.randn(1, h, t, d, generator=g) for h in (hq, hkv, hkv))
    pos = torch.tensor([[i for n in lens for i in range(n)]])
    cu = torch.tensor([0, 5, 16, 19], dtype=torch.int32)
    kw = ({"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 11, "max_length_k": 11}
          if given == "cu_seq_lens" else {"position_ids": pos})
    out, _ = att.varlen_attention_forward(None, q, k, v, None, scaling=d ** -0.5, **kw)
    assert out.shape == (1, t, hq, d)
    for a, b in zip(cu.tolist(), cu[1:].tolist()):
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True, enable_gqa=True).transpose(1, 2)
        torch.testing.assert_close(out[:, a:b].float(), ref, atol=2e-2, rtol=2e-2)


def test_boundaries_and_block_mask_helpers():
    from medscale.model.attention import block_causal_mask, boundaries_from_positions

    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    cu, longest = boundaries_from_positions(pos, 2, 6)
    assert cu.tolist() == [0, 3, 5, 6, 12] and longest == 6
    m = block_causal_mask(cu, 2, 6)[:, 0]
    assert m[0, 4].tolist() == [False, False, False, True, True, False]   # second sample sees only itself
    assert m[1].equal(torch.ones(6, 6, dtype=torch.bool).tril())           # one sample: plain causal


# --------------------------------------------------------------------------- memory plan

@pytest.fixture
def real_models(tmp_path):
    """Model folders holding only the real config.json of each seed model (shapes, no weights)."""
    spec = json.loads(needs_realdata("model_configs.json").read_text())["models"]
    out = {}
    for hub, cfg in spec.items():
        d = tmp_path / hub.split("/")[1]
        d.mkdir()
        (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if not isinstance(v, (dict, str))
                                                   or k == "model_type"}))
        out[hub] = (d, cfg["approx_params"])
    return out


def test_plan_counts_the_real_models_parameters(real_models):
    from medscale.plan import Shape

    for hub, (d, expected) in real_models.items():
        shape = Shape.from_config(json.loads((d / "config.json").read_text()))
        assert shape.total_params() == pytest.approx(expected, rel=2e-3), hub


def _plan(name, path, gpu, *overrides):
    from medscale.plan import plan

    # the recipe's micro-batch as written (merging accumulation is tests/test_speed_merge.py's)
    return plan(load_recipe(name, [f"model.path={path}", "train.merge_accumulation=off", *overrides]), gpu)


def test_plan_components_follow_the_recipe(real_models):
    p17 = real_models["Qwen/Qwen3-1.7B"][0]
    every = "train.gradient_checkpointing=true"  # the seeds' recompute, on every layer
    qlora = _plan("qwen3-1.7b-qlora-v1", p17, 16, every)
    bf16 = _plan("qwen3-1.7b-qlora-v1", p17, 16, every, "model.load_in_4bit=false")
    parts = {c.name: c.gib for c in qlora.components}
    assert parts["weights: decoder linears (4-bit)"] < 0.3 * [c.gib for c in bf16.components][0]
    assert qlora.tokens == 4 * 2048 and qlora.fits and qlora.token_budget is None
    no_liger = _plan("qwen3-1.7b-qlora-v1", p17, 16, every, "train.use_liger_kernel=false")
    assert {c.name: c.gib for c in no_liger.components}["logits + loss"] > 20 * parts["logits + loss"]
    no_rc = _plan("qwen3-1.7b-qlora-v1", p17, 16, "train.gradient_checkpointing=false")
    assert no_rc.allocated_gib > 3 * qlora.allocated_gib and not no_rc.fits
    assert "train.gradient_checkpointing=true" in no_rc.problems[0]
    # peft's k-bit preparation (the seeds') keeps the 0.31B frozen non-linear weights and the residual in fp32
    up = _plan("qwen3-1.7b-qlora-v1", p17, 16, every, "model.fp32_frozen_weights=true")
    ups = {c.name: c.gib for c in up.components}
    assert ups["weights: embeddings, lm_head, norms (fp32)"] == pytest.approx(
        2 * parts["weights: embeddings, lm_head, norms (bfloat16)"]) == pytest.approx(0.31e9 * 4 / 2**30, rel=0.05)
    assert ups["activations (recompute 28/28 layers)"] > parts["activations (recompute 28/28 layers)"]


def test_auto_recompute_recomputes_only_what_the_gpu_needs(real_models):
    """Seed 000's QLoRA micro-batch (4 x 2048 tokens) on its 16 GB card: recompute on every layer is more than
    it needs, none does not fit; auto recomputes some layers, fewer on a larger card, all but the last on a card
    that only fits with all of them, and its plan stays inside the card."""
    p17 = real_models["Qwen/Qwen3-1.7B"][0]
    auto = {gb: _plan("qwen3-1.7b-qlora-v1", p17, gb, "train.gradient_checkpointing=auto") for gb in (6, 16, 24, 80)}
    assert not _plan("qwen3-1.7b-qlora-v1", p17, 16, "train.gradient_checkpointing=false").fits
    assert 0 < auto[16].recompute_layers < 28 and auto[16].fits and auto[16].reserved_gib + 0.6 <= 16
    assert auto[24].recompute_layers < auto[16].recompute_layers and auto[80].recompute_layers == 0
    full = _plan("qwen3-1.7b-qlora-v1", p17, 6, "train.gradient_checkpointing=true")
    # the last layer's backward comes first, right after its forward: recomputing it would save nothing
    assert full.fits and auto[6].recompute_layers == 27 and auto[6].allocated_gib < full.allocated_gib
    acts = {gb: next(c.gib for c in p.components if c.name.startswith("activations")) for gb, p in auto.items()}
    assert acts[6] < acts[16] < acts[24] < acts[80]
    assert auto[16].tokens == 4 * 2048
    # the shipped recipes are auto; seed 003's 8B on its 4 x RTX 4080 (32 GB) still recomputes most layers
    assert load_recipe("qwen3-1.7b-qlora-v1").train.gradient_checkpointing == "auto"
    seed003 = _plan("qwen3-8b-lora-huatuo", real_models["Qwen/Qwen3-8B"][0], 32)
    assert 0 < seed003.recompute_layers < 36 and seed003.fits


def test_a_job_saved_with_recompute_on_every_layer_resumes_under_auto():
    """The GPU recipes went from gradient_checkpointing=true to auto: a job checkpointed before resumes (the change
    is recorded), since recompute changes memory, not what is learned; a real change is still refused."""
    from medscale.jobs.resume import recipe_changes

    now = load_recipe("qwen3-8b-lora-huatuo")
    saved = load_recipe("qwen3-8b-lora-huatuo", ["train.gradient_checkpointing=true"])
    assert recipe_changes(saved, now) == (["train.gradient_checkpointing: True -> 'auto'"], [])
    lr = load_recipe("qwen3-8b-lora-huatuo", ["train.learning_rate=1e-4"])
    assert recipe_changes(saved, lr)[1] == ["train.learning_rate: 2e-05 -> 0.0001"]


def test_gradient_checkpointing_takes_true_false_or_auto():
    assert load_recipe("tiny-demo", ["train.gradient_checkpointing=auto"]).train.gradient_checkpointing == "auto"
    with pytest.raises(RecipeError, match="train.gradient_checkpointing"):
        load_recipe("tiny-demo", ["train.gradient_checkpointing=some"])


def test_packed_budget_grows_with_the_gpu_and_is_capped(real_models):
    from medscale.plan import BLOCK, PACK_CAP

    p8 = real_models["Qwen/Qwen3-8B"][0]
    small = _plan("qwen3-8b-lora-huatuo", p8, 20, "data.batching=packed")
    big = _plan("qwen3-8b-lora-huatuo", p8, 32, "data.batching=packed")
    assert 2048 <= small.token_budget < big.token_budget <= PACK_CAP and small.token_budget % BLOCK == 0
    assert small.reserved_gib + 0.6 <= 20 and small.fits
    assert _plan("qwen3-8b-lora-huatuo", p8, 32, "data.batching=packed", "data.pack_tokens=3000").token_budget == 3000


def test_plan_zero3_shards_weights_over_gpus(real_models):
    from medscale.plan import plan

    r = load_recipe("qwen3-8b-lora-huatuo", [f"model.path={real_models['Qwen/Qwen3-8B'][0]}", "dist.deepspeed=zero3"])
    one, four = plan(r, 80, 1), plan(r, 80, 4)
    assert four.components[0].gib == pytest.approx(one.components[0].gib / 4)


def test_recipe_that_cannot_fit_names_what_to_change(real_models):
    p7 = real_models["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"][0]
    p = _plan("r1-distill-7b-lora-fast", p7, 16)
    assert not p.fits and "train.per_device_train_batch_size=1" in p.problems[0]
    assert "gradient_accumulation_steps=64" in p.problems[0]  # the seed's batch of 64, one sample at a time
    fixed = _plan("r1-distill-7b-lora-fast", p7, 16, "train.per_device_train_batch_size=1",
                  "train.gradient_accumulation_steps=64")
    assert fixed.fits and fixed.tokens == 8192
    from medscale.plan import decide

    assert decide(load_recipe("r1-distill-7b-lora-fast", [f"model.path={p7}"]), 16).problems == p.problems
    assert decide(load_recipe("r1-distill-7b-lora-fast", [f"model.path={p7}"])).problems == []  # no GPU here


def test_token_budget_without_gpu_is_max_length_times_batch(tiny_model_dir):
    from medscale.plan import decide

    packed = decide(load_recipe("tiny-demo", [f"model.path={tiny_model_dir}", "data.batching=packed"]))
    assert packed.token_budget == 512 * 8 and packed.gpu_mem_gb is None and packed.recompute_layers == 0
    assert decide(load_recipe("tiny-demo", [f"model.path={tiny_model_dir}"])).token_budget is None


def test_plan_cli(real_models, tmp_path):
    from medscale.cli import app

    runner = CliRunner()
    p7 = real_models["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"][0]
    bad = runner.invoke(app, ["plan", "r1-distill-7b-lora-fast", f"model.path={p7}", "--gpu-mem", "16"])
    assert bad.exit_code == 2 and "train.per_device_train_batch_size=1" in bad.output
    ok = runner.invoke(app, ["plan", "r1-distill-7b-lora-fast", f"model.path={p7}", "--gpu-mem", "24", "--json"])
    assert ok.exit_code == 0, ok.output
    d = json.loads(ok.output)
    assert d["fits"] and d["tokens"] == 16384 and d["shape"]["model_type"] == "qwen2"
    assert abs(sum(c["gib"] for c in d["components"]) - d["allocated_gib"]) < 0.02
    p17 = real_models["Qwen/Qwen3-1.7B"][0]
    text, js = (runner.invoke(app, ["plan", "qwen3-1.7b-qlora-v1", f"model.path={p17}", "--gpu-mem", "16", *x])
                for x in ([], ["--json"]))
    k = json.loads(js.output)["recompute_layers"]  # the shipped auto: some of the 28 layers on seed 000's card
    assert 0 < k < 28 and json.loads(js.output)["recompute"] and f"recompute {k}/28 layers" in text.output
    nogpu = runner.invoke(app, ["plan", "tiny-demo"])
    assert nogpu.exit_code == 2 and "--gpu-mem" in nogpu.output
    shipped = runner.invoke(app, ["plan", "qwen3-8b-lora-huatuo", f"model.path={tmp_path}/none", "--gpu-mem", "80"])
    assert shipped.exit_code == 0 and "shipped shape of Qwen/Qwen3-8B (no weights on disk)" in shipped.output
    missing = runner.invoke(app, ["plan", "qwen3-8b-lora-huatuo", f"model.path={tmp_path}/none", "model.hub_id=null",
                                  "--gpu-mem", "80"])
    assert missing.exit_code == 2 and "config.json" in missing.output and f"{tmp_path}/none is missing" in missing.output
