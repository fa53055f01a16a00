"""HuatuoGPT-sft-data-v1: `{"data": ["问：...", "答：...", ...]}`, turns alternating, prefixes stripped."""
import re

from medscale.data.formats import Format, assistant, register, text, user

_PREFIX = re.compile(r"^\s*(问|答)[:：]\s*")


def convert(rec: dict, _prompt_field: str) -> list[dict]:
    items = rec.get("data")
    if not isinstance(items, list) or len(items) < 2:
        raise ValueError("'data' must be a list of alternating 问/答 turns")
    turns = [text(t, f"data[{i}]") for i, t in enumerate(items)]
    return [user(_PREFIX.sub("", t)) if i % 2 == 0 else assistant(_PREFIX.sub("", t)) for i, t in enumerate(turns)]


register(Format("huatuo", "data: [问：..., 答：..., ...]", ("data",),
                detect=lambda rec: isinstance(rec.get("data"), list), convert=convert, priority=50))
