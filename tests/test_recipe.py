"""Recipe schema: built-ins carry the seeds' values; bad recipes fail with one clear message."""
from __future__ import annotations

import pytest
import yaml

from conftest import cli, run_cli
from medscale.recipe import RecipeError, builtin_names, load_recipe

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_loads_and_round_trips(name, tmp_path):
    r = load_recipe(name)
    assert r.name == name and r.description
    # the resolved YAML is itself a valid recipe with the same fingerprint
    f = tmp_path / "resolved.yaml"
    f.write_text(r.to_yaml(), encoding="utf-8")
    assert load_recipe(str(f)).fingerprint() == r.fingerprint()


def test_builtin_list_is_complete():
    expected = {"qwen3-1.7b-qlora-v1", "qwen3-1.7b-qlora-v2", "qwen3-1.7b-qlora-v3", "qwen3-8b-lora-huatuo",
                "tiny-demo"} | {f"r1-distill-{s}-lora-{v}" for s in ("1.5b", "7b", "14b") for v in ("fast", "gentle")}
    assert set(builtin_names()) == expected


# The seeds' own words, quoted (../shared/seeds, in Chinese): every recipe value checked below comes from one of
# these lines, and test_quotes_are_in_the_seeds checks each line is really there.
SEED = {
    "001": ["| LoRA秩 (r) | 64 |", "|  | LoRA alpha | 32 |", "|  | LoRA Dropout | 0.1 |", "| Batch Size | 4 |",
            "|  | 梯度累积 | 2步 |", "|  | 学习率 | 2e-4 → 4.4e-6 (线性衰减) |", "|  | 优化器 | Paged AdamW 8-bit |",
            "|  | 训练轮数 | 3 epochs |", "|  | 梯度裁剪 | 0.3 |", "|  | 最大序列长度 | 2048 tokens |",
            "- **训练时长**：约400步（约94分钟）", "lora_dropout=0.2,  # 从0.1提高到0.2"],
    "002": ["| **v1** | 基础版本 | 线性衰减 | Lora_dropout=0.05 | 无 |",
            "| **v2** | 学习率优化 | 余弦衰减 + 10%预热 | Lora_dropout=0.1<br>modules_to_save嵌入层 | 无 |",
            "| **v3** | 增强推理能力 | 同v2 | 同v2 | 10%概率医学术语掩码 |",
            "`modules_to_save=[\"embed_tokens\", \"lm_head\"]` + `lora_dropout=0.1`：",
            "| 末期     | 4.41e-6         | 2.96e-7          |", "*(基于400步训练数据)*"],
    "000": ["2. **知识增强掩码**：15%概率的渐进式专业掩码", "3. **学习率预热调整**：预热步数优化（40→50步）",
            "- **训练时长**：400步（约95分钟）", "B --> C[200步:1.22e-4]", "C --> D[400步:3e-7]"],
    "003": ["| lora_rank | 16 |", "| lora_alpha | 32 |", "| lora_dropout | 0.05 |", "| learning_rate | 2e-5 |",
            "| num_train_epochs | 2 | 训练轮数 |", "| **有效batch size** | 32 | 4卡×4×2 |", "| warmup_ratio | 0.05 | 预热比例 |",
            "| model_max_length | 2048 | 最大序列长度 |", "3. 截取前100,000条用于训练", "4. 随机采样500条用于验证",
            "- **GPU**: 4 × RTX 4080 (32GB显存)", "- **梯度检查点**: True - 节省显存"],
    "004": ["- **LoRA配置**: r=16, lora_alpha=16", "- **序列长度**: 8192 tokens", "- **批次大小**: 64 (失败版本) / 调整后更小",
            "| 版本一 | DeepSeek-R1-1.5B | 微调 | lr=2e-4, steps=60 |", "| 版本五 | DeepSeek-R1-7B | 微调 | lr=2e-4, steps=60 |",
            "| 版本六 | DeepSeek-R1-14B | 微调 | lr=2e-4, steps=60 |", "| 版本七 | DeepSeek-R1-7B | 微调 | lr=3e-6, steps=30 |",
            "| 版本八 | DeepSeek-R1-14B | 微调 | lr=5e-6, steps=30 |", "4. **模型规模很重要**: 14B比7B更抗微调损伤，1.5B最容易崩溃",
            "3. **频繁监控** (eval_steps=5)：允许及时发现和纠正训练偏差"],
}


def test_quotes_are_in_the_seeds():
    from conftest import SHARED

    folder = SHARED / "seeds"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present (../shared is optional)")
    for number, quotes in SEED.items():
        (path,) = folder.glob(f"{number}_*.txt")
        text = path.read_text(encoding="utf-8")
        missing = [q for q in quotes if q not in text]
        assert not missing, f"{path.name} does not say {missing}"


def _lr_at(recipe, steps: list[int]) -> list[float]:
    """The learning rate the recipe's Trainer logs after each of `steps` optimizer steps (its real scheduler)."""
    import torch
    from transformers import get_scheduler

    from medscale.train.args import training_arguments

    args = training_arguments(recipe, recompute=False)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=recipe.train.learning_rate)
    sched = get_scheduler(args.lr_scheduler_type, opt, args.get_warmup_steps(args.max_steps), args.max_steps)
    out, done = [], 0
    for s in steps:
        for _ in range(s - done):
            opt.step()
            sched.step()
        done = s
        out.append(sched.get_last_lr()[0])
    return out


def test_training_arguments_work_with_the_lowest_supported_transformers(tmp_path, monkeypatch):
    """Defect (an H100 with transformers 5.17): every recipe failed with "unexpected keyword argument
    'activation_checkpointing'", the name transformers 5.2x gave gradient_checkpointing. 5.17's TrainingArguments
    knows only the old name; recomputation must still be on."""
    import inspect

    from medscale.train import args as train_args

    real = train_args.TrainingArguments
    if "activation_checkpointing" not in inspect.signature(real).parameters:
        old = real  # this is an old transformers already
    else:
        class old(real):  # 5.17's signature: the new names do not exist
            def __init__(self, *a, gradient_checkpointing=False, gradient_checkpointing_kwargs=None, **kw):
                assert not {"activation_checkpointing", "activation_checkpointing_kwargs"} & kw.keys()
                super().__init__(*a, activation_checkpointing=gradient_checkpointing,
                                 activation_checkpointing_kwargs=gradient_checkpointing_kwargs, **kw)
    monkeypatch.setattr(train_args, "TrainingArguments", old)
    args = train_args.training_arguments(load_recipe("qwen3-8b-lora-huatuo", [f"train.output_dir={tmp_path}",
                                                                             "train.gradient_checkpointing=true"]),
                                      recompute=True)
    assert isinstance(args, old)
    recompute = getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing
    assert recompute is True


def test_qlora_v1_carries_seed_001(tmp_path):
    r = load_recipe("qwen3-1.7b-qlora-v1", [f"train.output_dir={tmp_path}"])
    m, a, t = r.model, r.adapter, r.train
    assert m.load_in_4bit and m.bnb_4bit_quant_type == "nf4" and m.bnb_4bit_use_double_quant  # "4-bit NF4 (双重量化)"
    assert m.bnb_4bit_compute_dtype == "bfloat16" and m.hub_id == "Qwen/Qwen3-1.7B"
    assert (a.r, a.lora_alpha, a.lora_dropout, a.target_modules) == (64, 32, 0.1, SEVEN)  # seed 001, not 002's 0.05
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (4, 2)
    assert (t.learning_rate, t.lr_scheduler_type, t.optim, t.max_grad_norm) == (2e-4, "linear", "paged_adamw_8bit", 0.3)
    assert t.num_train_epochs == 3 and r.data.max_length == 2048 and r.data.sources[0].format == "r1-think"
    assert r.track.swanlab.project == "qwen3-sft-medical"
    # "约400步" with "2e-4 → 4.4e-6 (线性衰减)" and seed 002's "末期 4.41e-6" logged at step 400
    assert 400 <= t.max_steps <= 420
    (end,) = _lr_at(r, [400])
    assert end == pytest.approx(4.41e-6, rel=0.01)


def test_qlora_v2_and_v3_carry_seeds_002_and_000(tmp_path):
    v1, v2, v3 = (load_recipe(f"qwen3-1.7b-qlora-v{i}", [f"train.output_dir={tmp_path}"]) for i in (1, 2, 3))
    assert (v2.train.lr_scheduler_type, v2.train.warmup_ratio) == ("cosine", 0.1)  # "余弦衰减 + 10%预热"
    assert v2.adapter.modules_to_save == ["embed_tokens", "lm_head"] and v2.adapter.lora_dropout == 0.1
    assert v2.adapter.r == v1.adapter.r == 64 and v2.train.optim == v1.train.optim
    assert v2.train.max_steps == v3.train.max_steps == v1.train.max_steps  # all three "基于400步训练数据"
    (v2_end,) = _lr_at(v2, [400])
    assert v2_end == pytest.approx(2.96e-7, rel=0.02)  # seed 002: "末期 ... 2.96e-7"
    # seed 002 names v2's warm-up 10%, seed 000 calls it 40 steps ("预热步数优化（40→50步）")
    assert 40 <= v2.train.warmup_ratio * v2.train.max_steps <= 41
    assert v3.data.term_masking.p == 0.15 and v3.data.term_masking.progressive  # seed 000, not seed 002's 10%
    assert (v3.train.warmup_steps, v3.train.warmup_ratio) == (50, 0)
    assert v3.train.adaptive_clip is not None and v3.train.lr_scheduler_type == "cosine"
    peak, mid, end = _lr_at(v3, [50, 200, 400])  # "50步:2e-4", "200步:1.22e-4", "400步:3e-7"
    assert peak == pytest.approx(2e-4) and mid == pytest.approx(1.22e-4, rel=0.05)
    assert end == pytest.approx(3e-7, rel=0.1)
    assert v1.data.term_masking is None and v1.train.adaptive_clip is None


def test_recipe_headers_name_the_seed_they_follow_where_seeds_disagree():
    from medscale.recipe import builtin_dir

    v1 = (builtin_dir() / "qwen3-1.7b-qlora-v1.yaml").read_text(encoding="utf-8")
    v3 = (builtin_dir() / "qwen3-1.7b-qlora-v3.yaml").read_text(encoding="utf-8")
    header = lambda text: text.split("\ndescription:")[0]  # noqa: E731
    assert "seed 001" in header(v1) and "0.05" in header(v1), "dropout: follows seed 001, says what seed 002 says"
    assert "seed 000" in header(v3) and "10%" in header(v3), "masking: follows seed 000, says what seed 002 says"


def test_8b_huatuo_carries_seed_003():
    r = load_recipe("qwen3-8b-lora-huatuo")
    assert r.model.dtype == "bfloat16" and not r.model.load_in_4bit and r.model.hub_id == "Qwen/Qwen3-8B"
    assert (r.adapter.r, r.adapter.lora_alpha, r.adapter.lora_dropout, r.adapter.target_modules) == (16, 32, 0.05, SEVEN)
    t = r.train
    # "梯度检查点: True": auto recomputes what the seed's 32 GB cards need (test_speed checks that plan)
    assert t.gradient_checkpointing in (True, "auto")
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (4, 2)
    assert r.dist.num_processes == 4 and t.effective_batch_size == 32
    assert (t.num_train_epochs, t.learning_rate, t.warmup_ratio) == (2, 2e-5, 0.05)
    assert r.data.max_length == 2048 and r.data.sources[0].format == "huatuo"
    # "截取前100,000条用于训练": all of the first 100,000 are trained on (none held out of them) ...
    (train,) = r.data.sources
    assert (train.skip, train.limit, train.sample, r.data.eval_size) == (0, 100_000, None, 0)
    # ... and "随机采样500条用于验证": 500 sampled from the records after them
    (val,) = r.data.eval_sources
    assert (val.path, val.format, val.skip, val.sample) == (train.path, "huatuo", 100_000, 500)


R1 = {  # seed 004's table: version -> (size, lr, steps)
    1: ("1.5b", 2e-4, 60), 5: ("7b", 2e-4, 60), 6: ("14b", 2e-4, 60), 7: ("7b", 3e-6, 30), 8: ("14b", 5e-6, 30)}


@pytest.mark.parametrize("version", sorted(R1))
def test_r1_distill_recipes_carry_seed_004(version):
    size, lr, steps = R1[version]
    r = load_recipe(f"r1-distill-{size}-lora-{'fast' if lr == 2e-4 else 'gentle'}")
    assert r.model.load_in_4bit and (r.adapter.r, r.adapter.lora_alpha) == (16, 16)
    assert (r.train.learning_rate, r.train.max_steps) == (lr, steps)
    assert r.data.max_length == 8192 and r.data.sources[0].format == "medical-o1"
    assert r.eval.eval_steps == 5
    assert size.upper() in r.model.hub_id and f"version {version}" in r.description
    t = r.train
    batch = t.per_device_train_batch_size * t.gradient_accumulation_steps * r.dist.num_processes
    if lr == 2e-4:
        assert batch == t.effective_batch_size == 64  # "批次大小: 64 (失败版本)"
    else:
        assert batch < 64  # "/ 调整后更小"


def test_the_1p5b_gentle_run_is_labelled_an_addition():
    r = load_recipe("r1-distill-1.5b-lora-gentle")
    assert r.description.startswith("ADDITION (not in seed 004)")
    assert not any(size == "1.5b" and lr != 2e-4 for size, lr, _ in R1.values())


def test_overrides_apply_with_types():
    r = load_recipe("qwen3-8b-lora-huatuo", ["train.learning_rate=5e-6", "adapter.r=8",
                                             "adapter.target_modules=[q_proj,v_proj]", "track.swanlab=null"])
    assert r.train.learning_rate == 5e-6 and r.adapter.r == 8
    assert r.adapter.target_modules == ["q_proj", "v_proj"] and r.track.swanlab is None


def test_paths_follow_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSCALE_MODELS", str(tmp_path / "m"))
    assert load_recipe("qwen3-8b-lora-huatuo").model.path == str(tmp_path / "m" / "Qwen3-8B")
    assert load_recipe("tiny-demo").train.output_dir.startswith(str(tmp_path / "home"))


def test_fingerprint_ignores_key_order(tmp_path):
    r = load_recipe("tiny-demo")
    data = r.model_dump(mode="json")
    reordered = {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in reversed(data.items())}
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(reordered, sort_keys=False, allow_unicode=True), encoding="utf-8")
    assert load_recipe(str(f)).fingerprint() == r.fingerprint()
    assert load_recipe("tiny-demo", ["train.seed=7"]).fingerprint() != r.fingerprint()


def _error(name, overrides):
    with pytest.raises(RecipeError) as e:
        load_recipe(name, overrides)
    return str(e.value)


def test_unknown_key_names_path_and_suggestion():
    msg = _error("tiny-demo", ["train.learnin_rate=1e-4"])
    assert "unknown key 'train.learnin_rate'" in msg and "did you mean 'train.learning_rate'" in msg


def test_unknown_key_in_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("base: tiny-demo\nadapter:\n  r: 8\n  lora_alpah: 16\n", encoding="utf-8")
    msg = _error(str(f), [])
    assert f"{f}:4:" in msg and "did you mean 'adapter.lora_alpha'" in msg


def test_wrong_type_names_key_and_expected_type():
    msg = _error("tiny-demo", ["adapter.r=sixteen"])
    assert "adapter.r: expected an integer" in msg and "sixteen" in msg


def test_an_error_in_an_override_names_the_override_not_the_builtin_file():
    """The user typed the override; the built-in recipe file is one they never edited."""
    msg = _error("tiny-demo", ["train.learning_rate=abc"])
    assert msg == "override 'train.learning_rate=abc': train.learning_rate: expected a number, got 'abc'"
    assert _error("tiny-demo", ["data.sources=[{path: x, format: bad}]"]).startswith(
        "override 'data.sources=[{path: x, format: bad}]': data.sources.0.format:")
    assert _error("tiny-demo", ["train.warmup_steps=10"]).startswith("override 'train.warmup_steps=10': set "
                                                                     "train.warmup_ratio or train.warmup_steps")
    # a cross-field check no single override explains: the file *with* the overrides
    msg = _error("qwen3-8b-lora-huatuo", ["dist.num_processes=3"])
    assert "qwen3-8b-lora-huatuo.yaml with dist.num_processes=3: train.effective_batch_size=32" in msg
    assert "recipes/tiny-demo.yaml" not in _error("tiny-demo", ["adapter.r=0", "train.learning_rate=1e-4"])


def test_batch_that_cannot_divide():
    msg = _error("qwen3-8b-lora-huatuo", ["dist.num_processes=3"])
    assert "train.effective_batch_size=32" in msg and "3" in msg


def test_warmup_ratio_and_steps_are_exclusive():
    assert "not both" in _error("tiny-demo", ["train.warmup_steps=5"])


def test_unknown_recipe_suggests_name():
    assert "did you mean 'tiny-demo'" in _error("tiny-dmeo", [])


def test_bad_override_syntax():
    assert "section.key=value" in _error("tiny-demo", ["train.learning_rate"])


def test_cli_exits_2_with_one_message_and_writes_nothing(tmp_path, medscale_home):
    out = tmp_path / "out"
    p = run_cli("train", "tiny-demo", f"train.output_dir={out}", "train.lerning_rate=1")
    assert p.returncode == 2
    assert "unknown key 'train.lerning_rate'" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists() and not medscale_home.exists()


def test_missing_model_folder_says_what_to_download(tmp_path):
    p = run_cli("train", "qwen3-8b-lora-huatuo", f"model.path={tmp_path}/nowhere",
                f"train.output_dir={tmp_path}/out", "dist.num_processes=1", "train.effective_batch_size=8")
    assert p.returncode == 2
    assert f"`hf download Qwen/Qwen3-8B --local-dir {tmp_path}/nowhere`" in p.stderr and "set model.path" in p.stderr
    assert not (tmp_path / "out").exists()


def test_4bit_without_cuda_is_refused(tmp_path, tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    p = run_cli("train", "tiny-demo", f"model.path={tiny_model_dir}", "model.load_in_4bit=true",
                f"train.output_dir={tmp_path}/out")
    assert p.returncode == 2 and "model.load_in_4bit needs a CUDA GPU" in p.stderr
    assert not (tmp_path / "out").exists()


def test_cli_recipes_and_show():
    p = run_cli("recipes")
    assert p.returncode == 0 and len([ln for ln in p.stdout.splitlines() if ln.strip()]) == len(builtin_names())
    p = run_cli("recipe", "show", "qwen3-1.7b-qlora-v2", "train.learning_rate=1e-4")
    shown = yaml.safe_load(p.stdout)
    assert p.returncode == 0 and shown["train"]["learning_rate"] == 1e-4
    assert shown["train"]["lr_scheduler_type"] == "cosine" and p.stdout.startswith("# fingerprint: ")


def test_yaml_no_is_a_string_not_false():
    assert load_recipe("tiny-demo", ["eval.eval_strategy=no"]).eval.eval_strategy == "no"
    assert load_recipe("tiny-demo", ["train.bf16=false"]).train.bf16 is False


def test_schema_json_describes_every_section():
    import json

    p = cli("recipe", "schema", "--json")
    schema = json.loads(p.stdout)
    assert p.returncode == 0 and set(schema["properties"]) >= {"model", "data", "adapter", "train", "dist", "track", "eval"}


def test_every_recipe_key_has_a_description():
    """`medscale recipe schema` is the reference: a key without a description is a key nobody can look up."""
    from medscale.recipe import Recipe, recipe_keys

    rows = recipe_keys()
    assert not [f"{r.section}.{r.key}".strip(".") for r in rows if not (r.description or "").strip()]
    leaves = {f"{r.section}.{r.key}" for r in rows if r.section and r.key}
    assert {"train.learning_rate", "data.sources[].format", "model.tiny.layers", "train.adaptive_clip.window",
            "track.swanlab.mode"} <= leaves
    assert {r.section for r in rows if not r.key} == set(Recipe.model_fields) - {"name", "description"}


def test_schema_is_a_readable_table_by_default():
    p = cli("recipe", "schema")
    assert p.returncode == 0
    header = next(ln for ln in p.stdout.splitlines() if "section" in ln)
    assert [w for w in header.replace("┃", " ").split()] == ["section", "key", "type", "default", "description"]
    row = next(ln for ln in p.stdout.splitlines() if " learning_rate " in ln)
    assert [c.strip() for c in row.split("│")[1:5]] == ["train", "learning_rate", "float", "0.0002"]
    assert "peak learning rate" in row
