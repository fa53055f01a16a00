"""bench/speed.py's R1 suite on CPU (issue 24): --dry-run writes the token lengths medscale's own pipeline makes of
seed 004's medical-o1 records and prints the seed stack's and medscale's commands on those same lengths."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, SHARED, needs_realdata

pytestmark = pytest.mark.slow


def test_r1_suite_dry_run_gives_both_stacks_the_same_lengths(tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    for name, src in (("qwen3_tokenizer", needs_realdata("qwen3_tokenizer")),
                      ("medical_o1_zh_916.jsonl", needs_realdata("medical_o1", "medical_o1_zh_916.jsonl")),
                      ("model_configs.json", needs_realdata("model_configs.json")),
                      ("hf_baseline.py", SHARED / "gpu" / "hf_baseline.py")):
        (assets / name).symlink_to(src)
    out = subprocess.run([sys.executable, str(REPO / "bench" / "speed.py"), "--assets", str(assets), "--dry-run",
                          "--runs", "r1-7b:baseline,r1-7b:2,r1-7b:3"], capture_output=True, text=True,
                         env={**os.environ, "OUT": str(tmp_path / "out")}, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    lengths = tmp_path / "lengths_r1-7b.txt"
    assert len(lengths.read_text().split()) == 916  # every record kept: none is near max_length 8192
    baseline, merged, kept = out.stdout.strip().splitlines()
    assert "hf_baseline.py --shape r1-7b --qlora --lora_r 16 --lora_alpha 16 --lora_dropout 0 --bs 2 --accum 32" \
           f" --optim adamw_8bit --cap_gb 16 --steps 5 --warm 1 --lengths {lengths} --max_len 8192" in baseline
    assert "child" in merged and "r1-distill-7b-lora-fast" in merged and "--cap-gb 0" in merged
    assert kept.endswith("train.merge_accumulation=off") and not (tmp_path / "out" / "speed_r1-7b.json").exists()
