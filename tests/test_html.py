"""The HTML pages (report, compare) are Jinja2 templates with autoescape: text from users and their data (a job name,
a recipe description, a data record, a benchmark question, a model's answer) that holds markup is shown as typed in
a real headless chromium, and runs nothing there (no dialog opens). The control renders the same templates with
autoescape off and sees the dialogs, so the check can fail."""
from __future__ import annotations

import json

import jinja2
import pytest
from html_browser import dialogs

from conftest import cli

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=alert(1)>'


@pytest.fixture
def hostile_report(tmp_path):
    """A job named with markup, its recipe's description too, with a few logged steps, reported by `medscale report`."""
    from medscale.recipe import load_recipe
    from medscale.registry import JobSpec, MetricRow, Registry

    # the job's name in the registry carries markup (a recipe's own name may not: it is validated when read back)
    recipe = load_recipe("tiny-demo").model_copy(update={"description": f"recipe {ATTRIBUTE}"})
    spec = JobSpec(f"job {SCRIPT}", str(tmp_path / "run"), "local", recipe.to_yaml(), recipe.fingerprint())
    with Registry() as reg:
        job_id = reg.register(spec)
        reg.record_metrics(spec, [MetricRow.from_log(s, {"loss": 2.0 - s / 10, "learning_rate": 1e-3, "grad_norm": 1.0})
                                  for s in range(1, 5)])
    r = cli("report", str(job_id), "--out", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr
    return tmp_path / "report" / "report.html"


def test_report_page_shows_markup_in_names_as_text(hostile_report, tmp_path):
    seen, text = dialogs(hostile_report, tmp_path / "chr")
    assert seen == []
    assert f"job {SCRIPT}" in text and f"recipe {ATTRIBUTE}" in text  # shown as typed, not dropped


def _hostile_questions(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text(json.dumps({"id": "q1", "question": f"问题 {SCRIPT}", "reference": f"答案 {ATTRIBUTE}"}) + "\n"
                    + json.dumps({"id": "q2", "question": f"问题 {ATTRIBUTE}", "reference": f"答案 {SCRIPT}"}) + "\n",
                    encoding="utf-8")
    return path


def test_compare_page_shows_markup_in_questions_and_records_as_text(tiny_model_dir, tmp_path):
    out = tmp_path / "cmp"
    r = cli("compare", f"{ATTRIBUTE}={tiny_model_dir}", "--questions", str(_hostile_questions(tmp_path)),
            "--greedy", "--max-new-tokens", "2", "--no-think", "--out", str(out))
    assert r.returncode == 0, r.stderr
    seen, text = dialogs(out / "compare.html", tmp_path / "chr")
    assert seen == []
    assert all(t in text for t in (f"问题 {SCRIPT}", f"答案 {ATTRIBUTE}", f"问题 {ATTRIBUTE}", f"答案 {SCRIPT}"))


def _compare_with_hostile_answers():
    """A comparison whose model answered with markup, think block included (a model trained on poisoned data)."""
    from medscale.eval.compare import CompareAnswer, CompareModel, CompareQuestion, CompareResult

    answers = [CompareAnswer(question_id="q1", think=f"think {SCRIPT}", answer=f"answer {ATTRIBUTE}", tokens=3)]
    model = CompareModel(label=SCRIPT, base="/m", adapter=None, total_s=1, avg_s=1, total_tokens=3, avg_tokens=3,
                         tokens_per_s=3, answers=answers)
    return CompareResult(questions=[CompareQuestion(id="q1", prompt=SCRIPT, reference=ATTRIBUTE)], models=[model],
                         settings={"system": ATTRIBUTE})


def test_compare_page_shows_markup_in_answers_as_text(tmp_path):
    page = tmp_path / "compare.html"
    page.write_text(_compare_with_hostile_answers().to_html(), encoding="utf-8")
    seen, text = dialogs(page, tmp_path / "chr")
    assert seen == [] and f"answer {ATTRIBUTE}" in text


def test_the_check_sees_a_script_run_when_autoescape_is_off(tmp_path, monkeypatch):
    """The control: the same template without autoescape runs the payloads (both of them, in every place)."""
    import medscale.html

    raw = jinja2.Environment(loader=jinja2.PackageLoader("medscale", "templates"), autoescape=False)
    monkeypatch.setattr(medscale.html, "_environment", lambda: raw)
    page = tmp_path / "compare.html"
    page.write_text(_compare_with_hostile_answers().to_html(), encoding="utf-8")
    seen, _ = dialogs(page, tmp_path / "chr")
    assert len(seen) >= 4 and set(seen) == {"1"}
