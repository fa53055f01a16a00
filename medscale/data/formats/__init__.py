"""Record layouts -> chat messages `[{role, content, reasoning_content?}]`: a registry with one module per format.

Every medical SFT layout our users train on is converted here, so nobody writes a conversion script. A format
module registers a `Format` (its name, what it looks like, how to convert a record); this package imports every
module beside it. A new format is one new file, and its name in the recipe's `FORMAT_NAMES` (the choices of
`data.sources[].format`, listed there so the recipe does not import data): this package refuses to load while the
two differ. Conversion raises ValueError; the caller adds `file:line`.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import KW_ONLY, dataclass
from typing import Callable

from medscale.data.chat import THINK_CLOSE, THINK_OPEN, split_think
from medscale.recipe import FORMAT_NAMES


@dataclass(frozen=True)
class Format:
    name: str
    description: str  # one line: the layout, as a person recognises it
    fields: tuple[str, ...]  # the keys it reads (for "closest formats" when detection fails)
    detect: Callable[[dict], bool]
    convert: Callable[[dict, str], list[dict]]  # (record, prompt_field) -> messages
    _: KW_ONLY
    priority: int = 50  # lower is tried first: specific layouts before general ones


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    if fmt.name in FORMATS:
        raise ValueError(f"format {fmt.name!r} is registered twice")
    FORMATS[fmt.name] = fmt
    return fmt


def format_names() -> tuple[str, ...]:
    return tuple(sorted(FORMATS))


def detect(rec: dict) -> str | None:
    """The first format (by priority) whose layout the record has, or None."""
    for fmt in sorted(FORMATS.values(), key=lambda f: (f.priority, f.name)):
        if fmt.detect(rec):
            return fmt.name
    return None


def closest(keys) -> list[str]:
    """Formats ranked by how many of their fields the record has (for an error message), best first."""
    keys = set(keys)
    scored = sorted(((len(keys & set(f.fields)), f.name) for f in FORMATS.values()), key=lambda t: (-t[0], t[1]))
    return [f"{name} ({', '.join(FORMATS[name].fields)})" for score, name in scored if score][:3]


def to_messages(rec: dict, fmt: str, prompt_field: str = "question") -> list[dict]:
    """Convert one record; raises ValueError (the caller adds file:line)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(format_names())}")
    return FORMATS[fmt].convert(rec, prompt_field)


# --------------------------------------------------------------------------- helpers the format modules share

def text(value, what: str) -> str:
    """A field that holds text: a string, or "" when absent (None). A number, list or object is refused, never
    turned into its printed form (an integer `question` would train the model on "42")."""
    if value is None or isinstance(value, str):
        return value or ""
    raise ValueError(f"{what} is {type(value).__name__} ({str(value)[:40]}), expected text")


def assistant(content: str, reasoning: str | None = None) -> dict:
    """An assistant turn; reasoning from the argument, else from a leading, closed <think> block of the content (a
    record's text that merely mentions the tags is all answer)."""
    content, reasoning = text(content, "the answer"), None if reasoning is None else text(reasoning, "the reasoning")
    if reasoning is None and content.lstrip().startswith(THINK_OPEN) and THINK_CLOSE in content:
        reasoning, content = split_think(content)
    msg = {"role": "assistant", "content": content.strip()}
    if reasoning and reasoning.strip():
        msg["reasoning_content"] = reasoning.strip()
    return msg


def require(rec: dict, *fields: str) -> None:
    for f in fields:
        text(rec.get(f), f"field {f!r}")
    missing = [f for f in fields if not isinstance(rec.get(f), str) or not rec[f].strip()]
    if missing:
        raise ValueError(f"missing or empty field(s) {missing}")


ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
         "model": "assistant", "bot": "assistant"}


def turns(items, role_key: str, content_key: str) -> list[dict]:
    """Turn lists (sharegpt from/value, messages role/content); assistant reasoning from a <think> block or a
    `reasoning_content` key."""
    out = []
    for i, turn in enumerate(items or [], start=1):
        role = ROLES.get(str(turn.get(role_key, "")).lower())
        if role is None:
            raise ValueError(f"unknown {role_key} {turn.get(role_key)!r} (known: {sorted(ROLES)})")
        content = text(turn.get(content_key), f"{content_key} of turn {i} ({role})")
        out.append(assistant(content, turn.get("reasoning_content")) if role == "assistant"
                   else {"role": role, "content": content.strip()})
    return out


def user(text: str) -> dict:
    return {"role": "user", "content": text.strip()}


for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
if set(FORMATS) != set(FORMAT_NAMES):
    raise ImportError(f"the format modules register {', '.join(format_names())} but the recipe's FORMAT_NAMES "
                      f"(medscale/recipe/sections/data.py) lists {', '.join(sorted(FORMAT_NAMES))}: make them the same")
