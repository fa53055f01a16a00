"""`medscale chat`: talk to a model (base, or base + adapter, or an OpenAI-compatible endpoint) through its chat
template, one-shot or interactive, with the think block shown apart from the answer. Each turn is one request to the
generation engine."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from medscale.data.chat import split_think
from medscale.eval.degenerate import Signals, signals
from medscale.generate.engine import Request, generate
from medscale.generate.settings import SamplingSettings

EXIT_WORDS = {"/exit", "/quit", "exit", "quit"}


@dataclass
class Reply:
    think: str | None  # the reasoning inside <think>...</think>; None when the model wrote none
    answer: str
    tokens: int
    signals: Signals  # its degeneration signals (medscale.eval.degenerate), shown under the answer when any


class ChatSession:
    """A conversation: earlier answers are kept without their reasoning, as Qwen3-style templates drop it anyway.
    Each turn is its own request id, so a seeded conversation replays the same way."""

    def __init__(self, backend, settings: SamplingSettings, system_prompt: str | None = None):
        self.backend, self.settings = backend, settings
        self.system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.turns: list[dict] = []

    def ask(self, text: str) -> Reply:
        user = {"role": "user", "content": text}
        turn = len(self.turns) // 2
        g = generate([Request(f"turn-{turn}", self.system + self.turns + [user])], self.settings,
                     self.backend).generations[0]
        think, answer = split_think(g.text)
        reply = Reply(think, answer or "", g.tokens, signals(text, g.text))
        self.turns += [user, {"role": "assistant", "content": reply.answer}]
        return reply

    def reset(self) -> None:
        self.turns = []


def format_reply(reply: Reply) -> str:
    think = f"[think]\n{reply.think}\n[/think]\n\n" if reply.think else ""
    flagged = f"\n(degenerate: {', '.join(reply.signals.reasons())})" if reply.signals.degenerate else ""
    return f"{think}{reply.answer or '(no answer: the model ended its turn without one)'}{flagged}"


def interactive(session: ChatSession, read: Callable[[str], str] = input, write: Callable[[str], None] = print) -> int:
    """Read a line, answer it, until EOF or /exit; /reset starts a new conversation. Returns the turns answered."""
    write("medscale chat: /reset starts over, /exit (or Ctrl-D) quits")
    answered = 0
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("")
            return answered
        if not line:
            continue
        if line in EXIT_WORDS:
            return answered
        if line == "/reset":
            session.reset()
            write("(new conversation)")
            continue
        write(format_reply(session.ask(line)))
        answered += 1
