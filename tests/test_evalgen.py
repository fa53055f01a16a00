"""`medscale eval --mode generate` on the generation engine (issue 22): k sampled answers a question, pass@1 with a
clustered interval, majority vote and agreement, the settings with the source of each (the model's own
generation_config.json included) and the backend that ran, answers kept as they finish so a SIGKILLed evaluation
resumes to the uninterrupted result, the paired verdict on sampled results, and any OpenAI-compatible server.

(pass@1 against a hand computation and the clustered interval against the unclustered one: tests/test_extract.py;
batch-independent seeded sampling in the engine: tests/test_generate.py.)"""
from __future__ import annotations

import json
import shutil
import signal

import pytest

from conftest import cli, own_home, run_cli
from test_serve import served

R1_DEFAULTS = {"do_sample": True, "temperature": 0.6, "top_p": 0.95}  # what R1-Distill's generation_config.json ships


def _args(model, bench, out, *extra) -> list[str]:
    return ["eval", str(model), "--bench", str(bench), "--mode", "generate", "--n-samples", "2", "--max-new-tokens",
            "8", "--batch-size", "2", "--out", str(out), "--json", *extra]


def _generations(out) -> dict:
    """(id, sample) -> text of every answer kept in an evaluation's folder."""
    found = {}
    for path in out.glob("generations-*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            found[(rec["id"], rec["sample"])] = rec["text"]
    return found


def _samples(report: dict) -> list:
    (res,) = report["results"]
    return [(o["id"], o["chosen"], [(s["sample"], s["status"], s["chosen"]) for s in o["samples"]])
            for o in res["outcomes"]], (res["acc"], res["sampled"]["pass1"], res["sampled"]["majority_acc"])


@pytest.fixture(scope="module")
def r1_like(tiny_model_dir, tmp_path_factory):
    """The tiny model with the sampling defaults R1-Distill ships in its generation_config.json."""
    folder = tmp_path_factory.mktemp("r1like") / "tiny-r1"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    (folder / "generation_config.json").write_text(json.dumps({**config, **R1_DEFAULTS}), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def four(eval_data, tmp_path_factory):
    """Four questions of the shared set (no --limit: --seed then changes only the samples, not the questions)."""
    path = tmp_path_factory.mktemp("four") / "four.jsonl"
    path.write_text("".join(eval_data["mcq"].read_text(encoding="utf-8").splitlines(keepends=True)[:4]),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def uninterrupted(r1_like, four, tmp_path_factory):
    """One generate evaluation run to its end: (report, its folder, its stderr)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    with own_home(root):
        r = cli(*_args(r1_like, four, root / "out"))
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout), root / "out", r.stderr


def test_generate_mode_gives_pass_at_1_majority_agreement_and_where_each_setting_came_from(uninterrupted):
    report, out, stderr = uninterrupted
    (res,) = report["results"]
    s, g = res["sampled"], res["generation"]
    assert (s["n"], s["k"], len(res["outcomes"])) == (4, 2, 4)
    assert all(len(o["samples"]) == 2 for o in res["outcomes"])
    assert res["acc"] == s["pass1"] and (res["ci_low"], res["ci_high"]) == (s["ci_low"], s["ci_high"])
    assert s["over_budget"] + s["no_answer"] == sum(x["status"] != "ok" for o in res["outcomes"] for x in o["samples"])
    # the model's own defaults, said as such; the flags given, as the command line's
    assert (g["settings"]["temperature"], g["settings"]["top_p"], g["settings"]["n_samples"]) == (0.6, 0.95, 2)
    assert g["sources"]["temperature"] == "generation_config.json" and g["sources"]["n_samples"] == "cli"
    assert g["sources"]["seed"] == "default" and "temperature from generation_config.json" in g["line"]
    assert g["backend"]["backend"] == "in-process padded (eager decode)" and (g["generated"], g["cached"]) == (8, 0)
    assert g["line"] in stderr  # printed before the model loads
    md = (out / "eval.md").read_text(encoding="utf-8")
    assert "pass@1" in md and "majority vote" in md and "no extractable answer" in md and g["line"] in md
    assert len(_generations(out)) == 8  # every answer kept in the job's folder


def test_seeded_sampling_reproduces_exactly_through_eval(uninterrupted, r1_like, four, tmp_path):
    report, out, _ = uninterrupted
    again = cli(*_args(r1_like, four, tmp_path / "again"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert _generations(tmp_path / "again") == _generations(out)
    assert _samples(json.loads(again.stdout)) == _samples(report)
    other = cli(*_args(r1_like, four, tmp_path / "seed1", "--seed", "1"))
    assert other.returncode == 0, other.stdout + other.stderr
    differ = sum(_generations(tmp_path / "seed1")[k] != text for k, text in _generations(out).items())
    assert differ > 4 and json.loads(other.stdout)["results"][0]["generation"]["sources"]["seed"] == "cli"


def test_a_sigkilled_generate_evaluation_resumes_with_the_uninterrupted_result(uninterrupted, r1_like, four,
                                                                               tmp_path):
    report, out, _ = uninterrupted
    killed_out = tmp_path / "killed"
    killed = run_cli(*_args(r1_like, four, killed_out),
                     env={"MEDSCALE_FAILPOINT": "eval_generated@3"})  # SIGKILL once 3 answers are kept
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert len(_generations(killed_out)) == 3 and not (killed_out / "eval.json").exists()
    resumed = cli(*_args(r1_like, four, killed_out))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rep = json.loads(resumed.stdout)
    g = rep["results"][0]["generation"]
    assert (g["cached"], g["generated"]) == (3, 5)  # only what the kill left undone
    assert any("3 of 8 answers generated by an earlier attempt" in n for n in rep["results"][0]["notes"])
    assert _samples(rep) == _samples(report) and _generations(killed_out) == _generations(out)
    job = json.loads(cli("jobs", "show", str(killed_out), "--json").stdout)
    assert [a["status"] for a in job["attempt_list"]] == ["lost", "completed"]


def test_the_paired_verdict_on_sampled_results_pairs_by_question_and_is_stored(mcq_job, eval_data, tmp_path):
    """README's R1-style command on a trained tiny job against its base: each question's pass rate over its 4
    samples is what pairs, and the stored results pair again the same way (medscale.eval.stored)."""
    from medscale.eval.stored import paired
    from medscale.registry import Registry

    r = cli("eval", str(mcq_job[0]), "--bench", str(eval_data["mcq"]), "--against", "base", "--mode", "generate",
            "--n-samples", "4", "--temperature", "0.6", "--top-p", "0.95", "--think", "--think-budget", "4",
            "--max-new-tokens", "4", "--limit", "6", "--out", str(tmp_path / "vs"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    (tuned,), (base,), (v,) = report["results"], report["against"], report["verdicts"]
    assert tuned["sampled"]["k"] == 4 and v["n"] == 6  # questions, not 24 answers
    assert (v["acc_a"], v["acc_b"]) == pytest.approx((base["sampled"]["pass1"], tuned["sampled"]["pass1"]))
    assert tuned["generation"]["sources"]["temperature"] == "cli"
    with Registry() as reg:
        stored = {r.role: r for r in reg.results(outcomes=True)}
    assert stored["tuned"].figures["sampled"]["pass1"] == tuned["sampled"]["pass1"]
    again = paired(stored["base"], stored["tuned"])
    assert (again.n, again.acc_a, again.acc_b, again.diff) == (v["n"], v["acc_a"], v["acc_b"], v["diff"])


@pytest.mark.parametrize("extra, says", [
    (["--mode", "generate", "--n-samples", "2", "--greedy"], "identical answers"),
    (["--temperature", "0.5"], "for --mode generate"),
    (["--mode", "generate", "--endpoint", "http://127.0.0.1:9/v1", "--against", "base"], "--endpoint serves one"),
])
def test_bad_generation_options_are_one_line_and_nothing_is_written(tiny_model_dir, eval_data, tmp_path, extra, says):
    out = tmp_path / "never"
    r = cli("eval", str(tiny_model_dir), "--bench", str(eval_data["mcq"]), "--out", str(out), *extra)
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_a_reasoning_model_is_asked_with_everything_in_the_user_turn(tiny_tokenizer, eval_data):
    """DeepSeek's guidance for R1: no system prompt; a system prompt opens the question's user turn instead."""
    from medscale.eval.bench import load_benchmark
    from medscale.eval.score import generate_messages

    bench = load_benchmark(str(eval_data["mcq"]))
    q = bench.questions[0]
    r1 = generate_messages(bench, q, 0, "你是医生", reasoning=True)
    assert [m["role"] for m in r1] == ["user"] and r1[0]["content"].startswith("你是医生\n\n")
    plain = generate_messages(bench, q, 0, "你是医生", reasoning=False)
    assert [m["role"] for m in plain] == ["system", "user"]


def test_an_endpoint_evaluation_matches_the_in_process_one_and_records_the_server(uninterrupted, r1_like, four,
                                                                                    tmp_path):
    """The same seeded samples from `medscale serve` as in-process, the served model and the server's version kept
    with the result, the key read from the variable --api-key-env names and kept nowhere (a dead server and the
    default variable: tests/test_serve_endpoint.py)."""
    report, out, _ = uninterrupted
    with served(r1_like, "--name", "tiny") as (_, url):
        r = cli(*_args(r1_like, four, tmp_path / "served", "--endpoint", url, "--api-key-env", "EVALGEN_KEY",
                       "--concurrency", "3"), env={"EVALGEN_KEY": "sk-evalgen-never-shown"})
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    b = rep["results"][0]["generation"]["backend"]
    assert b["backend"] == "endpoint" and b["served_model"] == "tiny" and b["server_version"].startswith("medscale")
    assert _samples(rep) == _samples(report) and _generations(tmp_path / "served") == _generations(out)
    kept = "".join(p.read_text(encoding="utf-8", errors="replace") for p in (tmp_path / "served").rglob("*")
                   if p.is_file())
    assert "sk-evalgen-never-shown" not in kept + r.stdout + r.stderr and "EVALGEN_KEY" in kept
