"""A model for inference (eval, compare, chat): a base folder, optionally with a LoRA adapter folder on top.

Checks the folders before any heavy import, so a wrong path is one clear line. 4-bit when the adapter was trained
as QLoRA (its recipe's model.load_in_4bit) and CUDA is present; bf16 on GPU, fp32 on CPU.
`trust_remote_code` stays off unless the caller (the recipe) turns it on.
"""
from __future__ import annotations

from pathlib import Path

from medscale.dist import DistContext
from medscale.errors import UserError
from medscale.recipe import ModelSection

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")


class ModelFolderError(UserError):
    """A model or adapter folder that cannot be loaded, named with what is missing."""


def check_base_folder(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelFolderError(f"model folder {path} does not exist: pass a Hugging Face model folder (config.json, "
                               f"*.safetensors, tokenizer files)")
    missing = [what for what, ok in (("config.json", (path / "config.json").is_file()),
                                     ("weights (*.safetensors or pytorch_model*.bin)",
                                      any(any(path.glob(p)) for p in WEIGHT_PATTERNS))) if not ok]
    if missing:
        hint = (" (it is a LoRA adapter folder: pass it as the adapter, with its base model)"
                if (path / "adapter_config.json").is_file() else "")
        raise ModelFolderError(f"model folder {path} has no {' and no '.join(missing)}{hint}: pass a folder saved "
                               f"with save_pretrained (config.json, *.safetensors, tokenizer files)")
    return path


def check_adapter_folder(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise ModelFolderError(f"adapter folder {path} has no adapter_config.json: pass the output dir or a "
                               f"checkpoint-N folder of a LoRA run")
    if not any(path.glob("adapter_model.*")):
        raise ModelFolderError(f"adapter folder {path} has no adapter_model.safetensors: the save did not finish; "
                               f"pick an earlier checkpoint-N")
    return path


def inference_device():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", DistContext.from_env().local_rank)
    return torch.device("cpu")


def load_tokenizer_for(base: str | Path, adapter: str | Path | None = None, trust_remote_code: bool = False):
    """The adapter's tokenizer when training saved one beside it (it is what the model was trained with), else the
    base's; padded on the left, as batched generation and last-position scoring need."""
    from transformers import AutoTokenizer

    src = adapter if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file() else base
    tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if not tok.chat_template:
        raise ModelFolderError(f"the tokenizer in {src} has no chat_template; medscale prompts every model through "
                               f"its own chat template")
    return tok


def inference_section(base: Path, trained: ModelSection | None, dtype: str, cuda: bool) -> ModelSection:
    """The `model` section of the recipe a job was trained with (None: a plain model folder's defaults), as
    inference loads it: from `base`, in the caller's dtype (auto: bf16 on GPU, fp32 on CPU), 4 bit only where CUDA
    is (bitsandbytes)."""
    trained = trained or ModelSection(path=str(base))
    return trained.model_copy(update={"path": str(base), "load_in_4bit": trained.load_in_4bit and cuda,
                                      "dtype": ("bfloat16" if cuda else "float32") if dtype == "auto" else dtype})


def load_for_inference(base: str | Path, adapter: str | Path | None = None, dtype: str = "auto", *,
                       trained: ModelSection | None = None, device=None):
    """(model in eval mode, tokenizer). dtype: auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float16 | float32.
    `trained`: the `model` section of the recipe the adapter was trained with (a ModelRef's `model`): a QLoRA job's
    model is loaded in 4 bit again when CUDA is present, with training's loader and quantization config, and
    `trust_remote_code` follows the recipe."""
    from medscale.model.load import load_pretrained

    base = check_base_folder(base)
    adapter = check_adapter_folder(adapter) if adapter is not None else None
    device = device or inference_device()
    cuda = device.type == "cuda"
    section = inference_section(base, trained, dtype, cuda)
    tok = load_tokenizer_for(base, adapter, section.trust_remote_code)
    model = load_pretrained(section, (device.index or 0) if cuda else None, recipe_attention=False)
    if not cuda:
        model.to(device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def free_memory() -> None:
    """Return a dropped model's memory before the next one loads (compare and --against load models one after
    another); call after `del model`."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
