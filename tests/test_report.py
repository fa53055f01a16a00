"""`medscale report`: the tables hold the numbers of the trainer states they were built from (recomputed here from
trainer_state.json), the curves are drawn, and the HTML page shows both in a real headless browser."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

import pytest

from conftest import cli


def _state(out):
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def _last_at(history, key, step):
    vals = [h[key] for h in history if key in h and h["step"] <= step]
    return vals[-1] if vals else None


@pytest.fixture(scope="module")
def report(two_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    r = cli("report", "run-lora", "run-full", "--out", str(out), "--steps", "2,4,6",
            env={"MEDSCALE_REGISTRY_URL": two_runs["registry"]})
    assert r.returncode == 0, r.stderr
    return out, json.loads((out / "report.json").read_text())


def test_tables_hold_the_numbers_of_the_trainer_states(two_runs, report):
    _, rep = report
    assert rep["runs"] == ["run-lora", "run-full"] and rep["steps"] == [2, 4, 6]
    states = {"run-lora": _state(two_runs["lora"]), "run-full": _state(two_runs["full"])}
    for row in rep["loss"]:
        for run, history in states.items():
            assert row[run] == pytest.approx(_last_at(history, "loss", row["step"]), abs=1e-9)
        a, b = row["run-lora"], row["run-full"]
        assert row["run-full vs run-lora %"] == pytest.approx(100 * (b - a) / a)
    for row in rep["eval_loss"]:
        for run, history in states.items():
            exact = [h["eval_loss"] for h in history if h.get("step") == row["step"] and "eval_loss" in h]
            assert row[run] == pytest.approx(exact[-1], abs=1e-9)
    for o in rep["overview"]:
        history = states[o["run"]]
        norms = [h["grad_norm"] for h in history if "grad_norm" in h]
        mean = sum(norms) / len(norms)
        assert (o["grad_norm_min"], o["grad_norm_max"]) == (pytest.approx(min(norms)), pytest.approx(max(norms)))
        assert o["grad_norm_cv"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in norms) / len(norms)) / mean)
        lrs = [(h["step"], h["learning_rate"]) for h in history if "learning_rate" in h]
        assert (o["lr_start"], o["lr_end"]) == (pytest.approx(lrs[0][1]), pytest.approx(lrs[-1][1]))
        assert o["lr_middle"] == pytest.approx(_last_at(history, "learning_rate", 3))
        evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
        assert o["eval_loss_base"] == pytest.approx(evals[0][1]) and evals[0][0] == 0
        assert o["eval_loss_final"] == pytest.approx(evals[-1][1])
        assert o["eval_loss_change_pct"] == pytest.approx(100 * (evals[-1][1] - evals[0][1]) / evals[0][1])
        assert o["steps"] == 6 and o["status"] == "succeeded"
    stage = next(s for s in rep["stages"] if s["run"] == "run-full" and s["stage"] == "2-4")
    history = states["run-full"]
    assert stage["loss_start"] == pytest.approx(_last_at(history, "loss", 2))  # stages chain: 0-2 ends where 2-4 starts
    first = next(s for s in rep["stages"] if s["run"] == "run-full" and s["stage"] == "0-2")
    assert first["loss_start"] == pytest.approx(next(h["loss"] for h in history if "loss" in h))
    assert first["loss_end"] == stage["loss_start"]
    assert stage["loss_end"] == pytest.approx(_last_at(history, "loss", 4))
    assert stage["change_pct"] == pytest.approx(100 * (stage["loss_end"] - stage["loss_start"]) / stage["loss_start"])
    assert all(f["flagged"] is None and "not measured" in f["line"] for f in rep["forgetting"])


def test_markdown_html_and_curves_are_written(report):
    out, rep = report
    md = (out / "report.md").read_text()
    assert "## Training loss at chosen steps" in md and "| step | run-lora | run-full | run-full vs run-lora |" in md
    assert set(rep["figures"]) == {"loss", "eval_loss", "learning_rate", "grad_norm"}
    for name in rep["figures"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "<script" not in page
    assert "http" not in page.split("<body>")[1], "self-contained: nothing to fetch"


def test_the_html_page_shows_the_tables_and_the_curves_in_a_browser(report, tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        if os.environ.get("CI"):  # .ci/run installs it: under CI a missing browser fails, never skips
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    out, _ = report
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chr'}"]
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, "--window-size=1400,2600", f"--screenshot={shot}",
                    (out / "report.html").as_uri()], capture_output=True, timeout=120)
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    w, h = img.size
    px = img.load()

    def count(colour, top=0, bottom=None, tol=6):
        return sum(1 for y in range(top, bottom or h, 2) for x in range(0, w, 2)
                   if all(abs(a - b) <= tol for a, b in zip(px[x, y], colour)))

    header = (0x1F, 0x4E, 0x79)  # table headers
    rows = [y for y in range(0, h, 2) if any(px[x, y] == header for x in range(0, w, 8))]
    assert count(header) > 2000 and rows, "the tables are drawn"
    below = max(rows) + 10
    blue, orange = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # the two runs' curves (matplotlib C0, C1)
    assert count(blue, below) > 200 and count(orange, below) > 200, "both runs' curves are drawn below the tables"


def test_a_report_of_nothing_logged_is_one_clear_error(tmp_path, medscale_home):
    r = cli("report", "no-such-job", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "no job 'no-such-job'" in r.stderr
    bad = cli("report", "x", "--steps", "a,b")
    assert bad.returncode == 2 and "--steps" in bad.stderr
