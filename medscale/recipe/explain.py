"""Pydantic's validation errors said where the user can fix them: the override they typed or the file:line, with
"did you mean" for a misspelt key, one line per problem."""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from medscale.recipe.schema import Recipe


_TYPE_WORDS = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
    "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
    "model_type": "a mapping (section)", "dict_type": "a mapping (section)",
}


def _fields_at(loc: tuple) -> list[str]:
    """Valid key names at the parent of `loc`, for "did you mean" suggestions."""
    model: Any = Recipe
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        for c in candidates:
            for inner in (c, *getattr(c, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    model = inner
                    break
            else:
                continue
            break
        else:
            return []
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def line_of(path: Path | None, loc: tuple) -> str:
    """`file:line` of a key in the recipe YAML (best effort; overrides and bases have none)."""
    if path is None:
        return ""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return f"{path}: "
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                break
            line, node = match[0][0].start_mark.line + 1, match[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return f"{path}:{line}: " if line else f"{path}: "


def _override_of(loc: tuple, message: str, overrides: list[str]) -> str | None:
    """The command-line override behind an error: the one that set the key at `loc`, a section above it or a key
    inside it (`trian.max_steps=5` made the section 'trian'), else, for a cross-field check, the one whose key the
    message names. None: the error comes from the file."""
    keys = tuple(str(p) for p in loc)
    for item in reversed(overrides):
        key = tuple(item.partition("=")[0].strip().split("."))
        if keys and keys[:len(key)] == key[:len(keys)]:
            return item
    return next((item for item in reversed(overrides)
                 if re.search(rf"(?<![\w.]){re.escape(item.partition('=')[0].strip())}(?![\w])", message)), None)


def explain(err: ValidationError, path: Path | None, overrides: list[str] = ()) -> str:
    """One line per problem, each pointing where the user can fix it: the override they typed, or the file:line.
    Unknown keys come first, and a required key that one of them misspells is not reported missing as well: `trian:`
    is "unknown section 'trian'; did you mean 'train'?", the cause, not "missing required key 'train'"."""
    lines, suggested = [], set()
    for e in sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden"):  # stable: pydantic's order within
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
        dotted = ".".join(str(p) for p in loc) or "(recipe)"
        item = _override_of(loc, e["msg"], list(overrides))
        kind = e["type"]
        where = f"override '{item}': " if item else line_of(path, loc)
        if not item and overrides and kind == "value_error" and len(loc) <= 1:  # a cross-field check
            where = f"{where.rstrip(': ')} with {' '.join(overrides)}: "
        if kind == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1, cutoff=0.5)
            suggested.update([loc[:-1] + (close[0],)] if close else [])
            hint = f"; did you mean '{'.'.join(map(str, loc[:-1] + (close[0],)))}'?" if close else ""
            what = "section" if len(loc) == 1 and isinstance(e.get("input"), dict) else "key"
            lines.append(f"{where}unknown {what} '{dotted}'{hint}")
        elif kind == "missing" and loc in suggested:
            continue
        elif kind == "missing":
            lines.append(f"{where}missing required key '{dotted}'")
        elif kind in _TYPE_WORDS:
            lines.append(f"{where}{dotted}: expected {_TYPE_WORDS[kind]}, got {e.get('input')!r}")
        elif kind == "value_error":
            lines.append(f"{where}{e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{where}{dotted}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)
