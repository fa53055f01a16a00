"""Tiny random Qwen3 checkpoints for the CPU demo and tests: real loading code, no downloads."""
from __future__ import annotations

import json
import shlex
import shutil
from importlib import resources
from pathlib import Path

from medscale.errors import UserError
from medscale.paths import temp_dir_beside

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# Written into every folder build_tiny_model makes: the only folders besides empty ones it may replace, so nothing
# a person put anywhere is ever deleted to make room for a random model.
MARKER = "medscale_tiny_model.json"


def chat_template() -> str:
    return (resources.files("medscale.model") / "qwen3_style_chat_template.jinja").read_text(encoding="utf-8")


def _demo_texts() -> list[str]:
    from medscale.recipe import demo_data_dir

    texts = []
    for path in sorted(demo_data_dir().glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                texts.extend(str(v) for v in rec.values())
    return texts


def train_demo_tokenizer(vocab_size: int = 3000):
    """A byte-level BPE trained on the shipped demo data, with Qwen3's special tokens and a Qwen3-style
    chat template. Byte-level means any text still encodes; the vocabulary is just small."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_demo_texts(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = chat_template()
    return tok


def tiny_tokenizer(tokenizer: str | None = None):
    """The tokenizer a tiny model is built with: a copy of the `tokenizer` folder, or the BPE trained on the demo data."""
    if tokenizer:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer)
    return train_demo_tokenizer()


def tiny_shape(tokens: int, layers: int, hidden: int) -> dict:
    """Qwen3 config fields of the tiny model (also what `medscale plan` assumes before it is built)."""
    heads = max(2, hidden // 16)
    return dict(model_type="qwen3", vocab_size=(tokens + 63) // 64 * 64, hidden_size=hidden,
                intermediate_size=hidden * 3, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=max(1, heads // 2), head_dim=hidden // heads, tie_word_embeddings=False)


def tiny_config(tokens: int, layers: int, hidden: int, **extra):
    """The tiny model's Qwen3Config (pre-flight builds it on the meta device to know its module names)."""
    from transformers import Qwen3Config

    return Qwen3Config(**tiny_shape(tokens, layers, hidden), max_position_embeddings=8192, rope_theta=1e6, **extra)


def models_home() -> Path:
    """Where a recipe's `model.tiny` may build its model unasked: medscale's own folder, never a path of the user's."""
    from medscale import medscale_home

    return medscale_home() / "models"


def build_problem(out: Path) -> str | None:
    """Why a tiny model must not be built at `out`, or None: only a missing or empty folder, or one medscale's
    MARKER says it built, may be replaced; anything else holds files a person would lose."""
    if not out.exists() and not out.is_symlink():
        return None
    if not out.is_dir():
        return f"{out} is a file, not a folder: choose a new or empty folder"
    if (out / MARKER).is_file():
        return None
    names = sorted(e.name + ("/" if e.is_dir() else "") for e in out.iterdir())
    if not names:
        return None
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"{out} already holds {len(names)} file(s) medscale did not write ({shown}); building a tiny model there "
            f"would delete them: choose a new or empty folder")


def build_tiny_model(out: str | Path, layers: int = 2, hidden: int = 64, tokenizer: str | None = None,
                     seed: int = 0) -> Path:
    """Write a random Qwen3 (safetensors) + tokenizer + MARKER to `out`, atomically: a crash leaves no half folder.
    Refuses (UserError) a folder that holds anything medscale did not build, before and again just before the swap."""
    import torch
    from transformers import Qwen3ForCausalLM

    out = Path(out)
    if (problem := build_problem(out)) is not None:
        raise UserError(problem)
    tok = tiny_tokenizer(tokenizer)
    cfg = tiny_config(len(tok), layers, hidden, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"built_by": "medscale", "layers": layers, "hidden": hidden,
                                              "tokenizer": tokenizer, "seed": seed}) + "\n", encoding="utf-8")
        if (problem := build_problem(out)) is not None:  # something appeared there while the model was built
            raise UserError(problem)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def tiny_build_problem(model) -> str | None:
    """Why the recipe's `model.tiny` cannot be built at `model.path`, or None (it can, or a model is there). It is
    built unasked only under models_home(): anywhere else a missing folder is more likely a mistyped path to a real
    model than a wish for a random one, so the fix names the command that builds one there on purpose."""
    path, spec = Path(model.path).expanduser(), model.tiny
    if (path / "config.json").is_file():
        return None
    if (problem := build_problem(path)) is not None:
        return f"model.path: {problem}"
    home = models_home()
    if path.resolve() == home.resolve() or not path.resolve().is_relative_to(home.resolve()):
        what = "does not exist" if not path.exists() else "has no config.json"
        command = shlex.join(["medscale", "tiny-model", str(path), "--layers", str(spec.layers), "--hidden",
                              str(spec.hidden), *(["--tokenizer", spec.tokenizer] if spec.tokenizer else [])])
        return (f"model.path: {path} {what}; model.tiny builds a random model by itself only under {home}: fix "
                f"model.path if you meant a real model, or build a random one there first with `{command}`")
    return None


def ensure_tiny_model(model) -> None:
    """Build the recipe's tiny random Qwen3 (`model.tiny`) at `model.path` if it is not there yet (demo, tests);
    a UserError where tiny_build_problem says it must not be."""
    if model.tiny is None or (Path(model.path).expanduser() / "config.json").is_file():
        return
    if (problem := tiny_build_problem(model)) is not None:
        raise UserError(problem)
    import logging

    logging.getLogger("medscale.model").info("building tiny random Qwen3 at %s", model.path)
    spec = model.tiny
    build_tiny_model(Path(model.path).expanduser(), layers=spec.layers, hidden=spec.hidden, tokenizer=spec.tokenizer)
