"""train.compile (issue 24, lever 2): a compiled padding-free run trains the same losses as eager, rows are padded to a
few lengths so the graphs are reused, and the padding (a dummy sample, labels -100) changes no loss. On CPU the
backend is aot_eager (dynamo + AOT autograd, what decides graphs and recompiles, without inductor's C++ build);
reduce-overhead (CUDA graphs) is checked where CUDA exists."""
from __future__ import annotations

import json

import pytest
import torch

from medscale.data.packing import bucket_length, concat_samples, length_buckets
from medscale.recipe import load_recipe

LENGTHS = ([20, 30], [50, 7, 9, 3], [100], [33, 44, 12])


def _rows(cap: int | None, device: str = "cpu") -> list[dict]:
    g = torch.Generator().manual_seed(1)
    rows = [concat_samples([{"input_ids": x, "labels": x} for x in
                            (torch.randint(5, 200, (n,), generator=g).tolist() for n in lengths)], cap)
            for lengths in LENGTHS]
    return [{k: v.to(device) if torch.is_tensor(v) else v for k, v in r.items()} for r in rows]


def test_buckets_are_few_cover_every_length_and_never_cut_a_row():
    assert length_buckets(16384) == [256, 512, 1024, 2048, 4096, 8192, 16384]
    assert length_buckets(12000)[-2:] == [8192, 12000] and length_buckets(100) == [100]
    for n in (1, 255, 256, 257, 5000, 11999, 12000):
        b = bucket_length(n, 12000)
        assert b >= n and b in length_buckets(12000)
    assert bucket_length(12001, 12000) == 12001


def test_a_bucketed_row_is_a_dummy_sample_that_carries_no_loss(tiny_model_dir):
    """Same loss and gradients, bucketed or not: attention never crosses into the dummy sample, its labels are -100."""
    from medscale.model.load import load_base_model
    from medscale.recipe import ModelSection

    model = load_base_model(ModelSection(path=str(tiny_model_dir), dtype="float32", attn_implementation="sdpa"))
    weight = model.model.layers[0].self_attn.q_proj.weight
    for plain, padded in zip(_rows(None), _rows(1024)):
        assert padded["input_ids"].shape[1] == bucket_length(plain["input_ids"].shape[1], 1024) == 256
        assert (padded["labels"] != -100).sum() == (plain["labels"] != -100).sum()
        assert padded["cu_seq_lens_q"].tolist() == plain["cu_seq_lens_q"].tolist() + [256]
        results = []
        for row in (plain, padded):
            weight.grad = None
            loss = model(**row).loss
            loss.backward()
            results.append((loss.detach(), weight.grad.clone()))
        torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-6, atol=0)
        torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-7)


def test_the_collator_buckets_rows_only_when_compiled(tiny_tokenizer):
    from medscale.data.pipeline import SFTCollator

    recipe = load_recipe("tiny-demo", ["data.batching=padding_free"])
    collator = SFTCollator(tiny_tokenizer, recipe.data, 0)
    feats = [{"input_ids": list(range(5, 5 + n)), "labels": list(range(5, 5 + n))} for n in (40, 70, 9)]
    assert collator(feats)["input_ids"].shape[1] == 119
    collator.row_cap = 4096
    assert collator(feats)["input_ids"].shape[1] == 256
    packed = {"input_ids": list(range(300)), "labels": list(range(300)), "position_ids": list(range(300))}
    assert collator([packed])["input_ids"].shape[1] == 512


def test_the_recipe_key_sets_trainer_compile_and_liger_fused_cross_entropy_alone(tmp_path):
    from medscale.recipe import RecipeError
    from medscale.train.args import FLCE_ONLY, training_arguments

    args = training_arguments(load_recipe("tiny-demo", [f"train.output_dir={tmp_path}", "train.compile=reduce-overhead",
                                                        "train.use_liger_kernel=fused_linear_cross_entropy"]), False)
    assert (args.torch_compile, args.torch_compile_mode, args.torch_compile_backend) == (True, "reduce-overhead",
                                                                                         "inductor")
    assert args.liger_kernel_config == FLCE_ONLY and args.use_liger_kernel is False  # Liger needs CUDA
    plain = training_arguments(load_recipe("tiny-demo", [f"train.output_dir={tmp_path}"]), False)
    assert plain.torch_compile is False and plain.liger_kernel_config is None
    with pytest.raises(RecipeError, match="train.trainer_args.torch_compile: set train.compile instead"):
        training_arguments(load_recipe("tiny-demo", [f"train.output_dir={tmp_path}",
                                                     "train.trainer_args={torch_compile: true}"]), False)


def _losses(out) -> list[float]:
    return [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]


def test_a_compiled_padding_free_run_trains_the_losses_of_eager_with_one_graph_per_bucket(tiny_model_dir, tmp_path,
                                                                                          monkeypatch):
    """Three optimizer steps of the tiny Qwen3, eager then compiled (aot_eager): the same losses within 1e-4, every
    row the compiled run's collator made is a bucket's length (train.compile reaches the collator), and dynamo made
    no more graphs than there are buckets."""
    from torch._dynamo.utils import counters

    from medscale.data.pipeline import SFTCollator
    from medscale.train.run import run

    base = [f"model.path={tiny_model_dir}", "track.swanlab=null", "data.batching=padding_free", "data.eval_size=0",
            "eval.eval_strategy=no", "data.system_prompt=null", "data.max_length=256", "train.max_steps=3",
            "train.logging_steps=1", "train.save_steps=1000", "train.per_device_train_batch_size=4",
            "data.sources=[{path: '${MEDSCALE_DEMO_DATA}/medical_r1_demo.jsonl', format: r1-think, limit: 12}]"]
    run(load_recipe("tiny-demo", [*base, f"train.output_dir={tmp_path / 'eager'}"]))
    torch._dynamo.reset()
    counters.clear()
    widths, collate = [], SFTCollator.__call__

    def noted(self, features):  # the real collator; the width of each row it made is noted
        batch = collate(self, features)
        widths.append(batch["input_ids"].shape[-1])
        return batch

    monkeypatch.setattr(SFTCollator, "__call__", noted)
    run(load_recipe("tiny-demo", [*base, f"train.output_dir={tmp_path / 'compiled'}", "train.compile=default",
                                  "train.trainer_args={torch_compile_backend: aot_eager}"]))
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(eager) == len(compiled) == 3
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert widths and set(widths) <= set(length_buckets(4 * 256)), widths
    assert 1 <= counters["stats"]["unique_graphs"] <= len(length_buckets(4 * 256))
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune-no-cudagraphs"])
def test_a_compiled_padding_free_step_on_cuda_gives_the_eager_loss(tiny_model_dir, mode):
    """Inductor on the GPU, CUDA graphs included: each bucketed row's loss and a gradient as eager's (fp32)."""
    from medscale.model.load import load_base_model
    from medscale.recipe import ModelSection

    model = load_base_model(ModelSection(path=str(tiny_model_dir), dtype="float32", attn_implementation="varlen"))
    compiled = torch.compile(model, mode=mode)
    weight = model.model.layers[0].self_attn.q_proj.weight
    for row in _rows(1024, "cuda") * 2:  # twice: the second pass replays what the first recorded
        got = []
        for m in (model, compiled):
            weight.grad = None
            loss = m(**row).loss
            loss.backward()
            got.append((loss.detach().clone(), weight.grad.clone()))
        torch.testing.assert_close(got[1][0], got[0][0], rtol=1e-4, atol=0)
        torch.testing.assert_close(got[1][1], got[0][1], rtol=1e-3, atol=1e-5)


def test_the_memory_plan_counts_liger_s_norm_and_swiglu_only_when_all_of_liger_is_on():
    from medscale.plan import layer_activation_bytes, model_shape

    def kept(liger: str) -> float:
        recipe = load_recipe("qwen3-8b-lora-huatuo", [f"train.use_liger_kernel={liger}"])
        return layer_activation_bytes(recipe, model_shape(recipe)[0])[0]

    assert kept("fused_linear_cross_entropy") == kept("false") > kept("true")


def test_bench_speed_has_the_compile_levers_at_the_seeds_semantics():
    """bench/speed.py --semantics seed (what --dry-run lists) runs each compile mode with Liger off and with its fused
    linear cross-entropy alone, for the 1.7B and the 8B."""
    import argparse

    from conftest import bench_script

    speed = bench_script("speed")
    for suite in ("qwen3-1.7b", "qwen3-8b"):
        order = speed.run_order(argparse.Namespace(runs="", suite=suite, semantics="seed"))
        overrides = [speed.SUITES[suite]["runs"][w][1] for _, w in order if w != "baseline"]
        for mode in ("reduce-overhead", "max-autotune-no-cudagraphs"):
            for liger in ("false", "fused_linear_cross_entropy"):
                assert [f"train.compile={mode}", f"train.use_liger_kernel={liger}"] in overrides


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU run is the reproduction itself")
def test_the_liger_rmsnorm_reproduction_says_it_needs_cuda(monkeypatch, capsys):
    import sys

    from conftest import bench_script

    script = bench_script("liger_rmsnorm_compile")
    monkeypatch.setattr(sys, "argv", ["liger_rmsnorm_compile.py"])
    script.main()
    assert "needs a CUDA GPU" in capsys.readouterr().out
