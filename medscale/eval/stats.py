"""Accuracy with intervals, paired verdicts, and the contamination check.

McNemar's exact p is a binomial tail written out here (a few lines with math.comb): scipy is not a medscale
dependency and would be ~40 MB for this one sum.
"""
from __future__ import annotations

import math
import unicodedata
from collections import defaultdict
from typing import Iterable

import numpy as np

from medscale.errors import UserError
from medscale.eval.result import BenchResult, Outcome, SubjectScore
from medscale.verdicts import Contamination, Verdict

Z95 = 1.959963984540054
RESAMPLES = 10_000
SEED = 0


class PairingError(UserError):
    """Two results that were not measured on the same questions cannot be paired."""


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion: sensible at small n and near 0 or 1, unlike the normal interval."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(outcomes: list[Outcome], *, benchmark: str, fingerprint: str, language: str, mode: str, shots: int,
              model: dict | None = None, skipped: list[str] = (), notes: list[str] = (),
              seconds: float = 0.0) -> BenchResult:
    """Overall and per-subject accuracy with Wilson intervals; unparseable answers count as wrong."""
    n, correct = len(outcomes), sum(o.ok for o in outcomes)
    by_subject: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_subject[o.subject].append(o)
    subjects = [SubjectScore(subject=s, n=len(os_), correct=sum(o.ok for o in os_),
                             acc=sum(o.ok for o in os_) / len(os_), ci_low=wilson(sum(o.ok for o in os_), len(os_))[0],
                             ci_high=wilson(sum(o.ok for o in os_), len(os_))[1])
                for s, os_ in sorted(by_subject.items())]
    multi = sum(len(o.correct) > 1 for o in outcomes)
    notes = list(notes)
    if multi:
        notes.append(f"{multi} questions have several correct letters and are scored as an exact set" +
                     (": the k most likely letters must be the k correct ones" if mode != "generate" else
                      ": the letters parsed from the answer must be exactly the correct ones"))
    unparseable = sum(o.chosen is None for o in outcomes)
    if unparseable:
        notes.append(f"{unparseable} generated answers had no parseable letter and count as wrong")
    if skipped:
        notes.append(f"{len(skipped)} malformed questions skipped (not in n); first: {skipped[0]}")
    low, high = wilson(correct, n)
    return BenchResult(benchmark=benchmark, fingerprint=fingerprint, language=language, mode=mode, shots=shots,
                       model=model or {}, n=n, correct=correct, acc=correct / n if n else 0.0, ci_low=low, ci_high=high,
                       skipped=len(skipped), skipped_detail=list(skipped), unparseable=unparseable, multi_answer=multi,
                       subjects=subjects, outcomes=outcomes, notes=notes, seconds=round(seconds, 3),
                       questions_per_s=round(n / seconds, 2) if seconds > 0 else 0.0)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p: the discordant pairs split as Binomial(a_only + b_only, 1/2) under no difference."""
    d = a_only + b_only
    if d == 0:
        return 1.0
    k, term, tail = min(a_only, b_only), 1, 0
    for i in range(k + 1):  # sum of C(d, i) for i <= k, built incrementally (exact integers)
        tail += term
        term = term * (d - i) // (i + 1)
    return min(1.0, 2 * tail / 2 ** d)


def paired_bootstrap(a_ok: list[bool], b_ok: list[bool], resamples: int = RESAMPLES,
                     seed: int = SEED) -> tuple[float, float]:
    """95% percentile interval of acc(B) - acc(A) over questions resampled with replacement.

    Each question's paired difference is -1, 0 or +1, so the mean of a resample depends only on how many of each
    it drew: drawing those three counts from a multinomial is the same distribution as resampling question
    indices, at O(resamples) instead of O(resamples x n) memory."""
    n = len(a_ok)
    d = np.asarray(b_ok, dtype=int) - np.asarray(a_ok, dtype=int)
    p = np.array([(d == -1).sum(), (d == 0).sum(), (d == 1).sum()]) / n
    counts = np.random.default_rng(seed).multinomial(n, p, size=resamples)
    diffs = (counts[:, 2] - counts[:, 0]) / n
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def verdict_word(ci_low: float, ci_high: float) -> str:
    return "better" if ci_low > 0 else "worse" if ci_high < 0 else "no detectable difference"


def paired_verdict(a: BenchResult, b: BenchResult, resamples: int = RESAMPLES, seed: int = SEED, *,
                   a_label: str | None = None, b_label: str | None = None) -> Verdict:
    """B (e.g. the fine-tune) against A (e.g. its base), question by question."""
    a_by = {o.id: o for o in a.outcomes}
    b_by = {o.id: o for o in b.outcomes}
    if a.fingerprint != b.fingerprint or set(a_by) != set(b_by) or not a_by:
        raise PairingError(f"{a.benchmark} and {b.benchmark} were measured on different questions (fingerprints "
                           f"{a.fingerprint} vs {b.fingerprint}, {len(a_by)} vs {len(b_by)} outcomes): score both "
                           f"models on the same benchmark files with the same --limit and seed")
    ids = sorted(a_by)
    a_ok, b_ok = [a_by[i].ok for i in ids], [b_by[i].ok for i in ids]
    low, high = paired_bootstrap(a_ok, b_ok, resamples, seed)
    a_only = sum(x and not y for x, y in zip(a_ok, b_ok))
    b_only = sum(y and not x for x, y in zip(a_ok, b_ok))
    n = len(ids)
    return Verdict(benchmark=b.benchmark, a=a_label or a.model.get("label") or "A",
                   b=b_label or b.model.get("label") or "B", n=n, acc_a=sum(a_ok) / n, acc_b=sum(b_ok) / n,
                   diff=(sum(b_ok) - sum(a_ok)) / n, ci_low=low, ci_high=high, p_mcnemar=mcnemar_exact(a_only, b_only),
                   a_only=a_only, b_only=b_only, resamples=resamples, seed=seed, verdict=verdict_word(low, high))


# --------------------------------------------------------------------------- contamination

NGRAM = {"zh": 13, "en": 50}  # characters: 13 CJK characters ~ a clause; 50 Latin characters ~ 8-10 words
OVERLAP_THRESHOLD = 0.5  # a question overlaps when half or more of its n-grams occur in the training texts


def normalise(text: str) -> str:
    """NFKC, lower case, letters/digits/CJK only, so spacing and punctuation changes do not hide a copy."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if c.isalnum())


def _ngrams(text: str, n: int) -> set[str]:
    return {text[i:i + n] for i in range(len(text) - n + 1)} if len(text) >= n else ({text} if text else set())


def contamination(questions: dict[str, str], training_texts: Iterable[str], language: str = "zh",
                  threshold: float = OVERLAP_THRESHOLD) -> Contamination:
    """Share of questions (id -> text) whose normalised character n-grams occur in the training texts.

    The question n-grams (small) are indexed, the training texts (large) streamed past them once. A question
    shorter than n counts as one n-gram: it overlaps when it occurs whole inside a training text."""
    n = NGRAM.get(language, NGRAM["en"])
    grams = {qid: _ngrams(normalise(text), n) for qid, text in questions.items()}
    index: dict[int, set[str]] = defaultdict(set)  # n-gram length -> the question n-grams of that length
    for g in grams.values():
        for gram in g:
            index[len(gram)].add(gram)
    seen: set[str] = set()
    for text in training_texts:
        t = normalise(text)
        for size, wanted in index.items():
            seen.update(t[i:i + size] for i in range(len(t) - size + 1) if t[i:i + size] in wanted)
    hits = sorted(qid for qid, g in grams.items() if g and len(g & seen) >= threshold * len(g))
    total = len(questions)
    return Contamination(n_questions=total, overlapping=len(hits), share=len(hits) / total if total else 0.0,
                         ngram=n, threshold=threshold, examples=hits[:20])
