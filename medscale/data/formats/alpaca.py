"""Alpaca: `{"instruction", "input"?, "output"}`; a non-empty input is appended to the instruction."""
from medscale.data.formats import Format, assistant, register, require, text, user


def convert(rec: dict, _prompt_field: str) -> list[dict]:
    require(rec, "instruction", "output")
    extra = text(rec.get("input"), "field 'input'").strip()
    return [user(rec["instruction"].strip() + (f"\n{extra}" if extra else "")), assistant(rec["output"])]


register(Format("alpaca", "instruction / input (optional) / output", ("instruction", "input", "output"),
                detect=lambda rec: {"instruction", "output"} <= set(rec), convert=convert, priority=40))
