"""The model's tokenizer, apart from its weights: the run's data needs it before the model loads (medscale.train.run),
and pre-flight tokenizes with it."""
from __future__ import annotations

from pathlib import Path

from medscale.model.resolve import model_folder
from medscale.recipe import ModelSection, RecipeError


def load_tokenizer(model: ModelSection, planned: bool = False, *, folder: Path | None = None):
    """The model folder's tokenizer, ready to render records. `planned`: for a tiny model not built yet, the one its
    build will use (nothing is written; `medscale check`). `folder`: where the run's plan found the model (None:
    looked up here)."""
    from transformers import AutoTokenizer

    if planned and model.tiny is not None and not (Path(model.path) / "config.json").is_file():
        from medscale.model.tiny import tiny_tokenizer

        tok = tiny_tokenizer(model.tiny.tokenizer)
    else:
        tok = AutoTokenizer.from_pretrained(folder or model_folder(model), trust_remote_code=model.trust_remote_code)
    if tok.pad_token is None:  # R1-Distill and some others ship without one; padding is masked anyway
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise RecipeError(f"model.path: the tokenizer in {model.path} has no chat_template; "
                          f"medscale renders every record with the model's own template")
    return tok
