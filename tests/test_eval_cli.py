"""`medscale eval`, `compare` and `chat` end to end on tiny models (in-process through typer's CliRunner), bad input
through the CLI (exit 2, naming the file and the fix), the HTML page in a real headless browser, the recipe keys,
and eval data-parallel across two real processes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medscale.cli import app
from medscale.recipe import RecipeError, load_recipe

pytestmark = pytest.mark.slow
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_eval_json_is_one_object_and_against_gives_the_paired_verdict(control_base, mcq_job, eval_data, tmp_path):
    out = tmp_path / "res"
    r = cli("eval", mcq_job[0], "--bench", eval_data["mcq"], "--against", control_base, "--json", "--out", out,
            "--batch-size", 16)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    r = cli("eval", mcq_job[0], "--bench", eval_data["mcq"], "--against", control_base)  # Markdown  # the whole of stdout is one JSON object
    (tuned,), (base,) = report["results"], report["against"]
    assert tuned["acc"] >= 0.9 and tuned["model"]["adapter"] == str(mcq_job[0])
    assert tuned["model"]["base"] == str(control_base) and len(tuned["outcomes"]) == 40
    assert report["verdicts"][0]["verdict"] == "better" and report["verdicts"][0]["ci_low"] > 0
    assert json.loads((out / "eval.json").read_text())["verdicts"] == report["verdicts"]
    assert "-> BETTER" in (out / "eval.md").read_text()
    # beside "better": the run's own training data (from its recipe.resolved.yaml) holds every question
    assert report["verdicts"][0]["contamination"]["overlapping"] == 40 and "contamination: 40/40" in r.stdout


def test_eval_option_and_generate_modes_run_end_to_end(mcq_job, eval_data):
    r = cli("eval", mcq_job[0], "--bench", eval_data["mcq"], "--mode", "option", "--limit", 8, "--shots", 2, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"][0]
    assert res["n"] == 8 and res["shots"] == 2 and set(res["outcomes"][0]["scores"]) == {"A", "B", "C", "D"}
    assert any("no dev split" in n for n in res["notes"])
    r = cli("eval", mcq_job[0], "--bench", eval_data["mcq"], "--mode", "generate", "--limit", 6, "--think",
            "--think-budget", 4, "--max-new-tokens", 4, "--greedy", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"][0]
    assert res["mode"] == "generate" and res["n"] == 6
    assert res["unparseable"] == sum(o["chosen"] is None for o in res["outcomes"])
    parsed = [o for o in res["outcomes"] if o["chosen"] is not None]
    assert parsed and sum(o["ok"] for o in parsed) >= len(parsed) // 2  # it learned the letters; it says them


@pytest.mark.parametrize("case", ["unknown layout", "letter outside options", "empty file", "no weights"])
def test_bad_input_exits_2_naming_the_file_and_the_fix(tiny_model_dir, tmp_path, case):
    bench = tmp_path / "b.jsonl"
    model = tiny_model_dir
    if case == "unknown layout":
        bench.write_text(json.dumps({"q": "x", "opts": ["a", "b"], "key": "A"}) + "\n")
        want = ["b.jsonl:1", "fields found", "--question-field"]
    elif case == "letter outside options":
        bench.write_text(json.dumps({"question": "x", "A": "a", "B": "b", "answer": "D"}) + "\n")
        want = ["b.jsonl:1", "'D' is not among the options A-B", "--skip-bad"]
    elif case == "empty file":
        bench.write_text("")
        want = ["b.jsonl", "empty file"]
    else:
        bench.write_text(json.dumps({"question": "x", "A": "a", "B": "b", "answer": "A"}) + "\n")
        model = tmp_path / "broken"
        model.mkdir()
        shutil.copy(tiny_model_dir / "config.json", model)
        want = [str(model), "has no weights", "save_pretrained"]
    r = cli("eval", model, "--bench", bench, "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert all(w in r.stderr for w in want), r.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_model_references_resolve_to_base_and_adapter(control_base, mcq_job, tmp_path):
    """One resolver for every command that takes a model: an output dir, its checkpoint, a job name or id (an
    ambiguous name lists the candidates), a base + an adapter; what names nothing says what to give."""
    from medscale.jobs.client import sync_output_dir
    from medscale.jobs.resolve import ModelRefError, resolve
    from medscale.registry import Registry

    out = mcq_job[0]
    ref = resolve(str(out))
    assert (ref.base, ref.adapter, ref.system_prompt) == (control_base, out, None) and ref.job_name
    ckpt = resolve(str(out), checkpoint=96)
    assert ckpt.adapter == out / "checkpoint-96" and ckpt.label.endswith("@checkpoint-96")
    plain = resolve(str(control_base), adapter=str(out))
    assert (plain.base, plain.adapter) == (control_base, out)
    with pytest.raises(ModelRefError, match=r"--checkpoint 7: .* \(verified: 96\)"):
        resolve(str(out), checkpoint=7)
    with pytest.raises(ModelRefError, match="already is a tuned model"):
        resolve(str(out), adapter=str(tmp_path))
    with pytest.raises(ModelRefError, match="no folder and no job"):
        resolve(str(tmp_path / "nope"))
    reg = Registry()
    try:
        sync_output_dir(reg, out)
        job_id = reg.find(str(out))
        by_name = resolve(ref.job_name, registry=reg)
        assert (by_name.adapter, by_name.job_id) == (out, job_id)
        assert resolve(str(job_id), registry=reg).adapter == out
        twin = tmp_path / "twin"
        import shutil

        shutil.copytree(out, twin, ignore=shutil.ignore_patterns("checkpoint-*"))
        sync_output_dir(reg, twin)
        with pytest.raises(ModelRefError, match=rf"names 2 jobs .*id {job_id}: {out}"):
            resolve(ref.job_name, registry=reg)
    finally:
        reg.close()


def test_compare_writes_markdown_and_html_that_a_browser_renders(control_base, mcq_job, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "query": f"问题{i}：高血压患者需要注意什么？",
                                             "model_output": "低盐饮食，规律服药，监测血压。"}, ensure_ascii=False) + "\n"
                                 for i in range(3)), encoding="utf-8")
    out = tmp_path / "cmp"
    r = cli("compare", f"base={control_base}", f"tuned={control_base}+{mcq_job[0]}", "--questions", questions,
            "--greedy", "--max-new-tokens", 12, "--no-think", "--out", out)
    assert r.exit_code == 0, r.output
    result = json.loads((out / "compare.json").read_text())
    assert [m["label"] for m in result["models"]] == ["base", "tuned"]
    for m in result["models"]:
        assert m["total_tokens"] > 0 and m["tokens_per_s"] > 0 and m["rouge_l"] is not None
        assert len(m["answers"]) == 3 and all(0 <= a["rouge_l"] <= 1 for a in m["answers"])
    assert result["settings"]["greedy"] is True and "| tuned |" in r.stdout
    md = (out / "compare.md").read_text()
    assert "### 1. 问题0" in md and "**reference**" in md
    # greedy is reproducible: the same command gives the same answers
    again = tmp_path / "cmp2"
    cli("compare", f"base={control_base}", f"tuned={control_base}+{mcq_job[0]}", "--questions", questions,
        "--greedy", "--max-new-tokens", 12, "--no-think", "--out", again)
    assert ([a["answer"] for m in json.loads((again / "compare.json").read_text())["models"] for a in m["answers"]]
            == [a["answer"] for m in result["models"] for a in m["answers"]])
    _check_in_browser(out / "compare.html", tmp_path)


def _check_in_browser(page, tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("chromium is not installed")
    html = page.read_text(encoding="utf-8")
    assert "<script" not in html and "http" not in html.split("<body>")[1]  # self-contained: no assets to fetch
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chr'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert "<table class=\"summary\">" in dom and "tokens/s" in dom and ">tuned<" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, "--window-size=1200,900", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    assert len(colours) > 20  # text and table, not a blank page
    header_blue = (0xDB, 0xE9, 0xFF)  # the summary table's header cells
    assert sum(n for n, c in colours if c == header_blue) > 500


def test_chat_one_shot_and_interactive(mcq_job, control_base):
    r = cli("chat", mcq_job[0], "--prompt", "高血压患者需要注意什么？", "--max-new-tokens", 8, "--greedy", "--no-think")
    assert r.exit_code == 0 and r.stdout.strip(), r.output
    r = runner.invoke(app, ["chat", str(control_base), "--max-new-tokens", "6", "--think", "--think-budget", "3",
                            "--system-prompt", "你是医生"], input="你好\n/reset\n再见\n/exit\n")
    assert r.exit_code == 0, r.output
    assert r.stdout.count("you> ") == 4 and "(new conversation)" in r.stdout


def test_chat_session_keeps_history_without_reasoning(control_base):
    from medscale.eval.asking import local_backend
    from medscale.eval.chat import ChatSession
    from medscale.generate.settings import SamplingSettings
    from medscale.jobs.resolve import resolve

    backend = local_backend(resolve(str(control_base)), enable_thinking=True, batch_size=1)
    s = ChatSession(backend, SamplingSettings(do_sample=False, max_new_tokens=4, think_budget=2),
                    system_prompt="你是医生")
    first = s.ask("你好")
    assert first.tokens <= 2 + len(backend.close_ids) + 4  # think budget, the forced </think>, the answer
    s.ask("再问一个")
    assert [m["role"] for m in s.turns] == ["user", "assistant", "user", "assistant"]
    assert all("reasoning_content" not in m and "<think>" not in m["content"] for m in s.turns)


def test_recipe_generation_and_eval_keys():
    r = load_recipe("tiny-demo", ["eval.benchmarks=[cmmlu-med, {path: /data/x.jsonl, answer_field: key}]",
                                  "eval.benchmark_limit=50", "eval.shots=5", "eval.control=/data/c.jsonl",
                                  "eval.fail_on_regression=true", "generation.think_budget=256"])
    assert r.generation.temperature == 0.7 and r.generation.top_p == 0.9 and r.generation.max_new_tokens == 512
    assert r.eval.benchmarks[1].answer_field == "key" and r.eval.max_control_regression == 0.05
    for override, message in (("eval.benchmarks=[cmmlu-medd]", "did you mean 'cmmlu-med'"),
                              ("eval.fail_on_regression=true", "eval.fail_on_regression needs a control set"),
                              ("eval.benchmark_mode=logprob", "eval.benchmark_mode"),
                              ("generation.top_p=1.5", "generation.top_p")):
        with pytest.raises(RecipeError, match=message):
            load_recipe("tiny-demo", [override] + (["generation.enable_thinking=false", "generation.think_budget=9"]
                                                   if "top_p" in override else []))
    with pytest.raises(RecipeError, match="remove generation.think_budget or set generation.enable_thinking=true"):
        load_recipe("tiny-demo", ["generation.enable_thinking=false", "generation.think_budget=9"])


def test_eval_shards_questions_across_two_processes(tiny_model_dir, eval_data, tmp_path):
    """torchrun with 2 CPU processes (gloo): each scores half the questions; the gathered result equals one
    process's, question for question."""
    args = ["-m", "medscale.cli", "eval", str(tiny_model_dir), "--bench", str(eval_data["mcq"]), "--limit", "10",
            "--json"]
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    one = runner.invoke(app, [*args[2:], "--out", str(tmp_path / "one")])  # its own job: no cached scores to reuse
    sharded, single = json.loads(two.stdout)["results"][0], json.loads(one.stdout)["results"][0]
    assert sharded["processes"] == 2 and single["processes"] == 1
    assert [o["id"] for o in sharded["outcomes"]] == [o["id"] for o in single["outcomes"]]
    for a, b in zip(sharded["outcomes"], single["outcomes"]):
        assert a["chosen"] == b["chosen"] and a["scores"] == pytest.approx(b["scores"], abs=1e-3)
