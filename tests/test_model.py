"""Tiny random Qwen3 builder and model loading with LoRA."""
from __future__ import annotations

import pytest
import torch

from conftest import needs_realdata, run_cli
from medscale.recipe import load_recipe


def test_tiny_model_cli_writes_safetensors_and_a_thinking_chat_template(tmp_path):
    out = tmp_path / "tiny"
    p = run_cli("tiny-model", str(out), "--layers", "3", "--hidden", "32")
    assert p.returncode == 0, p.stderr
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(out)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("qwen3", 3, 32)
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "user", "content": "头痛"}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert len(tok("<think>")["input_ids"]) == 1 and tok.decode(tok("高血压患者")["input_ids"]) == "高血压患者"
    assert not list(tmp_path.glob(".tiny.*")), "no temp folder left behind"


def test_tiny_model_with_the_real_qwen3_tokenizer(tmp_path):
    src = needs_realdata("qwen3_tokenizer")
    out = tmp_path / "tiny-real"
    assert run_cli("tiny-model", str(out), "--tokenizer", str(src)).returncode == 0
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 151669 and tok.convert_tokens_to_ids("<think>") == 151667
    assert AutoConfig.from_pretrained(out).vocab_size >= len(tok)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], "all-linear"])
def test_lora_wraps_the_requested_modules(tiny_model_dir, targets):
    from medscale.model.load import count_parameters, load_model

    targets_arg = "[q_proj,v_proj]" if isinstance(targets, list) else targets
    r = load_recipe("tiny-demo", [f"model.path={tiny_model_dir}", f"adapter.target_modules={targets_arg}",
                                  "adapter.modules_to_save=null", "adapter.use_rslora=true"])
    model = load_model(r)
    wanted = {"q_proj", "v_proj"} if isinstance(targets, list) else \
        {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
    assert {n.split(".")[-4] for n, _ in model.named_parameters() if ".lora_A." in n} == wanted
    trainable, total = count_parameters(model)
    assert 0 < trainable < total
    assert model.peft_config["default"].use_rslora


def test_lora_inputs_stay_in_the_model_dtype_under_autocast(tiny_model_dir):
    """peft would cast each LoRA input to the fp32 adapter dtype and autocast back to bf16 (two copies per
    projection); under autocast the input stays bf16, gradients still reach the fp32 adapters, and without
    autocast (generation) peft still casts, so fp32 adapters on a bf16 model run."""
    from medscale.model.load import load_model

    r = load_recipe("tiny-demo", [f"model.path={tiny_model_dir}", "model.dtype=bfloat16", "adapter.lora_dropout=0.1"])
    model = load_model(r)
    lora = model.base_model.model.model.layers[0].self_attn.q_proj
    assert lora.lora_A["default"].weight.dtype == torch.float32  # peft's fp32 adapters on a bf16 base
    seen = []
    lora.lora_dropout["default"].register_forward_hook(lambda m, args, out: seen.append(args[0].dtype))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert lora.lora_B["default"].weight.grad is not None
    assert lora.lora_B["default"].weight.grad.dtype == torch.float32
    with torch.no_grad():
        model(input_ids=ids)
    assert seen == [torch.bfloat16, torch.float32]
