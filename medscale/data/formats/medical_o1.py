"""medical-o1-reasoning-SFT (HuatuoGPT-o1): `{"Question", "Complex_CoT", "Response"}`; the CoT is the reasoning."""
from medscale.data.formats import Format, assistant, register, require, text, user


def convert(rec: dict, _prompt_field: str) -> list[dict]:
    require(rec, "Question", "Response")
    return [user(rec["Question"]), assistant(rec["Response"], text(rec.get("Complex_CoT"), "field 'Complex_CoT'"))]


register(Format("medical-o1", "Question / Complex_CoT / Response", ("Question", "Complex_CoT", "Response"),
                detect=lambda rec: {"Question", "Response"} <= set(rec), convert=convert, priority=20))
