"""An evaluation through `--endpoint` against a real `medscale serve` process that dies mid-run: retries with backoff,
then one line and exit 1; run again with the server back, it continues from the answers it kept and ends with the
uninterrupted run's result. The API key, read from the environment, reaches no file, registry row or log line."""
from __future__ import annotations

import json
import threading

from conftest import cli
from test_serve import served

KEY = "sk-medscale-serve-never-kept"


def _kept(out) -> int:
    return sum(p.read_text(encoding="utf-8").count("\n") for p in out.glob("generations-*.jsonl"))


def _outcomes(stdout: str) -> list:
    (res,) = json.loads(stdout)["results"]
    return [(o["id"], o["chosen"], [(s["sample"], s["chosen"]) for s in o["samples"]]) for o in res["outcomes"]]


def test_a_server_killed_mid_evaluation_is_one_line_and_the_rerun_continues(tiny_model_dir, eval_data, tmp_path,
                                                                          monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    bench = tmp_path / "six.jsonl"
    bench.write_text("".join(eval_data["mcq"].read_text(encoding="utf-8").splitlines(keepends=True)[:6]),
                     encoding="utf-8")

    def evaluate(out, url):
        return cli("eval", str(tiny_model_dir), "--bench", str(bench), "--mode", "generate", "--n-samples", "2",
                   "--temperature", "0.8", "--seed", "3", "--max-new-tokens", "8", "--endpoint", url,
                   "--concurrency", "1", "--retries", "2", "--out", str(out), "--json")

    with served(tiny_model_dir, "--name", "tiny") as (proc, url):
        whole = evaluate(tmp_path / "whole", url)

        def kill_after_two_answers():
            while _kept(tmp_path / "cut") < 2:
                threading.Event().wait(0.02)
            proc.kill()

        killer = threading.Thread(target=kill_after_two_answers)
        killer.start()
        cut = evaluate(tmp_path / "cut", url)
        killer.join()
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert cut.returncode == 1 and "Traceback" not in cut.stderr
    said = [ln for ln in cut.stderr.splitlines() if ln.startswith("medscale:")]
    assert len(said) == 1 and said[0].startswith("medscale: failed: endpoint ") and "failed 3 times" in said[0], said
    assert all(f"retry {i}/2" in caplog.text + cut.stderr for i in (1, 2))
    kept = _kept(tmp_path / "cut")
    assert 2 <= kept < 12
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with served(tiny_model_dir, "--name", "tiny", port=port):  # the server back where it was
        rerun = evaluate(tmp_path / "cut", url)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    generation = json.loads(rerun.stdout)["results"][0]["generation"]
    assert (generation["cached"], generation["generated"]) == (kept, 12 - kept)
    assert _outcomes(rerun.stdout) == _outcomes(whole.stdout)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]  # MEDSCALE_HOME (the registry) is tmp_path/home
    written = b"".join(p.read_bytes() for p in files).decode("utf-8", "replace")
    assert any(p.name == "registry.db" for p in files)  # the results were stored, without the key
    assert KEY not in written + whole.stdout + whole.stderr + cut.stderr + rerun.stderr + caplog.text
