"""The fused LoRA branch (medscale/model/kernels, issue 24 lever 3) against peft's own: the PyTorch path on CPU equal
to peft in fp32, dropout and all, from one layer to a train step of the tiny Qwen3; the Triton kernels against their
definition (on CUDA, or on CPU under TRITON_INTERPRET=1) and against peft in bf16 on CUDA."""
from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch

from medscale.model.kernels.lora import fuse_lora
from medscale.recipe import load_recipe

TRITON_DEVICE = ("cuda" if torch.cuda.is_available() else "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else None)
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None or TRITON_DEVICE is None,
                                  reason="needs Triton and CUDA (or TRITON_INTERPRET=1)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _peft_layer(base: torch.nn.Module, p: float, r: int = 8):
    """`base` wrapped by peft as a LoRA linear, B random (peft starts it at zero, which would hide A's gradient)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(torch.nn.Sequential(base), LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=p,
                                                                 target_modules=["0"], init_lora_weights=False))
    return model, model.base_model.model[0]


def _fused_in_graph(t: torch.Tensor) -> bool:
    todo, seen = [t.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "_LoraBranchBackward":
            return True
        todo += [n for n, _ in node.next_functions]
    return False


def _step(model, x: torch.Tensor, seed: int):
    """Output and the gradients of x and the LoRA weights of one seeded forward and backward."""
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)
    out = model(x)
    (out.float() * torch.linspace(-1, 1, out.shape[-1], device=out.device)).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return out, x.grad, grads


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_the_pytorch_path_equals_peft_for_one_layer_output_and_gradients(p):
    model, layer = _peft_layer(torch.nn.Linear(48, 40), p)
    fused_model = copy.deepcopy(model)
    assert fuse_lora(fused_model) == (1, 1)
    x = torch.randn(3, 7, 48)
    out, dx, grads = _step(model, x, seed=11)
    f_out, f_dx, f_grads = _step(fused_model, x, seed=11)
    assert _fused_in_graph(f_out) and not _fused_in_graph(out)
    torch.testing.assert_close(f_out, out)
    torch.testing.assert_close(f_dx, dx)
    assert grads.keys() == f_grads.keys() and len(grads) == 2  # lora_A and lora_B; the base stays frozen
    for name in grads:
        torch.testing.assert_close(f_grads[name], grads[name])
    if p:  # the same mask as peft's, and a different one for another seed
        assert not torch.equal(_step(fused_model, x, seed=12)[0], f_out)


@pytest.mark.parametrize("safe", [True, False])
def test_a_fused_layer_merges_and_unmerges_as_plain_lora(safe):
    """peft hands merging to the variant too: a fused layer merged gives its own output, unmerged its base back."""
    model, layer = _peft_layer(torch.nn.Linear(32, 24), 0.0)
    fuse_lora(model)
    x, base = torch.randn(5, 32), layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        want = model(x)
        layer.merge(safe_merge=safe)
        assert layer.merged and not torch.allclose(layer.base_layer.weight, base)
        torch.testing.assert_close(model(x), want)
        layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, base)


def test_dora_and_lora_bias_layers_keep_peft_s_path():
    from peft import LoraConfig, get_peft_model

    base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16))
    dora = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["0", "1"], use_dora=True))
    assert fuse_lora(dora) == (0, 2)
    biased = get_peft_model(base, LoraConfig(r=4, target_modules=["0"], lora_bias=True))
    assert fuse_lora(biased) == (0, 1)


def test_one_train_step_of_the_tiny_qwen3_is_the_same_fused_or_not(tiny_model_dir):
    """Every adapted linear of the model, dropout on: same loss and gradients with adapter.fused auto and off."""
    from medscale.model.load import load_model

    results = {}
    for fused in ("off", "auto"):
        recipe = load_recipe("tiny-demo", [f"model.path={tiny_model_dir}", "adapter.lora_dropout=0.1",
                                           f"adapter.fused={fused}", "adapter.modules_to_save=null"])
        torch.manual_seed(0)
        model = load_model(recipe).train()
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
        ids = torch.randint(5, 200, (2, 24), generator=torch.Generator().manual_seed(1))
        torch.manual_seed(3)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results[fused] = loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        if fused == "auto":  # recompute draws the same masks again: the CPU generator is restored before it
            model.zero_grad(set_to_none=True)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            torch.manual_seed(3)
            model(input_ids=ids, labels=ids).loss.backward()
            for name, param in model.named_parameters():
                if param.requires_grad:
                    torch.testing.assert_close(param.grad, results["auto"][1][name], msg=name)
        layers = [m for m in model.modules() if hasattr(m, "lora_variant")]
        assert len(layers) == 14  # 7 projections x 2 layers
        assert sum(bool(m.lora_variant) for m in layers) == (14 if fused == "auto" else 0)
    (loss_off, grads_off), (loss_on, grads_on) = results["off"], results["auto"]
    torch.testing.assert_close(loss_on, loss_off)
    assert grads_on.keys() == grads_off.keys() and len(grads_on) == 28
    for name, grad in grads_off.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads_on[name], grad, rtol=1e-4, atol=1e-6)


def _keep_mask(seed: int, p: float, m: int, k: int, device: str) -> torch.Tensor:
    """The kernels' mask times 1/(1-p), read through the dx kernel: ones through A = ones."""
    from medscale.model.kernels.lora_triton import dropout_grad_x

    return dropout_grad_x(torch.full((m, 2), 0.5, device=device), torch.ones(2, k, device=device), seed, p)


@needs_triton
@pytest.mark.parametrize("m,k,r", [(100, 96, 8), (300, 160, 64)])
def test_the_triton_kernels_are_their_definition_on_one_mask(m, k, r):
    from medscale.model.kernels.lora_triton import dropout_grad_a, dropout_grad_x, dropout_h

    p, seed = 0.25, 1234
    g = torch.Generator().manual_seed(0)
    x, a, dh = (torch.randn(*s, generator=g).to(TRITON_DEVICE) for s in ((m, k), (r, k), (m, r)))
    mask = _keep_mask(seed, p, m, k, TRITON_DEVICE)
    assert mask.unique().tolist() == pytest.approx([0.0, 1 / (1 - p)])
    assert abs((mask == 0).float().mean().item() - p) < 0.03
    assert not torch.equal(_keep_mask(seed + 1, p, m, k, TRITON_DEVICE), mask)
    tol = dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dropout_h(x, a, seed, p), (x * mask) @ a.t(), **tol)
    torch.testing.assert_close(dropout_grad_a(dh, x, seed, p), dh.t() @ (x * mask), **tol)
    torch.testing.assert_close(dropout_grad_x(dh, a, seed, p), (dh @ a) * mask, **tol)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("base_kind", ["bf16", "nf4"])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_the_triton_path_matches_peft_in_bf16_on_cuda(base_kind, p):
    """Training's dtypes: a bf16 (or 4-bit) base, fp32 adapters, bf16 autocast. peft gets the kernels' own mask,
    so both compute the same function; they may differ by bf16 rounding only."""
    from medscale.model.kernels.lora import draw_seed

    k, n, tokens = 1024, 768, 1000

    def layer():
        torch.manual_seed(1)
        if base_kind == "nf4":
            import bitsandbytes as bnb

            base = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4").cuda()
        else:
            base = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
        return _peft_layer(base, p, r=16)

    (model, peft_linear), (fused_model, _) = layer(), layer()
    model.cuda(), fused_model.cuda()
    assert fuse_lora(fused_model) == (1, 1)
    x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
    torch.manual_seed(5)
    mask = _keep_mask(draw_seed(), p, tokens, k, "cuda") if p else torch.ones(tokens, k, device="cuda")
    peft_linear.lora_dropout["default"] = _Times(mask.to(torch.bfloat16))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, dx, grads = _step(model, x, seed=5)
        f_out, f_dx, f_grads = _step(fused_model, x, seed=5)
    assert _fused_in_graph(f_out)
    tol = dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(f_out.float(), out.float(), **tol)
    torch.testing.assert_close(f_dx.float(), dx.float(), **tol)
    for name in grads:
        scale = grads[name].abs().max()
        torch.testing.assert_close(f_grads[name] / scale, grads[name] / scale, **tol)


class _Times(torch.nn.Module):
    """peft's dropout replaced by a fixed mask (already times 1/(1-p))."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask.to(x.dtype)


def test_the_bench_dry_run_times_each_projection_and_the_layer(monkeypatch, capsys):
    from conftest import bench_script

    bench = bench_script("lora_kernel")
    monkeypatch.setattr("sys.argv", ["lora_kernel.py", "--dry-run", "--dropouts", "0.1"])
    bench.main()
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert [r.split()[1] for r in rows] == ["q", "down", "layer"]
    assert all(float(r.split()[-3].rstrip("x")) > 0 for r in rows)  # a speed-up was computed for each
