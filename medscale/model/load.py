"""Base model + tokenizer from a local folder, in bf16 or NF4 (QLoRA), wrapped with a peft LoRA adapter."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from medscale.recipe import AdapterSection, ModelSection, Recipe, RecipeError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def load_tokenizer(model: ModelSection, planned: bool = False):
    """The model folder's tokenizer, ready to render records. `planned`: for a tiny model not built yet, the one its
    build will use (nothing is written; `medscale check`)."""
    from transformers import AutoTokenizer

    if planned and model.tiny is not None and not (Path(model.path) / "config.json").is_file():
        from medscale.model.tiny import tiny_tokenizer

        tok = tiny_tokenizer(model.tiny.tokenizer)
    else:
        tok = AutoTokenizer.from_pretrained(model.path, trust_remote_code=model.trust_remote_code)
    if tok.pad_token is None:  # R1-Distill and some others ship without one; padding is masked anyway
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise RecipeError(f"model.path: the tokenizer in {model.path} has no chat_template; "
                          f"medscale renders every record with the model's own template")
    return tok


def local_device_index() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def load_base_model(model: ModelSection):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.integrations import is_deepspeed_zero3_enabled

    from medscale.model.attention import register_attention

    register_attention()  # model.attn_implementation=varlen
    kwargs: dict = dict(dtype=DTYPES[model.dtype], attn_implementation=model.attn_implementation,
                        trust_remote_code=model.trust_remote_code)
    # ZeRO-3 (on once TrainingArguments with a stage-3 DeepSpeed config exist) places and shards the weights
    # itself and refuses a device_map.
    if torch.cuda.is_available() and not is_deepspeed_zero3_enabled():
        # One process per GPU: place the whole model on this rank's device (no DataParallel, no sharding).
        kwargs["device_map"] = {"": local_device_index()}
    if model.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=model.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=model.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=DTYPES[model.bnb_4bit_compute_dtype],
            bnb_4bit_quant_storage={**DTYPES, "uint8": torch.uint8}[model.bnb_4bit_quant_storage])
    return AutoModelForCausalLM.from_pretrained(model.path, **kwargs)


def lora_config(adapter: AdapterSection):
    from peft import LoraConfig

    return LoraConfig(r=adapter.r, lora_alpha=adapter.lora_alpha, lora_dropout=adapter.lora_dropout,
                      target_modules=adapter.target_modules, modules_to_save=adapter.modules_to_save,
                      use_dora=adapter.use_dora, use_rslora=adapter.use_rslora, bias=adapter.bias,
                      task_type="CAUSAL_LM")


def load_model(recipe: Recipe):
    """The trainable model: base (bf16 or NF4) + LoRA. Gradient checkpointing is enabled by the Trainer."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers.integrations import is_deepspeed_zero3_enabled

    base = load_base_model(recipe.model)
    base.config.use_cache = False  # the KV cache is useless in training and breaks checkpointing
    if recipe.model.load_in_4bit and recipe.model.fp32_frozen_weights:
        # peft's k-bit preparation (the seed scripts'): frozen embeddings, norms and lm_head in fp32, so the
        # residual stream runs in fp32. Without it get_peft_model freezes the base and the Trainer's
        # non-reentrant checkpointing needs no input-grad hook. Recompute is the Trainer's to switch on (with
        # gradient_checkpointing=auto, on some layers only), never peft's.
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    # Under ZeRO-3 every trainable tensor must share one dtype (DeepSpeed asserts it when it flattens them):
    # keep LoRA in the base dtype instead of peft's fp32 upcast, beside modules_to_save copies in that dtype.
    with warnings.catch_warnings():  # peft 0.21 reads transformers' deprecated alias: not ours to fix, only noise
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        model = get_peft_model(base, lora_config(recipe.adapter),
                               autocast_adapter_dtype=not is_deepspeed_zero3_enabled())
    keep_lora_inputs_under_autocast(model)
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
