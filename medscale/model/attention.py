"""`attn_implementation: varlen` — attention that never crosses samples, without a dense mask.

Padding-free and packed rows hold several samples end to end. Under sdpa/eager transformers turns
the position_ids restarts into a dense block-diagonal mask (quadratic in the row, and sdpa's
masked kernels are slow); flash-attn would use the boundaries directly but is not always installed.
This registers one more attention with transformers' AttentionInterface that calls torch's own
variable-length flash kernel (`torch.nn.attention.varlen.varlen_attn`, torch >= 2.10) with the
boundaries the collator computed once per batch (`cu_seq_lens_q/k`, `max_length_q/k`; derived from
position_ids when a caller gives only those). Where those boundaries come with the row, the decoder is handed its
masks already made (`use_boundary_masks`): transformers' own packed-row detection reads a device tensor in every
forward, which makes the host wait for the GPU.

Falls back to sdpa with transformers' own mask whenever the varlen kernel cannot serve the call:
on CPU (a block-diagonal mask, as before), for padded batches that carry an attention mask (eval),
with attention dropout, or when torch has no varlen kernel. Written here (not a library) because
transformers 5.17 offers varlen only through the flash-attn package or hub kernels.
"""
from __future__ import annotations

import inspect
from functools import lru_cache

import torch

VARLEN = "varlen"
KERNEL_DEVICES = {"cuda"}  # where torch's varlen kernel runs


@lru_cache(maxsize=1)
def _varlen_kernel():
    """(varlen_attn, its keyword names) or None when this torch has no varlen kernel."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def boundaries_from_positions(position_ids: torch.Tensor, batch: int, length: int) -> tuple[torch.Tensor, int]:
    """cu_seqlens (int32, over the flattened batch x length tokens) and the longest sample, from position_ids
    that restart per sample. Costs one device sync; the collators pass the boundaries instead."""
    pos = position_ids.expand(batch, -1)
    start = torch.ones_like(pos, dtype=torch.bool)
    start[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    idx = start.flatten().nonzero().flatten()
    cu = torch.cat([idx, idx.new_tensor([batch * length])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def _half(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def block_causal_mask(cu_seqlens: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """(batch, 1, length, length) bool mask: causal inside each sample, nothing across samples."""
    seg = torch.zeros(batch * length, dtype=torch.int64, device=cu_seqlens.device)
    seg[cu_seqlens[1:-1].long()] = 1
    seg = seg.cumsum(0).view(batch, length)
    causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()
    return ((seg[:, :, None] == seg[:, None, :]) & causal)[:, None]


def varlen_attention_forward(module, query, key, value, attention_mask, *, dropout: float = 0.0, scaling=None,
                             sliding_window=None, cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None,
                             max_length_k=None, position_ids=None, **kwargs):
    """transformers attention signature: query (B, Hq, T, D), key/value (B, Hkv, T, D) ->
    ((B, T, Hq, D), None)."""
    b, hq, t, d = query.shape
    hkv = key.shape[1]
    kernel = _varlen_kernel()
    params = kernel[1] if kernel else frozenset()
    default_scale = scaling is None or abs(scaling - d ** -0.5) < 1e-12
    if (kernel is None or query.device.type not in KERNEL_DEVICES or attention_mask is not None or dropout or key.shape[2] != t
            or not ("scale" in params or default_scale)
            or not ("window_size" in params or sliding_window is None)):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if attention_mask is None and query.device.type in KERNEL_DEVICES and key.shape[2] == t and (
                cu_seq_lens_q is not None or position_ids is not None):
            # the mask function skipped the mask for the varlen kernel; this call cannot use it
            cu = cu_seq_lens_q if cu_seq_lens_q is not None else boundaries_from_positions(position_ids, b, t)[0]
            attention_mask = block_causal_mask(cu.to(query.device), b, t)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, position_ids=position_ids, **kwargs)
    varlen_attn = kernel[0]
    if cu_seq_lens_q is None:
        if position_ids is None:
            cu_seq_lens_q = torch.arange(0, (b + 1) * t, t, device=query.device, dtype=torch.int32)
            max_length_q = t
        else:
            cu_seq_lens_q, max_length_q = boundaries_from_positions(position_ids, b, t)
        cu_seq_lens_k, max_length_k = cu_seq_lens_q, max_length_q
    # Under autocast q/k may be fp32 (QLoRA keeps norms in fp32); the flash kernel takes one half dtype.
    dev = query.device.type
    dtype = (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
             else value.dtype if value.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16)
    q = _half(query, dtype).transpose(1, 2).reshape(b * t, hq, d)
    k = _half(key, dtype).transpose(1, 2).reshape(b * t, hkv, d)
    v = _half(value, dtype).transpose(1, 2).reshape(b * t, hkv, d)
    kw: dict = {"scale": scaling} if "scale" in params else {}
    if hkv != hq:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:  # older varlen_attn has no GQA switch: give every query head its key/value head
            k, v = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)
    if "window_size" in params:  # torch >= 2.11: causal is a window of (-1, 0)
        kw["window_size"] = (-1, 0) if sliding_window is None else (sliding_window - 1, 0)
    else:
        kw["is_causal"] = True
    cu_k = cu_seq_lens_k if cu_seq_lens_k is not None else cu_seq_lens_q
    out = varlen_attn(q, k, v, cu_seq_lens_q.to(query.device, torch.int32), cu_k.to(query.device, torch.int32),
                      int(max_length_q), int(max_length_k if max_length_k is not None else max_length_q), **kw)
    return out.view(b, t, hq, d), None


def _kernel_serves(device) -> bool:
    return device is not None and torch.device(device).type in KERNEL_DEVICES and _varlen_kernel() is not None


def varlen_mask(*, attention_mask=None, device=None, **kwargs):
    """No mask where the varlen kernel runs (rows without an attention mask, on CUDA); elsewhere sdpa's
    mask (block-diagonal for packed rows, padding masks for padded batches), for the sdpa fallback."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and _kernel_serves(device):
        return None
    return sdpa_mask(attention_mask=attention_mask, device=device, **kwargs)


# Decoders that take their masks already made, as {layer type: mask} in place of attention_mask (transformers
# >= 4.53, 5.17 and 5.25 alike); any other keeps transformers' detection.
PREPARED_MASKS = {"qwen2", "qwen3"}


def _boundary_masks(decoder, args, kwargs):
    """Forward pre-hook: a row that brings its boundaries (cu_seq_lens_q, from the collator) and no attention mask
    or cache gets its masks from them, the ones transformers would make, without its packed-row detection (a
    host-device sync every forward): none where the varlen kernel runs or the row is one sample (causal), the
    block-diagonal causal mask for the sdpa fallback. Sliding-window layers on the fallback keep transformers'."""
    cu, row = kwargs.get("cu_seq_lens_q"), kwargs.get("input_ids")
    row = kwargs.get("inputs_embeds") if row is None else row
    if (cu is None or row is None or args or kwargs.get("attention_mask") is not None
            or kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None):
        return None
    types = set(decoder.config.layer_types)
    b, t = row.shape[:2]
    if _kernel_serves(row.device) or cu.shape[0] == b + 1:  # the kernel, or one sample a row (the shape: no sync)
        mask = None
    elif types == {"full_attention"}:
        mask = block_causal_mask(cu.to(row.device), b, t)
    else:
        return None
    return args, {**kwargs, "attention_mask": dict.fromkeys(types, mask)}


def use_boundary_masks(model) -> None:
    """Hand a varlen `model`'s decoder its masks from the collator's boundaries (`_boundary_masks`), where it takes
    them."""
    if model.config._attn_implementation == VARLEN and model.config.model_type in PREPARED_MASKS:
        model.get_decoder().register_forward_pre_hook(_boundary_masks, with_kwargs=True)


def register_attention() -> None:
    """Make `attn_implementation="varlen"` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, varlen_mask)
