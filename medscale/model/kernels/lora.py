"""The LoRA branch of an adapted linear as one autograd Function: dropout, x @ A^T, @ B^T, the scale and the add to
the base output. peft runs it as five ops, each a kernel forward and backward, and keeps a dropped copy of x and its
mask per projection; here the matmuls are cuBLAS's with the scale and the add in their epilogue, and the dropout
lives inside Triton kernels that draw the mask again from a seed (`lora_triton`), so it costs no elementwise pass.
Without Triton or CUDA the same math runs in PyTorch, the mask drawn as peft draws it (so a seeded step is equal).
The base matmul stays peft's and bitsandbytes': only the branch is fused, hooked in as a peft LoRA variant."""
from __future__ import annotations

import importlib.util
import logging

import torch
from peft.tuners.lora.layer import LoraLayer, LoraVariant

log = logging.getLogger(__name__)

HAS_TRITON = importlib.util.find_spec("triton") is not None
FUSED_LAYERS = ("Linear", "Linear4bit")  # peft's LoRA linears whose forward hands a variant x and the base result


def draw_seed() -> int:
    """The dropout seed of one call, from the CPU generator: no device sync, and activation checkpointing, which
    restores that generator before it recomputes, draws the same mask again."""
    return int(torch.randint(2**31 - 1, ()))


def uses_triton(x: torch.Tensor, p: float) -> bool:
    """Triton only carries dropout; without it the branch is three cuBLAS calls, which Triton would not beat."""
    return p > 0 and x.is_cuda and HAS_TRITON and x.numel() < 2**31  # the mask's element index is 32-bit


class _LoraBranch(torch.autograd.Function):
    """result + dropout(x) @ A^T @ B^T * scale on 2-D tensors of one dtype; gradients for x, result, A and B."""

    @staticmethod
    def forward(ctx, x, result, a, b, scale: float, p: float):
        ctx.scale, ctx.p, ctx.seed, mask = scale, p, None, None
        if uses_triton(x, p):
            from medscale.model.kernels.lora_triton import dropout_h

            x = x.contiguous()
            ctx.seed = draw_seed()
            h = dropout_h(x, a.contiguous(), ctx.seed, p)
        else:
            if p > 0:
                x, mask = torch.native_dropout(x, p, True)  # F.dropout's own kernel: the mask peft would draw
            h = x @ a.t()
        ctx.save_for_backward(x, a, b, h, mask)  # x: the dropped x where PyTorch dropped it
        return torch.addmm(result, h, b.t(), alpha=scale)

    @staticmethod
    def backward(ctx, grad):
        x, a, b, h, mask = ctx.saved_tensors
        need_x, _, need_a, need_b = ctx.needs_input_grad[:4]
        # the scale in the GEMM's epilogue, not a kernel of its own; beta=0: the first argument only gives the shape
        dh = torch.addmm(h, grad, b, beta=0, alpha=ctx.scale)
        db = torch.addmm(b, grad.t(), h, beta=0, alpha=ctx.scale) if need_b else None
        dx = da = None
        if ctx.seed is not None:
            from medscale.model.kernels.lora_triton import dropout_grad_a, dropout_grad_x

            da = dropout_grad_a(dh, x, ctx.seed, ctx.p).to(a.dtype) if need_a else None
            dx = dropout_grad_x(dh, a.contiguous(), ctx.seed, ctx.p) if need_x else None
        else:
            da = dh.t() @ x if need_a else None
            dx = dh @ a if need_x else None
            if dx is not None and mask is not None:
                dx = torch.ops.aten.native_dropout_backward(dx, mask, 1.0 / (1.0 - ctx.p))
        return dx, grad, da, db, None, None


def lora_add(x: torch.Tensor, result: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, scale: float,
             p: float) -> torch.Tensor:
    """`result + B(A(dropout(x))) * scale` for x of any leading shape, computed in autocast's dtype where it is on
    (as peft's matmuls are) and in x's otherwise; the casts of the small A and B are ordinary autograd ops."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    out = _LoraBranch.apply(x.to(dtype).reshape(-1, x.shape[-1]), result.to(dtype).reshape(-1, result.shape[-1]),
                           a.to(dtype), b.to(dtype), scale, p)
    return out.view(*result.shape[:-1], out.shape[-1])


class FusedLora(LoraVariant):
    """peft's LoRA variant hook carrying the fused branch: peft keeps its forward's control flow (disabled, merged,
    mixed batches, casts) and calls this for the branch. Merging is plain LoRA's."""

    @staticmethod
    def forward(module, active_adapter, x, result, **kwargs):
        dropout = module.lora_dropout[active_adapter]
        p = dropout.p if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
        return lora_add(x, result, module.lora_A[active_adapter].weight, module.lora_B[active_adapter].weight,
                        scale=module.scaling[active_adapter], p=p)

    @staticmethod
    def merge_safe(module, active_adapter, orig_weight):
        return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module, active_adapter, orig_weight):
        orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module, active_adapter, orig_weight):
        return orig_weight - module.get_delta_weight(active_adapter).to(orig_weight.dtype)


def fuse_lora(model: torch.nn.Module) -> tuple[int, int]:
    """Hook the fused branch into every plain LoRA linear of `model` (not DoRA or another variant, no LoRA bias, no
    GPT-2 style transposed weight); (fused, adapted) counts, also logged."""
    fused = adapted = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name in module.lora_A:
            adapted += 1
            if (type(module).__name__ in FUSED_LAYERS and name not in module.lora_variant
                    and module.lora_B[name].bias is None and not getattr(module, "fan_in_fan_out", False)):
                module.lora_variant[name] = FusedLora()
                fused += 1
    log.info("fused LoRA: %d of %d adapted layers (%s)", fused, adapted,
             "Triton dropout kernels on CUDA" if HAS_TRITON else "PyTorch: no Triton here")
    return fused, adapted
