"""Training data: the source files and their record layouts, length limits, masking, how samples are batched."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from medscale.recipe.base import Section

# The record layouts a source may name. medscale.data.formats holds one module per layout and refuses to load when
# its registry and this list differ, so the recipe validates format names without importing the data package.
FORMAT_NAMES = ("alpaca", "huatuo", "medical-o1", "messages", "r1-think", "sharegpt", "wenda")
Format = Literal[("auto", *FORMAT_NAMES)]


class DataSource(Section):
    path: str = Field(description="file (.jsonl/.json/.parquet/.csv), folder or glob")
    format: Format = Field("auto", description="record layout; auto-detected per file when `auto`")
    skip: int = Field(0, ge=0, description="leave out the first N records of this source (e.g. the ones another "
                                           "source trains on: validate on records after the training ones)")
    limit: int | None = Field(None, ge=1, description="use only the first N records of this source (after skip)")
    sample: int | None = Field(None, ge=1, description="a random N of the records left after skip and limit "
                                                       "(seeded by train.seed; file order kept)")
    weight: float = Field(1.0, gt=0, description="mixing weight: 2 = every record twice, 0.5 = a seeded random half")


class TermMasking(Section):
    """Seed v3: hide medical terms in the prompt so the model must reason from context."""

    p: float = Field(0.15, ge=0.0, le=1.0, description="probability of masking each term occurrence (final value if progressive)")
    progressive: bool = Field(True, description="ramp p linearly from 0 to `p` over training")
    mask_token: str = Field("[MASK]", description="text that replaces a masked term")
    lexicon: str | None = Field(None, description="one term a line; default: medscale's built-in Chinese clinical lexicon")


class DataSection(Section):
    sources: list[DataSource] = Field(min_length=1, description="training files, each with its own format, limit "
                                                               "and weight; at least one")
    eval_sources: list[DataSource] = Field(default_factory=list, description="held-out files; if empty, `eval_size` is split off")
    eval_size: float = Field(0, ge=0, description="validation records: a count (>= 1) or a fraction (< 1); 0 = none")
    max_length: int = Field(2048, ge=16, description="tokens per sample after chat templating")
    truncation: Literal["drop", "truncate_prompt_left", "truncate_response"] = Field(
        "drop", description="samples over max_length: drop them, cut the prompt from the left, or cut the response end")
    no_reasoning: Literal["empty_think", "drop"] = Field(
        "empty_think", description="records without reasoning: render Qwen3's empty <think></think> (not trained), "
                                   "or drop them (think-only training)")
    on_bad_record: Literal["error", "skip"] = Field("error", description="a malformed record stops the run, or is skipped and counted")
    max_bad_fraction: float = Field(0.01, ge=0, le=1, description="with on_bad_record=skip: fail above this fraction")
    prompt_field: Literal["question", "instruction"] = Field("question", description="r1-think: which field is the prompt")
    system_prompt: str | None = Field(None, description="system turn added to records that have none; it counts "
                                                         "toward max_length but carries no loss")
    train_on: Literal["all_assistant", "last_assistant"] = Field("all_assistant", description="which assistant turns carry loss")
    term_masking: TermMasking | None = Field(None, description="seed v3: hide medical terms in prompts (null: off)")
    batching: Literal["padded", "padding_free", "packed"] = Field(
        "padded", description="padded: each micro-batch padded to its longest sample (the seed scripts); "
                              "padding_free: the same samples per micro-batch and per optimizer step, concatenated "
                              "into one row without padding (position_ids restart per sample); packed: samples "
                              "packed best-fit into rows of a token budget (more samples per step, fewest steps)")
    pack_tokens: int | None = Field(None, ge=16, description="batching=packed: tokens per row; default: the memory "
                                                             "plan's budget on a GPU (`medscale plan`), else "
                                                             "max_length x per-device batch")
    num_proc: int = Field(1, ge=1, description="processes for tokenization (datasets.map)")

    @model_validator(mode="before")
    @classmethod
    def _legacy_packing(cls, data: Any) -> Any:
        """`data.packing: true|false` (before data.batching existed) still reads as batching packed|padded."""
        if not isinstance(data, dict) or "packing" not in data:
            return data
        data = dict(data)
        packing = data.pop("packing")
        if not isinstance(packing, bool):
            raise ValueError(f"data.packing: expected true or false, got {packing!r}; it is replaced by "
                             f"data.batching=padded|padding_free|packed")
        want = "packed" if packing else "padded"
        if data.get("batching", want) != want:
            raise ValueError(f"data.packing={str(packing).lower()} contradicts data.batching={data['batching']}: "
                             f"remove data.packing (replaced by data.batching)")
        data["batching"] = want
        return data
