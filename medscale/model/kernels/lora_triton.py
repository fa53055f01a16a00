"""Triton kernels of the LoRA branch with dropout: the dropout mask is never stored, each kernel draws it again from
(seed, element index) as it loads x or stores dx, so dropout costs no elementwise pass, no copy of x and no mask in
memory. Imported only where Triton and a CUDA tensor are there. x is (M, K) contiguous, A (R, K), dh (M, R)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _keep(seed, offsets, p):
    return tl.rand(seed, offsets) >= p


@triton.jit(do_not_specialize=["seed"])
def _h_kernel(x_ptr, a_ptr, out_ptr, M, K, R, k_per_split, seed, p, inv,
              BM: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr, PRECISION: tl.constexpr):
    """One (BM, R) block of a split of dropout(x) @ A^T over K, in fp32."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rr = tl.arange(0, BR)
    k0 = tl.program_id(1) * k_per_split
    acc = tl.zeros((BM, BR), dtype=tl.float32)
    for k in range(k0, k0 + k_per_split, BK):
        rk = k + tl.arange(0, BK)
        at_x = rm[:, None] * K + rk[None, :]
        xt = tl.load(x_ptr + at_x, mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        xt = tl.where(_keep(seed, at_x, p), xt.to(tl.float32) * inv, 0.0).to(xt.dtype)
        at = tl.load(a_ptr + rr[None, :] * K + rk[:, None], mask=(rr[None, :] < R) & (rk[:, None] < K), other=0.0)
        acc += tl.dot(xt, at, input_precision=PRECISION)
    out = out_ptr + tl.program_id(1) * M * R + rm[:, None] * R + rr[None, :]
    tl.store(out, acc, mask=(rm[:, None] < M) & (rr[None, :] < R))


@triton.jit(do_not_specialize=["seed"])
def _da_kernel(dh_ptr, x_ptr, out_ptr, M, K, R, m_per_split, seed, p, inv,
               BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr, PRECISION: tl.constexpr):
    """One (R, BN) block of a split of dh^T @ dropout(x) over M (the tokens), in fp32."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rr = tl.arange(0, BR)
    m0 = tl.program_id(1) * m_per_split
    acc = tl.zeros((BR, BN), dtype=tl.float32)
    for m in range(m0, m0 + m_per_split, BM):
        rm = m + tl.arange(0, BM)
        dht = tl.load(dh_ptr + rm[None, :] * R + rr[:, None], mask=(rr[:, None] < R) & (rm[None, :] < M), other=0.0)
        at_x = rm[:, None] * K + rn[None, :]
        xt = tl.load(x_ptr + at_x, mask=(rm[:, None] < M) & (rn[None, :] < K), other=0.0)
        xt = tl.where(_keep(seed, at_x, p), xt.to(tl.float32) * inv, 0.0).to(xt.dtype)
        acc += tl.dot(dht, xt, input_precision=PRECISION)
    out = out_ptr + tl.program_id(1) * R * K + rr[:, None] * K + rn[None, :]
    tl.store(out, acc, mask=(rr[:, None] < R) & (rn[None, :] < K))


@triton.jit(do_not_specialize=["seed"])
def _dx_kernel(dh_ptr, a_ptr, out_ptr, M, K, R, seed, p, inv,
               BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr, PRECISION: tl.constexpr):
    """One (BM, BN) block of dropout'(dh @ A): the mask and 1/(1-p) applied as the block is stored."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for r in range(0, R, BR):
        rr = r + tl.arange(0, BR)
        dht = tl.load(dh_ptr + rm[:, None] * R + rr[None, :], mask=(rm[:, None] < M) & (rr[None, :] < R), other=0.0)
        at = tl.load(a_ptr + rr[:, None] * K + rn[None, :], mask=(rr[:, None] < R) & (rn[None, :] < K), other=0.0)
        acc += tl.dot(dht, at, input_precision=PRECISION)
    at_x = rm[:, None] * K + rn[None, :]
    acc = tl.where(_keep(seed, at_x, p), acc * inv, 0.0)
    tl.store(out_ptr + at_x, acc.to(out_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < K))


def _blocks(rank: int) -> int:
    return max(16, triton.next_power_of_2(rank))  # tl.dot wants every side >= 16; the padding is masked


def _precision(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"  # fp32 as cuBLAS does it by default; bf16 is exact either way


def _splits(blocks: int, steps: int, device: torch.device) -> int:
    """How many programs share a reduction: enough to fill the GPU twice where the other side has few blocks (900
    tokens is 15 blocks of rows), each split a whole number of steps."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(steps, 2 * sms // blocks))


def _split_sum(partials: torch.Tensor) -> torch.Tensor:
    return partials[0] if partials.shape[0] == 1 else partials.sum(0)  # a fixed order: deterministic, unlike atomics


def dropout_h(x: torch.Tensor, a: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """dropout(x) @ A^T in x's dtype, accumulated in fp32."""
    (m, k), r = x.shape, a.shape[0]
    bm, bk = 64, 64
    split = _splits(triton.cdiv(m, bm), triton.cdiv(k, bk), x.device)
    per = triton.cdiv(triton.cdiv(k, bk), split) * bk
    split = triton.cdiv(k, per)
    partials = torch.empty((split, m, r), device=x.device, dtype=torch.float32)
    _h_kernel[(triton.cdiv(m, bm), split)](x, a, partials, m, k, r, per, seed, p, 1.0 / (1.0 - p),
                                          BM=bm, BK=bk, BR=_blocks(r), PRECISION=_precision(x))
    return _split_sum(partials).to(x.dtype)


def dropout_grad_a(dh: torch.Tensor, x: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """dh^T @ dropout(x): the gradient of A, in fp32 (the adapters' own dtype in peft)."""
    (m, k), r = x.shape, dh.shape[1]
    bm, bn = 64, 64
    split = _splits(triton.cdiv(k, bn), triton.cdiv(m, bm), x.device)
    per = triton.cdiv(triton.cdiv(m, bm), split) * bm
    split = triton.cdiv(m, per)
    partials = torch.empty((split, r, k), device=x.device, dtype=torch.float32)
    _da_kernel[(triton.cdiv(k, bn), split)](dh, x, partials, m, k, r, per, seed, p, 1.0 / (1.0 - p),
                                           BM=bm, BN=bn, BR=_blocks(r), PRECISION=_precision(x))
    return _split_sum(partials)


def dropout_grad_x(dh: torch.Tensor, a: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """The LoRA branch's gradient of x: (dh @ A) through the dropout mask, in dh's dtype."""
    (m, r), k = dh.shape, a.shape[1]
    bm, bn = 64, 64
    out = torch.empty((m, k), device=dh.device, dtype=dh.dtype)
    _dx_kernel[(triton.cdiv(m, bm), triton.cdiv(k, bn))](dh, a, out, m, k, r, seed, p, 1.0 / (1.0 - p),
                                                         BM=bm, BN=bn, BR=min(_blocks(r), 64),
                                                         PRECISION=_precision(dh))
    return out
