"""Served equals trained (`medscale eval JOB --parity URL`): the same questions asked greedily in-process and through
an endpoint, answer for answer.

A deployment that answers worse than the training framework's chat usually serves another chat template, other think
handling or another generation config. Greedy decoding through the same template gives the same answers wherever the
numerics agree, so the share of identical answers and of identical extracted choices measures what the server changed.
The check fails when the share of questions whose extracted choice differs exceeds the threshold (choices, not texts:
another kernel may reword a long greedy answer without changing what it concludes), naming the first that differ.
Think handling: letter and option modes answer without thinking on both sides (as eval prompts them); generate mode
leaves it to each side, the job's own in-process and the server's own through the endpoint, so a server that thinks
differently shows.
"""
from __future__ import annotations

from pydantic import Field

from medscale.data.chat import render_prompt
from medscale.errors import RunFailed
from medscale.eval.bench import Benchmark
from medscale.eval.extract import extract_choice
from medscale.eval.prompt import mcq_messages
from medscale.eval.result import _Model
from medscale.generate.engine import Request, generate
from medscale.generate.settings import SamplingSettings

SHOWN = 5  # differing questions named in the report


class ParityFailed(RunFailed):
    """The endpoint's answers differ from the in-process ones on more questions than the threshold allows."""


class Difference(_Model):
    id: str
    in_process: str
    served: str
    in_process_choice: list[str] | None
    served_choice: list[str] | None


class ParityReport(_Model):
    model: dict
    endpoint: dict = Field(description="the endpoint backend's record: url, served model, server version")
    settings: dict
    questions: int
    same_answers: float = Field(description="share of questions answered with the identical text")
    same_choices: float = Field(description="share of questions whose extracted choice is identical")
    threshold: float = Field(description="the largest share of differing choices that passes")
    passed: bool
    differing: list[Difference] = Field(description=f"the first {SHOWN} questions whose choice or text differs")

    def to_markdown(self) -> str:
        e = self.endpoint
        lines = [f"## Parity: {self.model.get('label')} in-process vs {e.get('served_model')} at {e.get('url')} "
                 f"({e.get('server_version')})", "",
                 f"- questions: {self.questions}, greedy, max_new_tokens={self.settings.get('max_new_tokens')}",
                 f"- identical answers: {self.same_answers:.1%}",
                 f"- identical extracted choices: {self.same_choices:.1%} (fails below {1 - self.threshold:.1%})",
                 f"- verdict: {'PASSED' if self.passed else 'FAILED'}"]
        for d in self.differing:
            lines.append(f"- differs: {d.id}: in-process {d.in_process_choice} {d.in_process[:60]!r} / served "
                         f"{d.served_choice} {d.served[:60]!r}")
        return "\n".join(lines) + "\n"

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise ParityFailed(self.failure())

    def failure(self) -> str:
        ids = ", ".join(d.id for d in self.differing if d.in_process_choice != d.served_choice)
        return (f"parity: {1 - self.same_choices:.1%} of {self.questions} questions chose differently through "
                f"{self.endpoint.get('url')} than in-process (threshold {self.threshold:.1%}; first: {ids}): the "
                f"server's chat template, think handling or generation config is not the job's: serve the job itself "
                f"(`medscale serve JOB`) or give the server its tokenizer folder and generation config")


def parity_requests(benches: list[Benchmark], mode: str, shots: int, system_prompt: str | None):
    """(request, options) per question of every benchmark, asked as eval asks it."""
    return [(Request(q.id, mcq_messages(q, b.language, mode, b.shots_for(q, shots), system_prompt)),
             q.options) for b in benches for q in b.questions]


def check_parity(ref, benches: list[Benchmark], url: str, *, mode: str, shots: int = 0,
                 system_prompt: str | None = None, settings: SamplingSettings, threshold: float,
                 enable_thinking: bool | None = None, batch_size: int | None = None,
                 dtype: str = "auto") -> ParityReport:
    """`enable_thinking` (generate mode): decided by the caller and said to both sides; None leaves it to each."""
    from medscale.eval.asking import job_thinking, local_backend, release
    from medscale.generate.endpoint import EndpointBackend

    asked = parity_requests(benches, mode, shots, system_prompt)
    requests = [r for r, _ in asked]
    forced = False if mode != "generate" else enable_thinking  # letter/option: no thinking, said to both sides
    local = local_backend(ref, enable_thinking=forced, dtype=dtype, batch_size=batch_size)
    thinking = forced if forced is not None else job_thinking(ref)
    opened = [render_prompt(local.tok, r.messages, thinking).rstrip().endswith("<think>") for r in requests]
    mine = generate(requests, settings, local)
    release(local)
    served = generate(requests, settings, EndpointBackend(url, enable_thinking=forced))
    same_text = same_choice = 0
    differing = []
    for (r, options), a, b, think in zip(asked, mine.generations, served.generations, opened):
        ca, cb = (extract_choice(g.text, options, thinking=think).letters for g in (a, b))
        same_text += a.text == b.text
        same_choice += ca == cb
        if a.text != b.text or ca != cb:
            differing.append(Difference(id=r.id, in_process=a.text, served=b.text, in_process_choice=ca,
                                        served_choice=cb))
    differing.sort(key=lambda d: d.in_process_choice == d.served_choice)  # a changed choice first, then text
    n = len(requests)
    share = same_choice / n if n else 1.0
    return ParityReport(model=ref.to_dict(), endpoint=served.backend, settings=settings.model_dump(), questions=n,
                        same_answers=round(same_text / n if n else 1.0, 4), same_choices=round(share, 4),
                        threshold=threshold, passed=1 - share <= threshold, differing=differing[:SHOWN])


def run_parity(model_ref: str, benchmarks: list, url: str, *, adapter: str | None = None,
               checkpoint: int | None = None, mode: str = "letter", shots: int = 0, limit: int | None = None,
               seed: int = 0, data_dir: str | None = None, skip_bad: bool | None = None, max_bad: float | None = None,
               dedupe: bool = False, system_prompt: str | None = None, recipe_file: str | None = None,
               max_new_tokens: int | None = None, think_budget: int | None = None,
               enable_thinking: bool | None = None, batch_size: int | None = None,
               threshold: float = 0.02) -> ParityReport:
    """`medscale eval MODEL --parity URL`: the questions `medscale eval` would score, greedily, both ways."""
    from medscale.eval.asking import sampling
    from medscale.eval.run import load_benchmarks
    from medscale.jobs.resolve import resolve

    benches = load_benchmarks(benchmarks, data_dir, limit, seed, skip_bad=skip_bad, max_bad=max_bad, dedupe=dedupe,
                              shots=shots)
    ref = resolve(model_ref, checkpoint=checkpoint, adapter=adapter)
    settings = sampling({"max_new_tokens": max_new_tokens, "think_budget": think_budget}, recipe_file=recipe_file,
                        ref=ref, greedy=True).settings
    return check_parity(ref, benches, url, mode=mode, shots=shots, settings=settings, threshold=threshold,
                        enable_thinking=enable_thinking,
                        system_prompt=system_prompt if system_prompt is not None else ref.system_prompt,
                        batch_size=batch_size)
