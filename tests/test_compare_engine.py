"""compare and chat generate through the engine, in-process or through --endpoint (a real `medscale serve` process),
with eval's sampling flags; seed 003's table (time, tokens, tokens/s, answers) stays as it was, and an API key given
in the environment reaches no output."""
from __future__ import annotations

import json

from conftest import cli

FLAGS = ["--max-new-tokens", "6", "--no-think"]


def _answers(folder) -> list[list[str]]:
    return [[a["answer"] for a in m["answers"]] for m in json.loads((folder / "compare.json").read_text())["models"]]


def test_compare_through_an_endpoint_answers_as_in_process_and_keeps_the_table(mcq_job, served_mcq_job, tmp_path,
                                                                             monkeypatch):
    job, (_, url) = str(mcq_job[0]), served_mcq_job
    monkeypatch.setenv("OPENAI_API_KEY", "sk-medscale-never-written")
    r = cli("compare", f"tuned={job}", "--endpoint", url, "--limit", "3", "--greedy", *FLAGS,
            "--out", str(tmp_path / "cmp"))
    chat_served = cli("chat", "--endpoint", url, "-p", "高血压患者需要注意什么？", "--greedy", *FLAGS)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    local, remote = result["models"]
    assert local["backend"]["backend"].startswith("in-process") and remote["label"] == remote["backend"]["served_model"]
    assert remote["backend"]["server_version"].startswith("medscale-serve") and remote["base"] == url
    assert [a["answer"] for a in local["answers"]] == [a["answer"] for a in remote["answers"]]
    for m in (local, remote):
        assert m["total_tokens"] > 0 and m["tokens_per_s"] > 0 and m["total_s"] > 0 and len(m["answers"]) == 3
    assert result["settings"]["greedy"] is True and "tokens/s" in r.stdout and "| tuned |" in r.stdout
    chat_local = cli("chat", job, "-p", "高血压患者需要注意什么？", "--greedy", *FLAGS)
    assert chat_served.returncode == chat_local.returncode == 0 and chat_served.stdout == chat_local.stdout
    written = "".join(p.read_text() for p in (tmp_path / "cmp").iterdir()) + r.stdout + r.stderr + chat_served.stdout
    assert "sk-medscale-never-written" not in written


def test_compare_samples_reproducibly_by_seed(control_base, tmp_path):
    args = ["compare", f"base={control_base}", "--limit", "2", "--temperature", "0.9", "--top-k", "40", *FLAGS]
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert cli(*args, "--seed", seed, "--out", str(tmp_path / name)).returncode == 0
    assert _answers(tmp_path / "a") == _answers(tmp_path / "b") != _answers(tmp_path / "c")
    assert json.loads((tmp_path / "a" / "compare.json").read_text())["settings"]["seed"] == 3


def test_compare_or_chat_without_a_model_is_one_line(tmp_path):
    r = cli("compare", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "compare needs models" in r.stderr
    r = cli("chat")
    assert r.returncode == 2 and "chat needs one model" in r.stderr
