"""OpenAI-style chat: `{"messages": [{"role": ..., "content": ..., "reasoning_content"?: ...}, ...]}`."""
from medscale.data.formats import Format, register, turns

register(Format("messages", "messages: [{role, content}, ...]", ("messages",),
                detect=lambda rec: "messages" in rec, priority=10,
                convert=lambda rec, _: turns(rec.get("messages"), "role", "content")))
