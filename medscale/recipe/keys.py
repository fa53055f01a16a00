"""The recipe's reference, generated from the field descriptions: its JSON schema and the key table
`medscale recipe schema` prints."""
from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel

from medscale.recipe.schema import Recipe


def recipe_schema() -> dict:
    """JSON schema of the recipe, generated from the sections' field descriptions."""
    return Recipe.model_json_schema()


class KeyDoc(BaseModel):
    """One recipe key as `medscale recipe schema` shows it."""

    section: str  # top-level section ("" for the recipe's own keys: name, description)
    key: str  # the rest of the dotted path; list items as `sources[].path`
    type: str
    default: str
    description: str | None


def _sections_in(annotation) -> list[tuple[type[BaseModel], bool]]:
    """(section model, inside a list) found in a field's annotation: `X`, `X | None`, `list[X]`, `list[str | X]`
    (eval.benchmarks: a name or a mapping)."""
    import typing

    def is_section(a) -> bool:
        return isinstance(a, type) and issubclass(a, BaseModel)

    if typing.get_origin(annotation) is list:
        return [(b, True) for a in typing.get_args(annotation) for b in (a, *typing.get_args(a)) if is_section(b)]
    return [(a, False) for a in (annotation, *typing.get_args(annotation)) if is_section(a)]


def _type_words(annotation) -> str:
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is list:
        if args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            return "list of mappings"
        return f"list of {_type_words(args[0])}" if args else "list"
    if args and origin is not None:  # a union
        words = [_type_words(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default_words(field) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
        return "(section)" if isinstance(value, BaseModel) else json.dumps(value, ensure_ascii=False)
    if field.default is PydanticUndefined:
        return "required"
    return "null" if field.default is None else json.dumps(field.default, ensure_ascii=False)


def recipe_keys(model: type[BaseModel] = Recipe, prefix: str = "") -> list[KeyDoc]:
    """Every key of the recipe, sections and the keys inside them, in declaration order, with its type, default and
    description (each section's `Field(description=...)`)."""
    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if "." in path:
            section, key = path.split(".", 1)
        else:  # a top-level key: a section's own row, or one of the recipe's own keys (name, description)
            section, key = (path, "") if _sections_in(field.annotation) else ("", path)
        rows.append(KeyDoc(section=section, key=key, type=_type_words(field.annotation),
                           default=_default_words(field), description=field.description))
        for sub, in_list in _sections_in(field.annotation):
            rows += recipe_keys(sub, f"{path}{'[]' if in_list else ''}.")
    return rows
