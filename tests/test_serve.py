"""`medscale serve` as a real process (a trained tiny job, a free port): it answers as the job does in-process (its
adapter, chat template and think handling), stops cleanly on Ctrl-C, and `medscale eval JOB --parity URL` passes
against it and fails against a server of the same weights with another chat template."""
from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import urllib.request

import pytest
from conftest import cli

from medscale.generate.engine import Request, generate
from medscale.generate.serve import serving as served  # other tests import `served` from here
from medscale.generate.settings import SamplingSettings

QUESTIONS = [Request(f"q{i}", [{"role": "user", "content": f"病例{i}：高血压患者需要注意什么？"}]) for i in range(4)]
GREEDY = SamplingSettings(do_sample=False, max_new_tokens=8)
SAMPLED = SamplingSettings(n_samples=2, max_new_tokens=8, seed=5, temperature=0.9, top_k=40)


def _stop(proc) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    return err


def _texts(run) -> dict:
    return {(g.id, g.sample): g.text for g in run.generations}


@pytest.fixture(scope="module")
def job_ref(mcq_job):
    from medscale.jobs.resolve import resolve

    return resolve(str(mcq_job[0]))


def test_serve_answers_as_the_job_in_process_alone_or_batched_and_stops_on_ctrl_c(job_ref):
    """The served job (base + adapter through the shared loader, the job's tokenizer and template) gives the
    in-process engine's greedy answers and its seeded samples, whether its requests come one at a time or at once:
    concurrent greedy and sampled requests are generated in batches (the server's log says their sizes), one per
    group of settings; `ignore_eos` runs every request to max_tokens, as the in-process backend's; /v1/models names
    the job and its adapter; Ctrl-C exits 0 and frees the port."""
    from concurrent.futures import ThreadPoolExecutor

    from medscale.eval.asking import local_backend
    from medscale.generate.endpoint import EndpointBackend

    local = local_backend(job_ref, batch_size=4, mode="padded")
    want = [_texts(generate(QUESTIONS, settings, local)) for settings in (GREEDY, SAMPLED)]
    with served(job_ref.output_dir, "--batch-wait-ms", "100") as (proc, url):
        def ask(settings, concurrency=8, **kw):
            return generate(QUESTIONS, settings, EndpointBackend(url, concurrency=concurrency, **kw))

        alone = [_texts(ask(settings, concurrency=1)) for settings in (GREEDY, SAMPLED)]
        with ThreadPoolExecutor(2) as pool:  # greedy and sampled requests in flight together
            together = [_texts(run) for run in pool.map(ask, (GREEDY, SAMPLED))]
        forced, unforced = ask(GREEDY, ignore_eos=True), ask(GREEDY)
        endpoint = EndpointBackend(url)
        with urllib.request.urlopen(url + "/models") as r:
            listed = json.loads(r.read())["data"][0]
        err = _stop(proc)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert together == alone == want
    batches = [int(n) for n in re.findall(r"served a batch: (\d+) requests", err)]
    one_by_one = len(QUESTIONS) * (1 + SAMPLED.n_samples)
    assert batches[:one_by_one] == [1] * one_by_one and max(batches[one_by_one:]) > 1, batches
    assert any(g.finish == "stop" for g in unforced.generations), "no answer ends: the test cannot tell"
    local.ignore_eos = True
    assert _texts(forced) == _texts(generate(QUESTIONS, GREEDY, local))
    assert {(g.tokens, g.finish) for g in forced.generations} == {(GREEDY.max_new_tokens, "length")}
    assert proc.returncode == 0 and "stopped: interrupted (Ctrl-C)" in err and "Traceback" not in err
    assert endpoint.info["served_model"] == job_ref.label and endpoint.info["server_version"].startswith(
        "medscale-serve")
    assert listed["medscale"]["adapter"] == str(job_ref.adapter)
    with socket.socket() as s:  # the port is free again: nothing listens there (as a restarted server binds it)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_served_job_adds_its_system_prompt_and_think_handling(job_ref, tmp_path):
    """A job trained with a system prompt and thinking off: a request without a system turn is answered as the job
    answers with its system prompt, through its template with the empty think block (seeded samples: the tiny
    model's greedy letter does not move with the prompt, its sampled answers do)."""
    import yaml

    from medscale.eval.asking import local_backend
    from medscale.generate.endpoint import EndpointBackend
    from medscale.jobs.resolve import resolve

    copy = tmp_path / "job"
    shutil.copytree(job_ref.output_dir, copy)
    recipe = yaml.safe_load((copy / "recipe.resolved.yaml").read_text(encoding="utf-8"))
    recipe["data"]["system_prompt"] = "你是一名医生。"
    recipe["generation"]["enable_thinking"] = False
    (copy / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    ref = resolve(str(copy))
    system = [Request(r.id, [{"role": "system", "content": "你是一名医生。"}] + r.messages) for r in QUESTIONS]
    settings = SAMPLED.model_copy(update={"temperature": 1.0, "top_k": None, "max_new_tokens": 12})
    local = local_backend(ref, mode="padded")
    want, bare = (_texts(generate(asked, settings, local)) for asked in (system, QUESTIONS))
    with served(copy) as (proc, url):
        got = _texts(generate(QUESTIONS, settings, EndpointBackend(url)))
        with urllib.request.urlopen(url + "/models") as r:
            meta = json.loads(r.read())["data"][0]["medscale"]
    assert want != bare, "the system prompt changes nothing: the test cannot tell"
    assert got == want
    assert meta["enable_thinking"] is False and meta["system_prompt"] is True


# --------------------------------------------------------------------------- served equals trained: --parity


def _other_template(job_dir, tmp_path):
    """The job's folder with another runtime's generic chat template ("role: content" lines, as a hand-written
    serving template often is) in place of the one it was trained with."""
    copy = tmp_path / "other-template"
    shutil.copytree(job_dir, copy)
    (copy / "chat_template.jinja").write_text(
        "{%- for m in messages -%}{{ m.role }}: {{ m.content }}\n{%- endfor -%}"
        "{%- if add_generation_prompt -%}assistant: {%- endif -%}", encoding="utf-8")
    return copy


def test_parity_passes_against_medscale_serve_and_fails_against_another_template(mcq_job, served_mcq_job, eval_data,
                                                                                tmp_path):
    job, (_, url) = str(mcq_job[0]), served_mcq_job
    args = ["eval", job, "--bench", str(eval_data["mcq"]), "--limit", "12", "--max-new-tokens", "3"]
    ok = cli(*args, "--parity", url, "--json")
    thinking_said = cli(*args, "--mode", "generate", "--no-think", "--parity", url)  # said to both sides
    assert thinking_said.returncode == 0 and "identical answers: 100.0%" in thinking_said.stdout, thinking_said.stderr
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["questions"] == 12 and report["same_answers"] == report["same_choices"] == 1.0
    assert report["passed"] and report["endpoint"]["server_version"].startswith("medscale-serve")
    with served(_other_template(mcq_job[0], tmp_path)) as (_, url):
        bad = cli(*args, "--parity", url)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    said = [ln for ln in bad.stderr.splitlines() if ln.startswith("medscale:")]  # transformers' load bar aside
    assert len(said) == 1 and said[0].startswith("medscale: failed: parity: ") and "first: mcq40:" in said[0], said
    assert "Traceback" not in bad.stderr
    assert "identical extracted choices" in bad.stdout and "FAILED" in bad.stdout


def test_with_vllm_installed_the_job_is_served_with_its_tokenizer_generation_config_and_thinking(job_ref, tmp_path):
    """The `vllm serve` command medscale serve runs where vLLM is installed (built as data: vLLM needs a GPU): the
    adapter as the LoRA module clients name, the folder with the job's tokenizer (its chat template) and generation
    config, the job's think handling as the default chat-template kwargs."""
    from transformers import AutoTokenizer, GenerationConfig

    from medscale.cli.serve import vllm_command
    from medscale.export.merge import _write_tokenizer_and_generation

    _write_tokenizer_and_generation(job_ref, tmp_path)
    cmd = vllm_command(job_ref, tmp_path, "tuned", "127.0.0.1", 8000, thinking=False)
    assert "--enable-lora" in cmd and cmd[cmd.index("--lora-modules") + 1] == f"tuned={job_ref.adapter}"
    assert cmd[cmd.index("--model") + 1] == str(job_ref.base)
    assert cmd[cmd.index("--tokenizer") + 1] == cmd[cmd.index("--generation-config") + 1] == str(tmp_path)
    assert json.loads(cmd[cmd.index("--default-chat-template-kwargs") + 1]) == {"enable_thinking": False}
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == \
        AutoTokenizer.from_pretrained(job_ref.adapter).chat_template
    assert GenerationConfig.from_pretrained(tmp_path).temperature == job_ref.recipe.generation.temperature


def test_a_port_in_use_is_one_line_before_the_model_loads(tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = cli("serve", str(tiny_model_dir), "--port", str(taken.getsockname()[1]))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("medscale: error: --host 127.0.0.1 --port ") and "cannot listen there" in r.stderr
