"""The truth test: a fine-tune that learned its questions is judged better (and its forgetting is flagged), one
trained on noise never is. Tiny Qwen3 on CPU, the real Trainer, real peft, real scoring."""
from __future__ import annotations

import json

import pytest

from medscale.eval.bench import load_benchmark
from medscale.eval.control import forgetting_verdict, measure_control
from medscale.eval.run import evaluate_benchmark
from medscale.eval.stats import contamination, paired_verdict
from medscale.model.infer import load_for_inference

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scored(control_base, mcq_job, noise_job, eval_data):
    """Base, tuned and noise-tuned models on the 40 questions, plus each one's control-set loss."""
    bench = load_benchmark(str(eval_data["mcq"]))
    out = {}
    for name, base, adapter in (("base", control_base, None), ("tuned", control_base, mcq_job[0]),
                                ("noise", control_base, noise_job[0])):
        model, tok = load_for_inference(base, adapter)
        out[name] = (evaluate_benchmark(model, tok, bench, batch_size=16, model_meta={"label": name}),
                     measure_control(model, tok, str(eval_data["control"]), limit=32, max_length=192))
    return out


def test_memorised_questions_go_from_chance_to_90_percent_and_the_verdict_says_better(scored, eval_data):
    base, tuned = scored["base"][0], scored["tuned"][0]
    assert base.n == tuned.n == 40
    assert base.acc <= 0.5  # chance on four options is 25%
    assert tuned.acc >= 0.9
    v = paired_verdict(base, tuned)
    assert v.verdict == "better" and v.ci_low > 0 and v.p_mcnemar < 0.01
    # beside every "better": the questions are in the training data verbatim, and the check says so
    texts = [m["content"] for line in eval_data["sft"].read_text(encoding="utf-8").splitlines()
             for m in json.loads(line)["messages"]]
    v.contamination = contamination({o.id: q.question for o, q in zip(tuned.outcomes, load_benchmark(
        str(eval_data["mcq"])).questions)}, texts)
    assert v.contamination.share == 1.0 and "contamination: 40/40" in v.line()


def test_forgetting_guard_fires_when_the_control_loss_rises(scored):
    before, after = scored["base"][1], scored["tuned"][1]
    assert before.kind == after.kind == "loss" and before.n == 32 and before.tokens > 0
    guard = forgetting_verdict(before, after, threshold=0.05)
    assert guard.flagged and guard.line.startswith("FORGETTING") and after.value > 1.05 * before.value


def test_training_on_noise_is_never_judged_better(scored):
    v = paired_verdict(scored["base"][0], scored["noise"][0])
    assert v.verdict in ("worse", "no detectable difference") and v.acc_b < v.acc_a


def test_benchmark_callback_logs_accuracy_at_each_evaluation_and_warns_below_base(mcq_job, noise_job):
    out, summary, cb = mcq_job
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    accs = [(h["step"], h["bench/mcq40/acc"]) for h in history if "bench/mcq40/acc" in h]
    assert [s for s, _ in accs] == [0, 24, 48, 72, 96]  # eval_on_start: step 0 is the base
    assert accs[-1][1] >= 0.9 > accs[0][1] and not cb.warnings
    _, _, noisy = noise_job
    assert noisy.warnings and "fell below the base" in noisy.warnings[0]
    assert noisy.latest["mcq40"].acc < noisy.base["mcq40"].acc
