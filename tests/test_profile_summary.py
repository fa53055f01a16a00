"""bench/profile_summary.py (issue 24's profile summaries) on a hand-written kineto trace: kernels overlapping on two
streams count once toward the GPU's busy time, launches and syncs are counted per step, kernels rank by time."""
from __future__ import annotations

from conftest import bench_script


def _bench():
    return bench_script("profile_summary")


def _x(cat, name, ts, dur):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def test_busy_launches_syncs_and_top_kernels_per_step():
    trace = {"traceEvents": [
        _x("cpu_op", "aten::mm", 0, 1000),  # the window: 0..1000 us, 2 steps
        _x("cuda_runtime", "cudaLaunchKernel", 10, 5), _x("cuda_runtime", "cudaLaunchKernel", 20, 5),
        _x("cuda_runtime", "cudaLaunchKernel", 30, 10), _x("cuda_runtime", "cudaStreamSynchronize", 600, 300),
        _x("kernel", "sm90_xmma_gemm_bf16", 100, 200),  # 100..300
        _x("kernel", "void kDequantizeBlockwise<__nv_bfloat16, 512, 64, 8, 2>", 250, 100),  # 250..350, overlaps
        _x("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", 500, 100),  # 500..600
        {"ph": "i", "cat": "kernel", "name": "instant events carry no time", "ts": 5}]}
    s = _bench().summarize(trace, steps=2)
    assert s["wall_ms_per_step"] == 0.5
    assert s["gpu_busy_pct"] == 35.0 and s["gpu_idle_pct"] == 65.0  # 350 us of 1000, not 400
    assert s["launches_per_step"] == 1.5 and s["syncs_per_step"] == 0.5
    assert s["launch_api_ms_per_step"] == 0.01
    dequant = "void kDequantizeBlockwise<__nv_bfloat16, 512, 64, 8, 2>"
    assert [t[0] for t in s["top"]] == ["sm90_xmma_gemm_bf16", dequant, "Memcpy DtoH (Device -> Pinned)"]
    assert s["kinds_pct_of_busy"] == {"gemm": 50.0, "4-bit dequant": 25.0, "copy / cast": 25.0}
