"""Scores of k sampled answers per question, as reasoning models are judged: pass@1 (the mean over samples) with an
interval from a bootstrap over questions, majority-vote accuracy, per-question agreement, and a paired verdict.

The k samples of one question are not k questions: they share its difficulty, so they are correlated. Resampling
whole questions (a clustered bootstrap) keeps that; an interval over n*k independent answers would be too narrow.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from medscale.eval.degenerate import versus
from medscale.eval.result import BenchResult, QuestionScore, SampledScore, Sample
from medscale.verdicts import Verdict
from medscale.eval.stats import (RESAMPLES, SEED, PairingError, mcnemar_exact, paired_verdict, verdict_word,
                                 wilson)

CHUNK = 1000  # resamples drawn at once: 1,000 x n indices stay small for any benchmark


def cluster_bootstrap(per_question: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Means of `per_question` (one value per question: a pass rate, or a paired difference of pass rates) over
    question sets resampled with replacement."""
    n = len(per_question)
    rng = np.random.default_rng(seed)
    means = [per_question[rng.integers(0, n, size=(min(CHUNK, resamples - s), n))].mean(axis=1)
             for s in range(0, resamples, CHUNK)]
    return np.concatenate(means)


def _by_question(samples: list[Sample]) -> dict[str, list[Sample]]:
    grouped: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: (s.id, s.sample)):
        grouped[s.id].append(s)
    return grouped


def question_score(qid: str, ss: list[Sample]) -> QuestionScore:
    """Majority over the samples' choices; a tie goes to the choice that came first (by sample index)."""
    votes = Counter(tuple(sorted(s.chosen)) if s.chosen else None for s in ss)
    top = max(votes.values())
    majority = next(v for v in (tuple(sorted(s.chosen)) if s.chosen else None for s in ss) if votes[v] == top)
    return QuestionScore(id=qid, samples=len(ss), correct=sum(s.ok for s in ss),
                         majority=list(majority) if majority else None,
                         majority_ok=majority is not None and list(majority) == sorted(ss[0].correct),
                         agreement=top / len(ss))


def score_samples(samples: list[Sample], resamples: int = RESAMPLES, seed: int = SEED) -> SampledScore:
    grouped = _by_question(samples)
    qs = [question_score(qid, ss) for qid, ss in grouped.items()]
    rates = np.array([q.correct / q.samples for q in qs])
    low, high = np.percentile(cluster_bootstrap(rates, resamples, seed), [2.5, 97.5])
    n = len(qs)
    return SampledScore(n=n, k=max(q.samples for q in qs), pass1=float(rates.mean()), ci_low=float(low),
                        ci_high=float(high), majority_acc=sum(q.majority_ok for q in qs) / n,
                        agreement=sum(q.agreement for q in qs) / n,
                        over_budget=sum(s.status == "over_budget" for s in samples),
                        no_answer=sum(s.status == "no_answer" for s in samples),
                        resamples=resamples, seed=seed, questions=qs)


def unclustered_interval(samples: list[Sample]) -> tuple[float, float]:
    """The interval that treats every sample as its own question (Wilson over n*k): the wrong one, kept for
    showing how much narrower it is."""
    return wilson(sum(s.ok for s in samples), len(samples))


def paired_sampled_verdict(a: list[Sample], b: list[Sample], resamples: int = RESAMPLES, seed: int = SEED, *,
                           benchmark: str = "", a_label: str = "A", b_label: str = "B") -> Verdict:
    """B against A on the same questions, each question's pass rate averaged over its samples: the interval is a
    bootstrap of the per-question differences; McNemar's p is on the majority-vote answers (a binary per question);
    a_only / b_only count questions where one model's pass rate is higher."""
    qa = {q.id: q for q in score_samples(a, resamples=1).questions}
    qb = {q.id: q for q in score_samples(b, resamples=1).questions}
    if set(qa) != set(qb) or not qa:
        raise PairingError(f"{benchmark or 'the two results'}: sampled on different questions ({len(qa)} vs "
                           f"{len(qb)}): sample both models on the same benchmark files with the same --limit")
    ids = sorted(qa)
    ra = np.array([qa[i].correct / qa[i].samples for i in ids])
    rb = np.array([qb[i].correct / qb[i].samples for i in ids])
    low, high = (float(x) for x in np.percentile(cluster_bootstrap(rb - ra, resamples, seed), [2.5, 97.5]))
    maj_a_only = sum(qa[i].majority_ok and not qb[i].majority_ok for i in ids)
    maj_b_only = sum(qb[i].majority_ok and not qa[i].majority_ok for i in ids)
    return Verdict(benchmark=benchmark, a=a_label, b=b_label, n=len(ids), acc_a=float(ra.mean()),
                   acc_b=float(rb.mean()), diff=float((rb - ra).mean()), ci_low=low, ci_high=high,
                   p_mcnemar=mcnemar_exact(maj_a_only, maj_b_only), a_only=int((ra > rb).sum()),
                   b_only=int((rb > ra).sum()), resamples=resamples, seed=seed, verdict=verdict_word(low, high))


def pair(a: BenchResult, b: BenchResult, *, a_label: str | None = None, b_label: str | None = None) -> Verdict:
    """The paired verdict of B against A on the same questions: answer by answer, or, where either was sampled more
    than once a question, each question's pass rate averaged over its samples (paired_sampled_verdict)."""
    if not any(r.sampled is not None and r.sampled.k > 1 for r in (a, b)):
        v = paired_verdict(a, b, a_label=a_label, b_label=b_label)
    elif a.fingerprint != b.fingerprint:
        raise PairingError(f"{b.benchmark}: sampled on different questions (fingerprints {a.fingerprint} vs "
                           f"{b.fingerprint}): sample both models on the same benchmark files with the same --limit")
    else:
        v = paired_sampled_verdict([s for o in a.outcomes for s in o.samples],
                                   [s for o in b.outcomes for s in o.samples], benchmark=b.benchmark,
                                   a_label=a_label or a.model.get("label") or "A",
                                   b_label=b_label or b.model.get("label") or "B")
    if a.degeneration is not None and b.degeneration is not None:  # same questions, same order: they pair
        v.degeneration = versus(a.degeneration, b.degeneration)
    return v
