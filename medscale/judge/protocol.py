"""The pairwise protocol (MT-Bench's): every pair judged in both orders, a verdict that flips with the order counts
as a tie, an unreadable reply is counted and never guessed; then B's win / tie / loss against A over questions,
with the paired bootstrap interval and the verdict in eval's words. Also the single-answer scores. Pure functions
over judge replies, so a recorded set of replies gives the same numbers as the run that made them.
"""
from __future__ import annotations

import numpy as np

from medscale.eval.result import _Model
from medscale.eval.sampled import cluster_bootstrap
from medscale.eval.stats import RESAMPLES, SEED, paired_bootstrap, verdict_word
from medscale.judge.rubric import KEYS, OVERALL, read_pairwise, read_scores

_SWAP = {"A": "B", "B": "A", "tie": "tie", None: None}
_POINTS = {"B": 1, "tie": 0, "A": -1}  # B's side: B won, tie, A won


class PairJudgement(_Model):
    """One question judged in both orders. `choices`: per criterion, the better model ("A", "B", "tie") after
    both orders, or None when either reply could not be read; `consistent` is None when it was not readable."""

    id: str
    replies: list[str]  # A shown first, then B shown first
    choices: dict[str, str | None]
    consistent: bool | None
    len_a: int
    len_b: int


class Preference(_Model):
    """B against A on one criterion, over the questions where both orders were read."""

    n: int
    win: int
    tie: int
    loss: int
    unparseable: int
    net: float  # win rate - loss rate
    ci_low: float
    ci_high: float
    verdict: str


class LengthBias(_Model):
    """Does the longer answer win? r: Pearson correlation of the outcome (+1 B won, 0 tie, -1 A won) with the
    length difference (B - A, characters); longer_won: of the decisive questions, how many the longer answer won."""

    r: float | None
    longer_won: int
    decisive: int


class PairwiseSummary(_Model):
    n_questions: int
    replies: int
    unparseable_replies: int
    position_consistency: float | None  # share of read pairs whose overall verdict did not flip with the order
    order_dependent: int  # pairs whose overall verdict flipped: counted as ties
    overall: Preference
    criteria: dict[str, Preference]
    length_bias: LengthBias
    resamples: int
    seed: int


def judge_pair(qid: str, first: str, second: str, len_a: int, len_b: int) -> PairJudgement:
    """`first`: the reply with A shown first; `second`: with B shown first (its A and B swapped back here)."""
    one, two = read_pairwise(first), {k: _SWAP[v] for k, v in read_pairwise(second).items()}
    choices = {k: None if one[k] is None or two[k] is None else one[k] if one[k] == two[k] else "tie" for k in KEYS}
    read = one[OVERALL] is not None and two[OVERALL] is not None
    return PairJudgement(id=qid, replies=[first, second], choices=choices,
                         consistent=one[OVERALL] == two[OVERALL] if read else None, len_a=len_a, len_b=len_b)


def preference(choices: list[str | None], resamples: int = RESAMPLES, seed: int = SEED) -> Preference:
    """Win / tie / loss of B, and the paired bootstrap interval of (win - loss): a win is B right and A wrong in
    eval's paired bootstrap, a loss the reverse, a tie neither."""
    read = [c for c in choices if c is not None]
    n, win, loss = len(read), read.count("B"), read.count("A")
    if n == 0:
        return Preference(n=0, win=0, tie=0, loss=0, unparseable=len(choices), net=0.0, ci_low=0.0, ci_high=0.0,
                          verdict="no detectable difference")
    low, high = paired_bootstrap([c == "A" for c in read], [c == "B" for c in read], resamples, seed)
    return Preference(n=n, win=win, tie=n - win - loss, loss=loss, unparseable=len(choices) - n, net=(win - loss) / n,
                      ci_low=low, ci_high=high, verdict=verdict_word(low, high))


def length_bias(pairs: list[PairJudgement]) -> LengthBias:
    read = [(p.choices[OVERALL], p.len_b - p.len_a) for p in pairs if p.choices[OVERALL] is not None]
    outcome = np.array([_POINTS[c] for c, _ in read], dtype=float)
    diff = np.array([d for _, d in read], dtype=float)
    r = float(np.corrcoef(outcome, diff)[0, 1]) if len(read) > 1 and outcome.std() > 0 and diff.std() > 0 else None
    decisive = [(c, d) for c, d in read if c != "tie" and d != 0]
    return LengthBias(r=r, longer_won=sum((c == "B") == (d > 0) for c, d in decisive), decisive=len(decisive))


def summarise_pairs(pairs: list[PairJudgement], resamples: int = RESAMPLES, seed: int = SEED) -> PairwiseSummary:
    readable = [p.consistent for p in pairs if p.consistent is not None]
    replies = [r for p in pairs for r in p.replies]
    unread = sum(read_pairwise(r)[OVERALL] is None for r in replies)
    return PairwiseSummary(
        n_questions=len(pairs), replies=len(replies), unparseable_replies=unread,
        position_consistency=sum(readable) / len(readable) if readable else None,
        order_dependent=readable.count(False),
        overall=preference([p.choices[OVERALL] for p in pairs], resamples, seed),
        criteria={k: preference([p.choices[k] for p in pairs], resamples, seed) for k in KEYS if k != OVERALL},
        length_bias=length_bias(pairs), resamples=resamples, seed=seed)


def verdict_line(s: PairwiseSummary, a: str, b: str) -> str:
    """One line, in eval's words: is B better than A, worse, or no detectable difference at this n?"""
    o = s.overall
    if o.n == 0:
        return f"{b} against {a}: no pair could be read ({s.unparseable_replies} of {s.replies} judge replies " \
               f"unparseable): no detectable difference"
    consistency = f"{100 * s.position_consistency:.0f}%" if s.position_consistency is not None else "–"
    return (f"{b} against {a}: win {100 * o.win / o.n:.0f}% / tie {100 * o.tie / o.n:.0f}% / loss "
            f"{100 * o.loss / o.n:.0f}% (net {100 * o.net:+.1f} points, 95% CI {100 * o.ci_low:+.1f} to "
            f"{100 * o.ci_high:+.1f}, n={o.n}); position consistency {consistency}; {o.unparseable} of "
            f"{s.n_questions} questions unparseable: {o.verdict}")


# --------------------------------------------------------------------------- single-answer scores

class ScoreSummary(_Model):
    """One model's mean score per criterion (1-10) with a bootstrap interval over the questions read."""

    label: str
    n: int
    unparseable: int  # replies without a readable overall score
    means: dict[str, float | None]
    ci: dict[str, list[float] | None]
    scores: list[dict[str, int | None]]  # per question, in question order
    replies: list[str]


def summarise_scores(label: str, replies: list[str], resamples: int = RESAMPLES, seed: int = SEED) -> ScoreSummary:
    scores = [read_scores(r) for r in replies]
    means, ci = {}, {}
    for k in KEYS:
        vals = np.array([s[k] for s in scores if s[k] is not None], dtype=float)
        means[k] = float(vals.mean()) if len(vals) else None
        ci[k] = [float(x) for x in np.percentile(cluster_bootstrap(vals, resamples, seed), [2.5, 97.5])] \
            if len(vals) else None
    return ScoreSummary(label=label, n=len(replies), unparseable=sum(s[OVERALL] is None for s in scores),
                        means=means, ci=ci, scores=scores, replies=replies)
