"""Base model from a local folder or a hub id's local copy (model.resolve), in bf16 or NF4 (QLoRA), wrapped with a
peft LoRA adapter. Its tokenizer loads in model.tokenizer (the data needs it before the model), the adapter's targets
are checked in model.modules (pre-flight)."""
from __future__ import annotations

from pathlib import Path

import torch

from medscale.dist import DistContext
from medscale.errors import quiet_libraries
from medscale.model.resolve import model_folder
from medscale.recipe import AdapterSection, ModelSection, Recipe

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def local_device_index() -> int:
    return DistContext.from_env().local_rank


def quantization_config(model: ModelSection):
    """The recipe's bitsandbytes 4-bit config (None without `load_in_4bit`), built here only: inference loads a
    QLoRA job's base as training quantized it, compute dtype and storage included."""
    if not model.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=model.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=DTYPES[model.bnb_4bit_compute_dtype],
        bnb_4bit_quant_storage={**DTYPES, "uint8": torch.uint8}[model.bnb_4bit_quant_storage])


def load_pretrained(model: ModelSection, device_index: int | None, recipe_attention: bool, *,
                    folder: Path | None = None):
    """The one `from_pretrained` of a base model, for training and inference: the section's dtype, 4-bit config and
    trust_remote_code, the whole model on GPU `device_index` (None: transformers places it). `recipe_attention`:
    the section's attn_implementation (training's kernels, `varlen` for packed rows); without it transformers
    picks, and continuous batching swaps in its paged kernel. `folder`: where a run's plan found the model (None:
    looked up here, model.resolve)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict = dict(dtype=DTYPES[model.dtype], trust_remote_code=model.trust_remote_code,
                        quantization_config=quantization_config(model))
    if recipe_attention:
        from medscale.model.attention import register_attention, use_boundary_masks

        register_attention()  # model.attn_implementation=varlen
        kwargs["attn_implementation"] = model.attn_implementation
    if device_index is not None:
        kwargs["device_map"] = {"": device_index}
    loaded = AutoModelForCausalLM.from_pretrained(folder or model_folder(model), **kwargs)
    if recipe_attention:
        use_boundary_masks(loaded)  # varlen: the collator's boundaries, not transformers' per-forward detection
    return loaded


def load_base_model(model: ModelSection, *, folder: Path | None = None):
    from transformers.integrations import is_deepspeed_zero3_enabled

    # One process per GPU: the whole model on this rank's device (no DataParallel, no sharding). ZeRO-3 (on once
    # TrainingArguments with a stage-3 DeepSpeed config exist) places and shards the weights itself and refuses
    # a device_map.
    on_gpu = torch.cuda.is_available() and not is_deepspeed_zero3_enabled()
    return load_pretrained(model, local_device_index() if on_gpu else None, recipe_attention=True,
                           folder=folder)


def lora_config(adapter: AdapterSection):
    from peft import LoraConfig

    return LoraConfig(r=adapter.r, lora_alpha=adapter.lora_alpha, lora_dropout=adapter.lora_dropout,
                      target_modules=adapter.target_modules, modules_to_save=adapter.modules_to_save,
                      use_dora=adapter.use_dora, use_rslora=adapter.use_rslora, bias=adapter.bias,
                      task_type="CAUSAL_LM")


def load_model(recipe: Recipe, *, folder: Path | None = None):
    """The trainable model: base (bf16 or NF4) + LoRA, from `folder` (where the run's plan found it; None: looked
    up here). Gradient checkpointing is enabled by the Trainer."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers.integrations import is_deepspeed_zero3_enabled

    base = load_base_model(recipe.model, folder=folder)
    base.config.use_cache = False  # the KV cache is useless in training and breaks checkpointing
    if recipe.model.load_in_4bit and recipe.model.fp32_frozen_weights:
        # peft's k-bit preparation (the seed scripts'): frozen embeddings, norms and lm_head in fp32, so the
        # residual stream runs in fp32. Without it get_peft_model freezes the base and the Trainer's
        # non-reentrant checkpointing needs no input-grad hook. Recompute is the Trainer's to switch on (with
        # gradient_checkpointing=auto, on some layers only), never peft's.
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    # Under ZeRO-3 every trainable tensor must share one dtype (DeepSpeed asserts it when it flattens them):
    # keep LoRA in the base dtype instead of peft's fp32 upcast, beside modules_to_save copies in that dtype.
    with quiet_libraries():  # also where no CLI boundary is around it (Ray workers, tests calling run())
        model = get_peft_model(base, lora_config(recipe.adapter),
                               autocast_adapter_dtype=not is_deepspeed_zero3_enabled())
    keep_lora_inputs_under_autocast(model)
    # ZeRO-3 gathers a LoRA weight only when its own module runs, which the fused branch skips
    if recipe.adapter.fused == "auto" and not is_deepspeed_zero3_enabled():
        from medscale.model.kernels.lora import fuse_lora

        fuse_lora(model)
    return model


def keep_lora_inputs_under_autocast(model) -> None:
    """peft casts every LoRA layer's input to the adapter's dtype (fp32 adapters on a bf16 model), and autocast
    casts it back to bf16 for the matmul: two copies of each projection's input per layer, with dropout run in
    fp32 between them. Under autocast the matmul is bf16 either way, so the cast is skipped there; without
    autocast (generation, fp32 runs) peft casts as before."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    def cast_only_without_autocast(layer, args):
        x = args[0] if args else None
        device = x.device.type if torch.is_tensor(x) else "cuda"
        layer.cast_input_dtype_enabled = not torch.is_autocast_enabled(device)

    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            m.register_forward_pre_hook(cast_only_without_autocast)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) logical parameters: 4-bit packed weights unpacked, ZeRO-3 shards at full size."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", p.numel())  # ZeRO-3 leaves an empty shard in p; ds_numel is the full size
        if type(p).__name__ == "Params4bit":
            n *= p.element_size() * 2  # bnb packs two 4-bit values per byte of the storage dtype
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
