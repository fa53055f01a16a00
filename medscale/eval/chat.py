"""`medscale chat`: talk to a model (base, or base + adapter) through its chat template, one-shot or interactive,
with the think block shown apart from the answer."""
from __future__ import annotations

from typing import Callable

from medscale.eval.generate import Generation, generate
from medscale.recipe import GenerationSection

EXIT_WORDS = {"/exit", "/quit", "exit", "quit"}


class ChatSession:
    """A conversation: earlier answers are kept without their reasoning, as Qwen3-style templates drop it anyway."""

    def __init__(self, model, tok, generation: GenerationSection, system_prompt: str | None = None,
                 greedy: bool = False, seed: int = 0):
        self.model, self.tok, self.generation, self.greedy, self.seed = model, tok, generation, greedy, seed
        self.system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.turns: list[dict] = []

    def ask(self, text: str) -> Generation:
        user = {"role": "user", "content": text}
        reply = generate(self.model, self.tok, [self.system + self.turns + [user]], self.generation,
                         greedy=self.greedy, batch_size=1, seed=self.seed + len(self.turns), desc="")[0]
        self.turns += [user, {"role": "assistant", "content": reply.answer}]
        return reply

    def reset(self) -> None:
        self.turns = []


def format_reply(reply: Generation) -> str:
    think = f"[think]\n{reply.think}\n[/think]\n\n" if reply.think else ""
    return f"{think}{reply.answer or '(no answer: the model ended its turn without one)'}"


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
