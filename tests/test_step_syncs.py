"""Issue 24, lever 5: the two per-step host-device syncs left after the loop's own (tests/test_speed_levers.py counts
them in a run): transformers' packed-row detection in every varlen forward, and adaptive clipping's gradient norm.
Each is gone with results unchanged, bit for bit."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from tests.test_speed import _reference_varlen


def _qwen2_dir(root):
    """A tiny random Qwen2 (the R1-distill architecture) beside the shared tiny Qwen3."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    Qwen2ForCausalLM(config).save_pretrained(root / "tiny-qwen2")
    return root / "tiny-qwen2"


@pytest.mark.parametrize("path", ["fallback", "kernel"])
@pytest.mark.parametrize("arch", ["qwen3", "qwen2"])
def test_boundary_masks_match_transformers_without_its_detection(tiny_model_dir, tmp_path, monkeypatch, arch, path):
    """Defect: under `varlen` transformers looked for packed rows in the position_ids of every forward
    (find_packed_sequence_indices: `.all()` read on the host, a sync), though the collator had the boundaries. The
    decoder now gets its masks from them: the same logits as transformers' own masks, for a row of several samples
    and of one, on the sdpa fallback (CPU) and where the varlen kernel serves (torch's semantics in float32 here)."""
    import transformers.masking_utils as mu
    from transformers import AutoModelForCausalLM

    from medscale.data.packing import concat_samples
    from medscale.model import attention as att
    from medscale.model.load import load_pretrained
    from medscale.recipe import ModelSection

    if path == "kernel":
        monkeypatch.setattr(att, "KERNEL_DEVICES", {"cpu"})
        monkeypatch.setattr(att, "_varlen_kernel", lambda: _reference_varlen(True))
    folder = tiny_model_dir if arch == "qwen3" else _qwen2_dir(tmp_path)
    dtype = "bfloat16" if path == "kernel" else "float32"  # the kernel computes in bf16
    section = ModelSection(path=str(folder), dtype=dtype, attn_implementation="varlen")
    ours = load_pretrained(section, None, recipe_attention=True).eval()  # on the CPU, where a GPU exists too
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), attn_implementation="varlen")
    detections = []
    detect = mu.find_packed_sequence_indices
    monkeypatch.setattr(mu, "find_packed_sequence_indices", lambda pos: detections.append(1) or detect(pos))
    g = torch.Generator().manual_seed(0)
    for lengths in ((37, 5, 20), (30,)):
        batch = concat_samples([{"input_ids": x, "labels": x} for x in
                                (torch.randint(10, 1000, (n,), generator=g).tolist() for n in lengths)])
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            detections.clear()
            mine = ours(**inputs, use_cache=False).logits
            assert not detections, "the decoder's masks came from the collator's boundaries"
            reference = theirs.eval()(**inputs, use_cache=False).logits
            assert detections, "transformers' own masks: its detection ran"
        assert torch.equal(mine, reference), lengths


def _rule(history: deque, static: float, percentile: float, min_history: int) -> float:
    """The clipping threshold as the seed's rule states it (numpy, on the host): the reference."""
    return static if len(history) < min_history else float(np.percentile(np.fromiter(history, float), percentile))


def test_adaptive_threshold_is_numpys_percentile_exactly():
    from medscale.train.callbacks import AdaptiveClipper

    rng = np.random.default_rng(0)
    for percentile in (37.5, 90, 100):
        for window, min_history in ((2, 1), (5, 3)):
            clipper, history = AdaptiveClipper(0.25, percentile, window, min_history), deque(maxlen=window)
            for i in range(12):
                norm = float(rng.lognormal()) if i % 5 != 3 else (float("nan"), float("inf"))[i % 2]
                clipper.observe(torch.tensor(norm, dtype=torch.float32))
                if np.isfinite(norm):
                    history.append(float(np.float32(norm)))
                assert clipper.threshold() == _rule(history, 0.25, percentile, min_history), (percentile, window, i)


def test_adaptive_clipping_on_the_device_clips_as_before():
    """Defect: the threshold was a host float, so every step read the gradient norm (`float(norm)`, a sync). Now
    the clipper scales the gradients on the device: over steps below and above the threshold, the gradients and
    the weights equal those of torch's clip_grad_norm_ at the host rule's threshold."""
    from medscale.train.callbacks import AdaptiveClipper

    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    mine = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    mine.load_state_dict(ref.state_dict())
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (ref, mine)]
    clipper, history, clipped = AdaptiveClipper(0.5, 60, 4, 2), deque(maxlen=4), []
    for step, scale in enumerate((1.0, 1.0, 8.0, 1.0, 0.1, 40.0, 1.0, 2.0)):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step))
        for model, opt in zip((ref, mine), opts):
            opt.zero_grad()
            (model(x).square().mean() * scale).backward()
        threshold = _rule(history, 0.5, 60, 2)
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), threshold)
        history.append(float(norm))
        clipped.append(float(norm) > threshold)
        clipper.clip(mine.parameters(), torch.nn.utils.get_total_norm([p.grad for p in mine.parameters()]))
        assert all(torch.equal(a.grad, b.grad) for a, b in zip(ref.parameters(), mine.parameters())), step
        for opt in opts:
            opt.step()
    assert any(clipped) and not all(clipped), clipped
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), mine.parameters()))
