"""Reports, comparisons and leaderboards say only what was measured (issue 20): a step a run never reached is "–",
not its last value carried forward; a worse fine-tune is marked with a word, not only a colour; an --out that is a
file is one line before any work; text from the data is inert in every Markdown file; sweep definitions that would
silently run the wrong trials are refused or read as meant."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import cli

EVIL = "<img src=x onerror=alert(1)><script>alert(2)</script>"


def _registry():
    from medscale.registry import Registry

    return Registry()


def _log(reg, name: str, out, last: int, loss0: float, every: int = 5) -> None:
    """A run's metrics as it would have logged them: loss every `every` steps to `last`, eval at 0 and at the end."""
    from medscale.registry import JobSpec, MetricRow

    spec = JobSpec(name, str(out), "local", "model: {path: /models/base}\n", "fp")
    rows = [MetricRow(s, loss=loss0 - 0.01 * s, learning_rate=1e-4, grad_norm=1.0 + s / 100)
            for s in range(every, last + 1, every)]
    reg.record_metrics(spec, rows + [MetricRow(0, eval_loss=loss0), MetricRow(last, eval_loss=loss0 - 0.01 * last)])


@pytest.fixture
def two_lengths(tmp_path):
    """A run that stopped at step 20 (named with HTML in it: found by its output dir) and one that went to 100, in
    this test's registry."""
    reg = _registry()
    try:
        _log(reg, EVIL, tmp_path / "short", 20, 3.0)
        _log(reg, "long", tmp_path / "long", 100, 2.0)
    finally:
        reg.close()
    return tmp_path


# --------------------------------------------------------------------------- item 3: no invented numbers


def test_a_step_a_run_never_reached_is_a_dash_with_no_change(two_lengths):
    out = two_lengths / "report"
    r = cli("report", str(two_lengths / "short"), "long", "--out", str(out), "--steps", "10,20,50,100")
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    vs = f"long vs {EVIL} %"
    by_step = {row["step"]: row for row in rep["loss"]}
    assert by_step[20][EVIL] == pytest.approx(3.0 - 0.2) and by_step[20][vs] is not None  # reached: measured
    for step in (50, 100):
        assert by_step[step][EVIL] is None and by_step[step][vs] is None, "not reached: no value, no change"
        assert by_step[step]["long"] == pytest.approx(2.0 - 0.01 * step)
    evals = {row["step"]: row for row in rep["eval_loss"]}
    assert evals[100][EVIL] is None and evals[100]["long"] == pytest.approx(1.0)
    stage = next(s for s in rep["stages"] if s["run"] == EVIL and s["stage"] == "20-50")
    assert stage["loss_start"] == pytest.approx(2.8) and stage["loss_end"] is None and stage["change_pct"] is None
    md = (out / "report.md").read_text()
    assert "| 100 | – | 1.0000 | – |" in md, "Markdown: a dash for the value and for the change"
    page = (out / "report.html").read_text()
    assert "<tr><td>100</td><td>–</td><td>1.0000</td><td>–</td></tr>" in page
    assert re.search(r"reached step 20: no value at step 50, 100", r.stdout), r.stdout  # the terminal says so too
    assert "%" not in md.split("| 100 |")[1].splitlines()[0]


# --------------------------------------------------------------------------- item 25: inert Markdown


def test_html_from_the_data_is_escaped_in_report_md(two_lengths):
    out = two_lengths / "report"
    assert cli("report", str(two_lengths / "short"), "long", "--out", str(out)).returncode == 0
    md = (out / "report.md").read_text()
    assert "<img" not in md and "<script" not in md
    assert "&lt;img src=x onerror=alert(1)>&lt;script>alert(2)&lt;/script>" in md  # shown as typed, not run


def test_html_from_the_data_is_escaped_in_compare_md_and_eval_md():
    from medscale.eval.compare import CompareAnswer, CompareModel, CompareQuestion, CompareResult
    from medscale.eval.result import BenchResult, EvalReport, SubjectScore

    answer = CompareAnswer(question_id="1", think=EVIL, answer=EVIL, tokens=3)
    model = CompareModel(label=EVIL, base="b", adapter=None, total_s=1, avg_s=1, total_tokens=3, avg_tokens=3,
                         tokens_per_s=3, answers=[answer])
    compared = CompareResult(questions=[CompareQuestion(id="1", prompt=EVIL, reference=EVIL)], models=[model],
                             settings={"system_prompt": EVIL})
    bench = BenchResult(benchmark=EVIL, fingerprint="f", language="zh", mode="letter", shots=0, model={"label": EVIL},
                        n=1, correct=1, acc=1.0, ci_low=0.2, ci_high=1.0, notes=[EVIL],
                        subjects=[SubjectScore(subject=EVIL, n=1, correct=1, acc=1.0, ci_low=0.2, ci_high=1.0)])
    for md in (compared.to_markdown(), EvalReport(model={}, results=[bench]).to_markdown()):
        assert "<img" not in md and "<script" not in md and "&lt;script>" in md
    assert "<script" not in compared.to_html()  # as before: the page was already escaped


# --------------------------------------------------------------------------- item 7: --out checked first


def test_an_out_that_is_a_file_is_one_line_before_any_work(tmp_path):
    """Refused before the job or the models are even looked up (none of these exist): nothing else is said or
    written."""
    taken = tmp_path / "taken.md"
    taken.write_text("mine")
    r = cli("report", "no-such-job", "--out", str(taken))
    assert r.returncode == 2 and f"--out {taken}: it is a file" in r.stderr and "no-such-job" not in r.stderr
    below = cli("report", "no-such-job", "--out", str(taken / "sub"))
    assert below.returncode == 2 and f"{taken} is a file" in below.stderr
    c = cli("compare", "no-such-model", "--out", str(taken))
    assert c.returncode == 2 and f"--out {taken}: it is a file" in c.stderr and "no-such-model" not in c.stderr
    assert taken.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["taken.md"]


# --------------------------------------------------------------------------- item 4: WORSE is a word


def test_a_worse_trial_is_a_word_and_a_count_in_every_leaderboard_format(tmp_path):
    from medscale.registry import MetricRow
    from medscale.sweep.spec import plan_sweep, spec_from_recipe
    from medscale.sweep.tune import register, trial_spec

    plan = plan_sweep(*spec_from_recipe("tiny-demo", ["train.learning_rate=1e-3,0.3"], "words"))
    reg = _registry()
    try:
        register(reg, plan)
        for t, final in zip(plan.trials, (7.5, 28.8)):  # the second diverged: worse than its step-0 loss
            reg.record_metrics(trial_spec(t, plan.name), [MetricRow(0, eval_loss=8.0), MetricRow(20, eval_loss=final)])
    finally:
        reg.close()
    table = cli("sweep", "show", "words")  # not a terminal: no colour reaches the reader
    assert table.returncode == 0, table.stderr
    worse_row = next(ln for ln in table.stdout.splitlines() if "learning_rate_0.3" in ln and "trial" in ln)
    better_row = next(ln for ln in table.stdout.splitlines() if "learning_rate_1e-3" in ln)
    assert "WORSE" in worse_row and "WORSE" not in better_row and "better" in better_row
    assert "1 of 2 measured fine-tunes are worse than their own base: learning_rate_0.3" in table.stdout
    md = cli("sweep", "show", "words", "--md").stdout
    assert "**WORSE** 8.0000 -> 28.8000 (+260.0%): worse" in md and "1 of 2 measured" in md


# --------------------------------------------------------------------------- items 10 and 11: sweep definitions


def _sweep_file(tmp_path, **spec):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"name": "plain", **spec}), encoding="utf-8")
    return f


def test_a_plain_list_of_recipe_names_is_read_as_meant(tmp_path, medscale_home):
    f = _sweep_file(tmp_path, recipes=["tiny-demo"], grid={"train.learning_rate": [1e-3, 3e-3]})
    r = cli("sweep", "run", str(f), "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    trials = json.loads(r.stdout)["trials"]
    assert [t["recipe"] for t in trials] == ["tiny-demo", "tiny-demo"] and len({t["label"] for t in trials}) == 2


@pytest.mark.parametrize("args,message", [
    (["--random", "0"], r"--random 0: run a random N >= 1 of the cells, or leave --random out"),
    (["--max-concurrent", "0"], r"--max-concurrent 0: at least 1 trial at a time"),
    (["--grid", "train.learning_rate=1e-3,0.001"], r"grid train.learning_rate: 0.001 is given twice \(two identical "
                                                   r"trials\): drop the repeat"),
    (["--grid", "train.learning_rate=1e-3", "--grid", "train.learning_rate=3e-3"],
     r"--grid train.learning_rate is given twice: give all its values in one --grid train.learning_rate=value1"),
])
def test_sweep_flags_that_would_run_other_trials_than_asked_are_refused(medscale_home, args, message):
    r = cli("sweep", "run", "tiny-demo", "--grid", "adapter.r=4,8", *args, "--dry-run")
    assert r.returncode == 2 and re.search(message, r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not medscale_home.exists()


def test_a_tied_axis_whose_values_are_the_same_is_refused(tmp_path):
    from medscale.sweep.spec import SweepError, load_spec, plan_sweep

    f = _sweep_file(tmp_path, recipes=[{"recipe": "tiny-demo"}],
                    grid={"sched": {"a": {"train.learning_rate": 1e-3}, "b": {"train.learning_rate": 1e-3}}})
    with pytest.raises(SweepError, match=r"grid sched: a and b set the same values \(two identical trials\)"):
        plan_sweep(*load_spec(str(f)))
