"""The LoRA adapter that is trained (HF LoraConfig names)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from medscale.recipe.base import Section


class AdapterSection(Section):
    type: Literal["lora"] = Field("lora", description="adapter kind (LoRA, with DoRA/rsLoRA as options below)")
    r: int = Field(16, ge=1, description="LoRA rank: higher learns more, costs memory and overfits small data sooner")
    lora_alpha: int = Field(32, ge=1, description="LoRA scale numerator: the update is scaled by lora_alpha / r")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input; 0 for tiny data or "
                                                                  "very short runs")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="layers that get LoRA: attention + FFN (the seeds), fewer for less memory, or all-linear")
    modules_to_save: list[str] | None = Field(None, description="fully trained and saved modules, e.g. [embed_tokens, lm_head]")
    use_dora: bool = Field(False, description="DoRA: learn magnitude and direction apart; often a bit better, slower")
    use_rslora: bool = Field(False, description="scale by alpha/sqrt(r) instead of alpha/r")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="which biases are trained and saved")
    fused: Literal["auto", "off"] = Field(
        "off", description="auto: each plain LoRA linear's branch (dropout, A and B matmuls, scale, add) runs as one "
                           "fused op, Triton kernels on CUDA, the same math in PyTorch elsewhere (not DoRA, not under "
                           "ZeRO-3); off: peft's own ops. Off until a GPU measurement shows it pays: "
                           "bench/lora_kernel.py")
