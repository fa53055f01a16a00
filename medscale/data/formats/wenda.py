"""Chinese QA pairs: `{"问": ..., "答": ...}` (MedicalGPT's RAG medical corpus, one object a line)."""
from medscale.data.formats import Format, assistant, register, require, user


def convert(rec: dict, _prompt_field: str) -> list[dict]:
    require(rec, "问", "答")
    return [user(rec["问"]), assistant(rec["答"])]


register(Format("wenda", "问 / 答", ("问", "答"), detect=lambda rec: {"问", "答"} <= set(rec), convert=convert,
                priority=50))
