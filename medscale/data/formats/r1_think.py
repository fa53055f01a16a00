"""Question-answer records with optional reasoning: `{"question" | "instruction", "think"?, "answer"}`
(delicate_medical_r1; also plain `{question, answer}` QA such as MedicalGPT's GRPO sample). `data.prompt_field`
chooses question or instruction when both are there."""
from medscale.data.formats import Format, assistant, register, require, text, user


def convert(rec: dict, prompt_field: str) -> list[dict]:
    other = "instruction" if prompt_field == "question" else "question"
    field = prompt_field if text(rec.get(prompt_field), f"field {prompt_field!r}").strip() else other
    require(rec, field, "answer")
    return [user(rec[field]), assistant(rec["answer"], text(rec.get("think"), "field 'think'"))]


register(Format("r1-think", "question (or instruction) / think (optional) / answer",
                ("question", "instruction", "think", "answer"),
                detect=lambda rec: "answer" in rec and ("question" in rec or "instruction" in rec),
                convert=convert, priority=30))
