"""bench/dequant.py's pure-PyTorch NF4 dequant (issue 24, lever 4) against bitsandbytes' own on CPU: the same bf16
weight bit for bit, with and without the double quant (its last absmax block partial), so its GPU timings compare
like with like."""
from __future__ import annotations

import pytest
import torch
from conftest import bench_script

F = pytest.importorskip("bitsandbytes.functional")


def _bench():
    return bench_script("dequant")


@pytest.mark.parametrize("nested", [True, False])
def test_nf4_dequantize_equals_bitsandbytes(nested):
    # 96 x 128 = 192 absmax blocks of 64: the double quant's 256-block is partial
    w = (torch.randn(96, 128, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    packed, qs = F.quantize_4bit(w, blocksize=64, compress_statistics=nested, quant_type="nf4")
    ours = _bench().nf4_dequantize(packed, qs)
    assert ours.dtype == torch.bfloat16 and ours.shape == w.shape
    assert torch.equal(ours, F.dequantize_4bit(packed, qs))
