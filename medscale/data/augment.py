"""Term masking (seed v3): replace lexicon terms in the *prompt* with a mask token.

The model then has to answer from context, which the seed reports credit with deeper
mechanism explanations. Labels are never touched: only user turns are rewritten.
Deterministic: the same seed, step and sample always mask the same occurrences.
"""
from __future__ import annotations

import random
import re
from importlib import resources
from pathlib import Path

from medscale.recipe import TermMasking


def load_lexicon(path: str | None = None) -> list[str]:
    text = Path(path).read_text(encoding="utf-8") if path else \
        (resources.files("medscale.data") / "lexicon_zh.txt").read_text(encoding="utf-8")
    return [t.strip() for t in text.splitlines() if t.strip() and not t.startswith("#")]


class TermMasker:
    def __init__(self, cfg: TermMasking, seed: int):
        self.cfg, self.seed = cfg, seed
        terms = sorted(set(load_lexicon(cfg.lexicon)), key=len, reverse=True)  # longest match first
        self.pattern = re.compile("|".join(map(re.escape, terms)))

    def probability(self, progress: float) -> float:
        return self.cfg.p * min(max(progress, 0.0), 1.0) if self.cfg.progressive else self.cfg.p

    def mask_text(self, text: str, p: float, rng: random.Random) -> str:
        return self.pattern.sub(lambda m: self.cfg.mask_token if rng.random() < p else m.group(0), text)

    def __call__(self, msgs: list[dict], step: int, progress: float, sample_id: int) -> list[dict]:
        p = self.probability(progress)
        if p <= 0:
            return msgs
        rng = random.Random(f"{self.seed}:{step}:{sample_id}")
        return [{**m, "content": self.mask_text(m["content"], p, rng)} if m["role"] == "user" else m for m in msgs]
