"""An evaluation job's finished per-question scores, kept as they finish, so a killed evaluation's next attempt
scores only the questions it had not finished and ends with the result an uninterrupted run gives.

One JSON line per question in the job's folder (`scores.jsonl`; process r of a sharded run writes
`scores.rank<r>.jsonl`, and every file is read back), appended and fsynced through the generation cache's writer
(medscale.generate.cache: a kill can only tear the last line, which is skipped and cut). A line holds the question
id and its outcome under a key of what was measured: the benchmark's fingerprint, the mode, the shots, the model
(base, adapter, checkpoint) and the prompt. Anything else changed is another key, and nothing is reused. Generate
mode keeps answers, not scores: the generation engine's cache (in a file named by the same key) holds each one under
its settings' fingerprint, and scoring them again is cheap.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from medscale.eval.result import Outcome
from medscale.generate.cache import GenerationCache

PREFIX = "scores"


def measure_key(*, bench_fingerprint: str, mode: str, shots: int, model: dict | None,
                system_prompt: str | None) -> str:
    what = {"benchmark": bench_fingerprint, "mode": mode, "shots": shots, "system_prompt": system_prompt,
            "model": {k: (model or {}).get(k) for k in ("base", "adapter", "checkpoint")},
            "generation": None}  # kept: the keys of scores earlier versions kept stay the same

    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class ScoreLog:
    """The scores of one benchmark on one model in one job: `done` (question id -> Outcome, from earlier
    attempts) and `add` (outcomes as they finish). `scored` counts what this attempt scored itself."""

    folder: Path
    key: str
    rank: int = 0
    done: dict[str, Outcome] = field(default_factory=dict)
    scored: int = 0

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        for path in sorted(self.folder.glob(f"{PREFIX}*.jsonl")):
            for (qid, _), rec in GenerationCache(path).load(self.key).items():
                self.done[qid] = Outcome.model_validate(rec["outcome"])
        name = f"{PREFIX}.jsonl" if self.rank == 0 else f"{PREFIX}.rank{self.rank}.jsonl"
        self._writer = GenerationCache(self.folder / name)

    def add(self, outcomes: list[Outcome]) -> None:
        from medscale.jobs.checkpoint import failpoint

        for o in outcomes:
            self._writer.append({"id": o.id, "sample": 0, "fingerprint": self.key, "outcome": o.model_dump()})
        self.scored += len(outcomes)
        failpoint("eval_scored", self.scored)  # crash tests: SIGKILL after N questions are kept

    def close(self) -> None:
        self._writer.close()
