"""ShareGPT: `{"conversations": [{"from": "human" | "gpt" | "system", "value": ...}, ...]}` (MedicalGPT)."""
from medscale.data.formats import Format, register, turns

register(Format("sharegpt", "conversations: [{from, value}, ...]", ("conversations",),
                detect=lambda rec: "conversations" in rec, priority=10,
                convert=lambda rec, _: turns(rec.get("conversations"), "from", "value")))
