"""Sampling settings as one object, and where each value came from.

Resolution order, per key: the command line > the recipe's `generation` section (keys it sets explicitly) > the
model folder's generation_config.json (R1-Distill ships temperature 0.6, top-p 0.95) > medscale's default. A
reasoning model judged greedily loops, so the model's own sampling defaults win over medscale's when nobody chose.
`greedy` is explicit: it turns sampling off whatever the other sources say, and names itself as the source.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medscale.errors import UserError

Source = Literal["cli", "recipe", "generation_config.json", "default"]
KEYS = ("do_sample", "temperature", "top_p", "top_k", "n_samples", "seed", "max_new_tokens", "think_budget")
# what of generation_config.json means the same here (HF names = ours)
_MODEL_KEYS = ("do_sample", "temperature", "top_p", "top_k", "max_new_tokens")


class SamplingSettings(BaseModel):
    """How one generate call decodes. `max_new_tokens` counts answer tokens; `think_budget` (reasoning models) the
    tokens inside <think>, at which </think> is forced. Recorded with every result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    do_sample: bool = Field(True, description="sample (true) or decode greedily (false)")
    temperature: float = Field(0.7, gt=0, description="sampling temperature (ignored when greedy)")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling mass")
    top_k: int | None = Field(None, ge=1, description="keep only the k most likely tokens; null: no cut")
    n_samples: int = Field(1, ge=1, description="answers per question (pass@1 is their mean)")
    seed: int = Field(0, ge=0, description="with the question id and sample index, fixes each sample")
    max_new_tokens: int = Field(512, ge=1, description="answer tokens after the think block")
    think_budget: int | None = Field(None, ge=1, description="most tokens inside <think>; null: no think budget")

    @model_validator(mode="after")
    def _greedy_has_one_sample(self) -> "SamplingSettings":
        if not self.do_sample and self.n_samples > 1:
            raise ValueError(f"greedy decoding with n_samples={self.n_samples} gives {self.n_samples} identical "
                             f"answers: sample (drop --greedy, or set do_sample=true) or use --n-samples 1")
        return self

    @property
    def max_tokens(self) -> int:
        """Every token a request may generate: the think budget comes on top of the answer."""
        return self.max_new_tokens + (self.think_budget or 0)

    def fingerprint(self, model: str = "") -> str:
        """What makes one sample's text: everything but n_samples (asking for more samples keeps the first ones),
        and sampling knobs only when sampling (greedy is greedy at any temperature)."""
        d = self.model_dump(exclude={"n_samples"})
        if not self.do_sample:
            d = {k: d[k] for k in ("do_sample", "max_new_tokens", "think_budget")}
        return hashlib.sha256(json.dumps([d, model], sort_keys=True).encode()).hexdigest()[:16]

    def sample_key(self, qid: str, sample: int) -> int:
        """The seed of one sample: a hash of (seed, question, sample index), so it does not depend on which other
        questions share its batch, how many there are, or their order."""
        digest = hashlib.sha256(f"{self.seed}\x00{qid}\x00{sample}".encode()).digest()
        return int.from_bytes(digest[:7], "big")


class Resolved(BaseModel):
    settings: SamplingSettings
    sources: dict[str, Source]

    def line(self) -> str:
        s = self.settings
        shown = ["greedy" if not s.do_sample else f"temperature={s.temperature} top_p={s.top_p} top_k={s.top_k}",
                 f"n_samples={s.n_samples}", f"seed={s.seed}", f"max_new_tokens={s.max_new_tokens}",
                 f"think_budget={s.think_budget}"]
        origin = ", ".join(f"{k} from {v}" for k, v in self.sources.items() if v != "default")
        return "generation: " + " ".join(shown) + (f" ({origin})" if origin else " (medscale defaults)")


def model_defaults(model_dir: str | Path | None) -> dict:
    """The sampling keys a model folder's generation_config.json sets (none for a folder without one)."""
    path = Path(model_dir) / "generation_config.json" if model_dir else None
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}): fix or remove the file") from None
    return {k: data[k] for k in _MODEL_KEYS if data.get(k) is not None}


def recipe_values(section) -> dict:
    """The keys a recipe's generation section sets explicitly (a pydantic section or a plain dict). Its temperature
    0 means greedy, as the recipe documents."""
    if section is None:
        return {}
    if isinstance(section, BaseModel):
        values = {k: getattr(section, k) for k in section.model_fields_set if k in KEYS}
    else:
        values = {k: v for k, v in section.items() if k in KEYS}
    if values.get("do_sample", False) is None:  # null: not chosen (the model's own, else sampling)
        values.pop("do_sample")
    if values.get("temperature") == 0:
        values.pop("temperature")
        values["do_sample"] = False
    return values


def resolve(cli: dict | None = None, recipe=None, model_dir: str | Path | None = None,
            greedy: bool = False) -> Resolved:
    """Settings with the source of each key. `cli` holds only the flags that were given (None values are unset)."""
    layers: list[tuple[Source, dict]] = [
        ("cli", {k: v for k, v in (cli or {}).items() if v is not None} | ({"do_sample": False} if greedy else {})),
        ("recipe", recipe_values(recipe)),
        ("generation_config.json", model_defaults(model_dir)),
    ]
    unknown = sorted(set(layers[0][1]) - set(KEYS))
    if unknown:
        raise UserError(f"unknown generation setting(s) {unknown}: the keys are {', '.join(KEYS)}")
    values, sources = {}, {}
    for key in KEYS:
        for source, layer in layers:
            if key in layer:
                values[key], sources[key] = layer[key], source
                break
        else:
            sources[key] = "default"
    try:
        return Resolved(settings=SamplingSettings(**values), sources=sources)
    except ValueError as e:
        first = e.errors()[0] if hasattr(e, "errors") else {"loc": (), "msg": str(e)}
        key = ".".join(map(str, first["loc"]))
        where = f"generation.{key} (from {sources.get(key, 'the settings')})" if key else "generation settings"
        raise UserError(f"{where}: {first['msg']}") from None
