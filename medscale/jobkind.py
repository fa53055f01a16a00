"""The kinds of job, one `str` enum: what a job spec, its journal and its registry row hold (stored as the plain
value, so rows an earlier version wrote read back as the members). A leaf of its own, as `status` is: the job
record writes a kind and the registry stores it, so neither package imports the other for it. Where each kind's
code lives (its road) is `medscale.jobs.kinds`.
"""
from __future__ import annotations

from enum import Enum


class JobKind(str, Enum):
    TRAIN = "train"
    EVAL = "eval"
    TRIAL = "trial"  # a sweep's cell: train, then eval
    JUDGE = "judge"  # open answers judged
    SERVE = "serve"  # a model served (no road yet)

    def __str__(self) -> str:
        return self.value
