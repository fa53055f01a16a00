"""The base model: its folder, dtype, 4-bit quantization, attention, and the tiny random model for demos."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from medscale.recipe.base import Section


class TinySpec(Section):
    """Shape of the tiny random Qwen3 built when `model.path` does not exist (demo, tests)."""

    layers: int = Field(2, ge=1, description="decoder layers")
    hidden: int = Field(64, ge=16, description="hidden size")
    tokenizer: str | None = Field(None, description="copy this tokenizer folder; default: train a small BPE on the demo data")


class ModelSection(Section):
    path: str = Field(description="local folder with config.json, weights and tokenizer")
    hub_id: str | None = Field(None, description="the hub name of the weights, used only to say what to download into `path`")
    dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="compute/storage dtype of the base weights")
    load_in_4bit: bool = Field(False, description="QLoRA: quantize the base weights to 4 bit with bitsandbytes (CUDA only)")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type: nf4 (normal float, QLoRA's choice for normally distributed weights) or fp4")
    bnb_4bit_use_double_quant: bool = Field(True, description="quantize the quantization constants too (~0.4 bit/param saved)")
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype 4-bit weights are dequantized to for each matmul; float16 on GPUs without bf16")
    bnb_4bit_quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = Field(
        "uint8", description="dtype the packed 4-bit weights are stored in; ZeRO-3 (and FSDP) shard them only "
                             "when it equals bnb_4bit_compute_dtype")
    fp32_frozen_weights: bool = Field(
        False, description="QLoRA only: upcast the frozen embeddings, norms and lm_head to fp32 as peft's "
                           "prepare_model_for_kbit_training does (the seed scripts' numerics). The residual stream "
                           "then runs in fp32: more memory, and about 40% of a step goes to casts")
    attn_implementation: str = Field(
        "sdpa", description="varlen (torch's variable-length flash kernel on GPU: padding-free and packed rows "
                            "without a dense mask; sdpa elsewhere) | sdpa | eager | flash_attention_2 | "
                            "flex_attention | kernels-community/...")
    trust_remote_code: bool = Field(False, description="run Python shipped with the weights; off unless you trust the folder")
    tiny: TinySpec | None = Field(None, description="build a tiny random Qwen3 at `path` if it is missing: by itself "
                                                    "only under $MEDSCALE_HOME/models, elsewhere with `medscale "
                                                    "tiny-model PATH`; never over a folder of yours")
