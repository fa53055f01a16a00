"""GPU checks of the fast paths (skipped without CUDA; run on the GPU host, reported in bench/results):
per-sample equivalence of padding-free rows and padded batches under every attention path a recipe can
pick, Liger on and off, and the QLoRA path end to end (NF4 double-quant load, paged 8-bit AdamW steps,
adapter saved and reloaded), ZeRO-3 with 4-bit weights stored in bf16."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

LENGTHS = (37, 5, 64, 20, 130)


def _samples():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(10, 1000, (n,), generator=g).tolist() for n in LENGTHS]


def _model(path, attn, **kw):
    from medscale.model.load import load_base_model
    from medscale.recipe import ModelSection

    return load_base_model(ModelSection(path=str(path), dtype="bfloat16", attn_implementation=attn, **kw))


def _per_sample_losses(logits, labels, spans):
    return [torch.nn.functional.cross_entropy(logits[a:b - 1].float(), labels[a + 1:b], reduction="sum")
            for a, b in spans]


def _padded(samples):
    longest = max(map(len, samples))
    ids = torch.tensor([x + [0] * (longest - len(x)) for x in samples])
    mask = torch.tensor([[1] * len(x) + [0] * (longest - len(x)) for x in samples])
    return ids, mask


@pytest.mark.parametrize("attn", ["varlen", "sdpa", "eager"])
def test_padding_free_row_equals_padded_batch(tiny_model_dir, attn, monkeypatch):
    """Loss per sample and the gradient of a weight: one padding-free row vs the padded batch."""
    from medscale.data.packing import concat_samples
    from medscale.model import attention as att

    calls = []
    if attn == "varlen":
        kernel, params = att._varlen_kernel()
        monkeypatch.setattr(att, "_varlen_kernel", lambda: (lambda *a, **k: calls.append(1) or kernel(*a, **k), params))
    model = _model(tiny_model_dir, attn)
    samples = _samples()
    row = {k: v.cuda() if torch.is_tensor(v) else v
           for k, v in concat_samples([{"input_ids": x, "labels": x} for x in samples]).items()}
    cu = row["cu_seq_lens_q"].tolist()
    spans = list(zip(cu, cu[1:]))
    weight = model.model.layers[-1].self_attn.q_proj.weight
    out = model(**{k: v for k, v in row.items() if k != "labels"}, use_cache=False).logits[0]
    got = _per_sample_losses(out, row["input_ids"][0], spans)
    sum(got).backward()
    grad_row, weight.grad = weight.grad.clone(), None
    if attn == "varlen":
        assert len(calls) == len(model.model.layers), "the varlen kernel served every layer"
    ids, mask = (t.cuda() for t in _padded(samples))
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    ref = [_per_sample_losses(logits[i], ids[i], [(0, n)])[0] for i, n in enumerate(LENGTHS)]
    sum(ref).backward()
    for a, b in zip(got, ref):
        assert abs(a.item() - b.item()) <= 2e-2 * abs(b.item())
    rel = (grad_row - weight.grad).float().norm() / weight.grad.float().norm()
    assert rel < 5e-2, rel


def _tiny_recipe(tiny_model_dir, out, *extra):
    from medscale.recipe import load_recipe

    return load_recipe("tiny-demo", [f"model.path={tiny_model_dir}", f"train.output_dir={out}", "model.dtype=bfloat16",
                                     "eval.eval_strategy=no", "track.swanlab=null", "train.logging_steps=1", *extra])


@pytest.mark.parametrize("fp32_frozen", [False, True], ids=["bf16-frozen", "fp32-frozen"])
def test_qlora_trains_saves_and_reloads(tiny_model_dir, tmp_path, fp32_frozen):
    """The default, and the seeds' way (`model.fp32_frozen_weights`: peft's k-bit preparation, which no longer
    switches recompute on itself: the Trainer does, here on every layer)."""
    from peft import PeftModel
    from transformers import TrainerCallback

    from medscale.data.packing import concat_samples
    from medscale.train.callbacks import decoder_blocks
    from medscale.train.run import run

    seen = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
            lin = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
            qs = lin.weight.quant_state
            opt = getattr(optimizer, "optimizer", optimizer)  # transformers builds bitsandbytes' AdamW, paged, 8-bit
            seen.update(layer=type(lin).__name__, quant=qs.quant_type, nested=qs.nested,
                        frozen=model.get_input_embeddings().weight.dtype,  # no k-bit fp32 upcast by default
                        recompute=[b.gradient_checkpointing for b in decoder_blocks(model)],
                        optim=(type(opt).__module__.split(".")[0], getattr(opt, "is_paged", None),
                               getattr(getattr(opt, "args", None), "optim_bits", None)))

    recipe = _tiny_recipe(tiny_model_dir, tmp_path / "q", "model.load_in_4bit=true", "train.optim=paged_adamw_8bit",
                          "data.batching=padding_free", "model.attn_implementation=varlen", "train.max_steps=4",
                          "train.gradient_checkpointing=true", "train.learning_rate=3e-3", "train.save_steps=2",
                          f"model.fp32_frozen_weights={str(fp32_frozen).lower()}")
    s = run(recipe, callbacks=[Probe()])
    assert seen == {"layer": "Linear4bit", "quant": "nf4", "nested": True,
                    "frozen": torch.float32 if fp32_frozen else torch.bfloat16,
                    "optim": ("bitsandbytes", True, 8), "recompute": [True, True]}, seen
    assert s.global_step == 4 and s.loss_last < s.loss_first
    # reload the saved adapter on a fresh 4-bit base: it must carry what was learned
    from medscale.data.pipeline import build_datasets
    from medscale.model.tokenizer import load_tokenizer

    data = build_datasets(recipe.data, load_tokenizer(recipe.model), recipe.train.seed)
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in concat_samples([data.train[i] for i in range(8)]).items()}
    base = _model(tiny_model_dir, "varlen", load_in_4bit=True)
    with torch.no_grad():
        before = base(**batch, use_cache=False).loss.item()
        tuned = PeftModel.from_pretrained(base, s.paths.adapter).eval()
        after = tuned(**batch, use_cache=False).loss.item()
    assert after < before


def test_zero3_with_4bit_weights_stored_in_bf16(tiny_model_dir, tmp_path):
    from medscale.train.run import run

    s = run(_tiny_recipe(tiny_model_dir, tmp_path / "z3", "model.load_in_4bit=true", "dist.deepspeed=zero3",
                         "model.bnb_4bit_quant_storage=bfloat16", "train.optim=adamw_torch", "train.max_steps=2",
                         "data.batching=padding_free", "model.attn_implementation=varlen"))
    assert s.global_step == 2 and s.loss_last == s.loss_last  # finite (not NaN)
    from transformers.integrations import is_deepspeed_zero3_enabled

    assert not is_deepspeed_zero3_enabled()  # later models in this process are built whole (the next test's are)


def test_liger_kernels_give_the_same_loss(tiny_model_dir):
    """Liger's RMSNorm, SwiGLU, RoPE and fused linear cross-entropy on vs off, on a padding-free row. Last in
    this file: Liger patches transformers' Qwen3 module globals for the rest of the process."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    from medscale.data.packing import concat_samples

    row = {k: v.cuda() if torch.is_tensor(v) else v
           for k, v in concat_samples([{"input_ids": x, "labels": x} for x in _samples()]).items()}
    losses = []
    for liger in (False, True):
        model = _model(tiny_model_dir, "varlen")
        if liger:
            _apply_liger_kernel_to_instance(model=model)
        loss = model(**row, use_cache=False).loss
        loss.backward()
        assert model.model.layers[0].mlp.down_proj.weight.grad.isfinite().all()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
