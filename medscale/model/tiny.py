"""Tiny random Qwen3 checkpoints for the CPU demo and tests: real loading code, no downloads."""
from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

from medscale.paths import temp_dir_beside

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


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


def build_tiny_model(out: str | Path, layers: int = 2, hidden: int = 64, tokenizer: str | None = None,
                     seed: int = 0) -> Path:
    """Write a random Qwen3 (safetensors) + tokenizer to `out`, atomically: a crash leaves no half folder."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = Path(out)
    tok = tiny_tokenizer(tokenizer)
    cfg = Qwen3Config(**tiny_shape(len(tok), layers, hidden), max_position_embeddings=8192, rope_theta=1e6,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_tiny_model(model) -> None:
    """Build the recipe's tiny random Qwen3 (`model.tiny`) at `model.path` if it is not there yet (demo, tests)."""
    if model.tiny is not None and not (Path(model.path) / "config.json").is_file():
        import logging

        logging.getLogger("medscale.model").info("building tiny random Qwen3 at %s", model.path)
        spec = model.tiny
        build_tiny_model(model.path, layers=spec.layers, hidden=spec.hidden, tokenizer=spec.tokenizer)
