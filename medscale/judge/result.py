"""A judgement as it is stored (judge.json) and shown (judge.md, judge.html): the rates, the intervals, the verdict,
each side's degeneration counts, and everything that makes it reproducible: the prompt templates, the judge model
(its backend and the served name) and its settings with their sources, every judge reply."""
from __future__ import annotations

from pydantic import Field

from medscale.eval.result import _Model
from medscale.eval.stats import wilson
from medscale.judge.protocol import PairJudgement, PairwiseSummary, ScoreSummary, verdict_line
from medscale.judge.rubric import CRITERIA, OVERALL
from medscale.markdown import md_cell, md_text

_NAMES = {c.key: f"{c.en} ({c.zh})" for c in CRITERIA}


class Side(_Model):
    label: str
    source: dict
    answers: list[str]  # per question, as generated (think block included) or as the answer file has it


class JudgeResult(_Model):
    mode: str  # pairwise | score
    sides: list[Side]
    questions: list[dict]
    degeneration: dict[str, dict] = Field(description="each side's degeneration counts (medscale.eval.degenerate)")
    degeneration_verdict: dict | None = Field(None, description="B against A (two sides): DEGENERATE when flagged")
    templates: dict
    rubric_language: str
    asked: dict = Field(description="the generation flags the sides were asked with")
    judge: dict | None = None  # ref, label, backend, settings, sources, fingerprint, throughput
    pairs: list[PairJudgement] = Field(default_factory=list)
    pairwise: PairwiseSummary | None = None
    scores: list[ScoreSummary] = Field(default_factory=list)
    calibration: bool = False
    warnings: list[str] = Field(default_factory=list)
    verdict: str = ""

    def finished(self) -> "JudgeResult":
        self.verdict = self._verdict()
        return self

    def _verdict(self) -> str:
        labels = [s.label for s in self.sides]
        degen = self.degeneration_verdict or {}
        flag = "; DEGENERATE: " + degen["line"] if degen.get("flagged") else ""
        if self.judge is None:
            return "no judge: " + (degen.get("line") or "; ".join(
                f"{k}: degenerate {v['degenerate']}/{v['n']}" for k, v in self.degeneration.items()))
        if self.calibration and self.pairwise:
            s, o = self.pairwise, self.pairwise.overall
            low, high = wilson(o.win, o.n)
            agree = f"{100 * o.win / o.n:.0f}%, 95% CI {100 * low:.0f}-{100 * high:.0f}%" if o.n else "–"
            consistency = f"{100 * s.position_consistency:.0f}%" if s.position_consistency is not None else "–"
            return (f"judge {self.judge['label']} agrees with the labels on {o.win} of {o.n} read pairs ({agree}; "
                    f"{o.tie} ties, {o.loss} against); position consistency {consistency}; {o.unparseable} of "
                    f"{s.n_questions} pairs unparseable")
        if self.pairwise:
            return verdict_line(self.pairwise, labels[0], labels[1]) + flag
        ranked = sorted(self.scores, key=lambda s: -(s.means[OVERALL] or 0))
        return "overall score: " + " > ".join(
            f"{s.label} {s.means[OVERALL]:.1f}" if s.means[OVERALL] is not None else f"{s.label} (unread)"
            for s in ranked) + f" ({sum(s.unparseable for s in self.scores)} unparseable replies)"

    # ------------------------------------------------------------------ views

    def preference_rows(self) -> list[list[str]]:
        """criterion | win | tie | loss | unparseable | net (95% CI) | verdict, B against A."""
        rows = [["criterion", "win", "tie", "loss", "unparseable", "net (95% CI)", "verdict"]]
        if not self.pairwise:
            return rows
        prefs = {**self.pairwise.criteria, OVERALL: self.pairwise.overall}
        for key, p in prefs.items():
            rate = (lambda k: f"{100 * k / p.n:.0f}%" if p.n else "–")
            rows.append([_NAMES[key], rate(p.win), rate(p.tie), rate(p.loss), str(p.unparseable),
                         f"{100 * p.net:+.1f} ({100 * p.ci_low:+.1f} to {100 * p.ci_high:+.1f})", p.verdict])
        return rows

    def score_rows(self) -> list[list[str]]:
        rows = [["model"] + [_NAMES[c.key] for c in CRITERIA] + ["unparseable"]]
        for s in self.scores:
            rows.append([s.label] + [f"{s.means[c.key]:.1f} ({s.ci[c.key][0]:.1f}-{s.ci[c.key][1]:.1f})"
                                     if s.means[c.key] is not None else "–" for c in CRITERIA] + [str(s.unparseable)])
        return rows

    def degeneration_rows(self) -> list[list[str]]:
        kinds = ("looping", "unclosed_think", "empty_answer", "wrong_language", "length_off")
        rows = [["side", "degenerate"] + [k.replace("_", " ") for k in kinds]]
        for label, c in self.degeneration.items():
            rows.append([label, f"{c['degenerate']}/{c['n']}"] + ["–" if c.get(k) is None else str(c[k])
                                                                  for k in kinds])
        return rows

    def notes(self) -> list[str]:
        """The lines beside the tables: judge and settings, position consistency, length bias, warnings."""
        out = list(self.warnings)
        if self.judge:
            j = self.judge
            out.append(f"judge: {j['label']} ({j['backend'].get('backend')}), settings " +
                       ", ".join(f"{k}={v}" for k, v in j["settings"].items()) +
                       (f"; {j['replies_per_minute']} replies/minute" if j.get("replies_per_minute") else ""))
        if self.pairwise:
            s, b = self.pairwise, self.pairwise.length_bias
            pc = f"{100 * s.position_consistency:.0f}%" if s.position_consistency is not None else "–"
            out.append(f"position consistency: {pc} ({s.order_dependent} order-dependent verdicts counted as ties); "
                       f"unparseable judge replies: {s.unparseable_replies} of {s.replies}")
            r = f"{b.r:+.2f}" if b.r is not None else "–"
            out.append(f"length bias: correlation of winning with answer length r={r}; the longer answer won "
                       f"{b.longer_won} of {b.decisive} decisive questions")
        if self.degeneration_verdict:
            out.append(self.degeneration_verdict["line"])
        return out

    def to_markdown(self) -> str:
        title = "Judge calibration" if self.calibration else "Judgement"
        out = [f"## {title}: {md_text(' vs '.join(s.label for s in self.sides))}", "", f"**{md_text(self.verdict)}**",
               ""]
        out += _table(self.preference_rows() if self.mode == "pairwise" else self.score_rows())
        out += ["", *(f"- {md_text(n)}" for n in self.notes()), "", "### Degeneration", ""]
        out += _table(self.degeneration_rows())
        return "\n".join(out) + "\n"

    def to_html(self) -> str:
        from medscale.html import render

        return render("judge.html", r=self, names=_NAMES,
                      table=self.preference_rows() if self.mode == "pairwise" else self.score_rows())


def _table(rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(map(md_cell, rows[0])) + " |", "|---|" + "---:|" * (len(rows[0]) - 1)] +
            ["| " + " | ".join(map(md_cell, r)) + " |" for r in rows[1:]])
