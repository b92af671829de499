"""`hf-transfer check-launch`: every shipped accelerate config passes the dry run where it can run, and broken copies
fail with the field named. Machines are given explicitly (no GPU, or N assumed GPUs), so the results do not depend
on the machine the tests run on. What ran for real on a GPU: docs/distributed.md."""

from pathlib import Path

import pytest
import yaml

from hf_transfer.cli import main
from hf_transfer.errors import RecipeError
from hf_transfer.launch_check import LaunchConfigError, Machine, check_launch, check_launched_engine
from hf_transfer.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))
CPU = Machine(gpus=0, gpu_bf16=False, cpu_bf16=True, cpu_cores=2, deepspeed=False)
CPU_NO_BF16 = Machine(gpus=0, gpu_bf16=False, cpu_bf16=False, cpu_cores=2, deepspeed=False)
GPUS = Machine.assumed(8)
ENGINES = {"multi_cpu": "DDP (NCCL)", "ddp": "DDP (NCCL)", "fsdp": "FSDP2", "deepspeed_zero2": "DeepSpeed ZeRO-2"}


@pytest.fixture
def recipe(tiny_model_dir, review_files) -> dict:
    return {
        "model_name_or_path": tiny_model_dir,
        "source_data": review_files["source"],
        "target_data": review_files["target"],
        "max_length": 32,
        "per_device_train_batch_size": 4,
    }


def broken(tmp_path: Path, name: str, **changes) -> str:
    """A copy of a shipped config with top-level (or ``block.key``) fields changed; ``None`` removes one."""
    config = yaml.safe_load((REPO / "recipes" / "accelerate" / f"{name}.yaml").read_text())
    for key, value in changes.items():
        block, _, sub = key.partition("__")
        target, field = (config[block], sub) if sub else (config, block)
        if value is None:
            target.pop(field, None)
        else:
            target[field] = value
    path = tmp_path / f"{name}-broken.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def problems_of(*args, **kwargs) -> list[str]:
    with pytest.raises(LaunchConfigError) as err:
        check_launch(*args, **kwargs)
    return err.value.problems


def test_every_shipped_config_is_covered():
    assert {path.stem for path in CONFIGS} == set(ENGINES)


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_shipped_configs_pass_on_a_gpu_machine(config):
    plan = check_launch(config, machine=GPUS)
    assert plan.engine == ENGINES[config.stem]
    assert plan.summary().startswith(f"ok: {config}: {plan.engine}")


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_shipped_configs_on_a_cpu_machine(config):
    """DDP configs fall back to gloo on the CPU; FSDP and DeepSpeed need GPUs, and say so."""
    if config.stem in ("fsdp", "deepspeed_zero2"):
        problems = problems_of(config, machine=CPU)
        assert problems[0].startswith("distributed_type: ") and "needs CUDA GPUs" in problems[0]
        assert "multi_cpu.yaml" in problems[0]
    else:
        plan = check_launch(config, machine=CPU)
        assert plan.engine == "DDP (gloo, CPU)"
        assert "gradients are all-reduced" in plan.sharding


def test_recipe_and_model_on_the_cpu(recipe):
    plan = check_launch(REPO / "recipes/accelerate/multi_cpu.yaml", recipe, machine=CPU)
    assert "BertForSequenceClassification" in plan.model and "method finetune" in plan.model
    assert plan.global_batch == 4 * 2
    problems = problems_of(REPO / "recipes/accelerate/ddp.yaml", recipe, machine=CPU_NO_BF16)
    assert problems == [
        "mixed_precision: bf16 on the CPU needs AVX512-BF16/AMX support, which this CPU lacks; set 'no'"
    ]
    fp16 = problems_of(REPO / "recipes/accelerate/multi_cpu.yaml", recipe, mixed_precision="fp16", machine=CPU)
    assert fp16[0].startswith("mixed_precision: fp16 needs a GPU")


def test_fsdp_with_a_recipe(recipe, tmp_path):
    fsdp = REPO / "recipes/accelerate/fsdp.yaml"
    # The shipped config wraps BertLayer and nothing else: it passes.
    plan = check_launch(fsdp, recipe, machine=GPUS)
    assert plan.engine == "FSDP2"
    assert not any("efficient_loading" in note for note in plan.notes)
    efficient = broken(tmp_path, "fsdp", fsdp_config__fsdp_cpu_ram_efficient_loading=True)
    notes = check_launch(efficient, recipe, machine=GPUS).notes
    assert any(n.startswith("fsdp_cpu_ram_efficient_loading: true (weights read by the main") for n in notes)
    # FSDP2 shards a discriminator with the model (the trainer makes it a submodule); FSDP1 cannot
    plan = check_launch(fsdp, {**recipe, "method": "dann"}, machine=GPUS)
    assert "method dann" in plan.model
    assert any(n.startswith("method: dann: the discriminator is sharded with the model") for n in plan.notes)
    plan = check_launch(fsdp, {**recipe, "method": "dann", "max_grad_norm": 0.0}, machine=GPUS)
    assert not any("discriminator" in n for n in plan.notes)
    fsdp1 = broken(tmp_path, "fsdp", fsdp_config__fsdp_version=1, fsdp_config__fsdp_use_orig_params=True)
    (problem,) = problems_of(fsdp1, {**recipe, "method": "dann"}, machine=GPUS)
    assert problem.startswith("method: dann train(s) parameters of their own")
    assert "never trained under FSDP1" in problem
    # No process holds a whole model to merge a LoRA adapter into; the adapter alone exports.
    lora = {**recipe, "peft": {"peft_type": "LORA", "r": 2, "target_modules": ["query"]}}
    check_launch(fsdp, lora, machine=GPUS)
    (merge,) = problems_of(fsdp, {**lora, "merge_adapter": True}, machine=GPUS)
    assert merge.startswith("model.merge_adapter: FSDP leaves no process a whole model")
    assert "merge_and_unload" in merge
    # Without fsdp_transformer_layer_cls_to_wrap, BERT's _no_split_modules also wraps BertEmbeddings.
    unset = broken(tmp_path, "fsdp", fsdp_config__fsdp_transformer_layer_cls_to_wrap=None)
    problems = problems_of(unset, recipe, machine=GPUS)
    assert problems[0].startswith(
        "fsdp_config.fsdp_transformer_layer_cls_to_wrap: FSDP2 would wrap units taken "
        "from the model's _no_split_modules"
    )
    assert "BertEmbeddings holds the input embeddings" in problems[0] and "set it to BertLayer" in problems[0]
    wrong = broken(tmp_path, "fsdp", fsdp_config__fsdp_transformer_layer_cls_to_wrap="LlamaDecoderLayer")
    problems = problems_of(wrong, recipe, machine=GPUS)
    assert problems == [(
        "fsdp_config.fsdp_transformer_layer_cls_to_wrap: 'LlamaDecoderLayer' is not a module class of "
        "BertForSequenceClassification; set it to BertLayer (the model declares _no_split_modules: "
        "['BertEmbeddings', 'BertLayer'])"
    )]
    # FSDP1 with a LoRA model (frozen base) needs use_orig_params.
    fsdp1 = broken(tmp_path, "fsdp", fsdp_config__fsdp_version=1, fsdp_config__fsdp_use_orig_params=False)
    problems = problems_of(fsdp1, lora, machine=GPUS)
    assert any(p.startswith("fsdp_config.fsdp_use_orig_params: must be true") for p in problems)


def test_deepspeed_with_a_recipe(recipe, tmp_path):
    ds = REPO / "recipes/accelerate/deepspeed_zero2.yaml"
    (precision,) = problems_of(ds, recipe, machine=GPUS)
    assert precision.startswith("bf16: DeepSpeed needs the recipe's precision to match") and "--bf16" in precision
    plan = check_launch(ds, {**recipe, "bf16": True}, machine=GPUS)
    assert plan.engine == "DeepSpeed ZeRO-2" and plan.global_batch == 4 * 8
    assert any("the GPU machine needs deepspeed" in note for note in plan.notes)
    for method in ("mmd", "dann"):  # a discriminator is sharded with the model under DeepSpeed too
        assert f"method {method}" in check_launch(ds, {**recipe, "bf16": True, "method": method}, machine=GPUS).model
    # ZeRO-3 partitions the parameters: the export gathers them only if the config asks for it.
    zero3 = broken(tmp_path, "deepspeed_zero2", deepspeed_config__zero_stage=3)
    (gather,) = problems_of(zero3, {**recipe, "bf16": True}, machine=GPUS)
    assert gather.startswith("deepspeed_config.zero3_save_16bit_model: must be true with zero_stage: 3")
    zero3 = broken(tmp_path, "deepspeed_zero2", deepspeed_config__zero_stage=3,
                   deepspeed_config__zero3_save_16bit_model=True)
    lora = {**recipe, "bf16": True, "peft": {"peft_type": "LORA", "r": 2, "target_modules": ["query"]}}
    assert check_launch(zero3, lora, machine=GPUS).engine == "DeepSpeed ZeRO-3"
    (merge,) = problems_of(zero3, {**lora, "merge_adapter": True}, machine=GPUS)
    assert merge.startswith("model.merge_adapter: DeepSpeed ZeRO-3 leaves no process a whole model")
    check_launch(ds, {**lora, "merge_adapter": True}, machine=GPUS)  # ZeRO-2: every process has the whole model
    missing = problems_of(
        ds, machine=Machine(gpus=1, gpu_bf16=True, cpu_bf16=True, cpu_cores=2, deepspeed=False), num_processes=1
    )
    assert missing == [
        "distributed_type: DEEPSPEED needs the deepspeed package, not installed here; `pip install -r "
        "requirements.txt` (which pins deepspeed) on the GPU machine"
    ]


def test_lifelong_recipes_run_on_ddp_only(tiny_model_dir, review_files):
    lifelong = {
        "model_name_or_path": tiny_model_dir,
        "lifelong_method": "ewc",
        "tasks": [
            {"name": "books", "data": review_files["source"]},
            {"name": "kitchen", "data": review_files["target"]},
        ],
    }
    assert check_launch(REPO / "recipes/accelerate/multi_cpu.yaml", lifelong, machine=CPU).engine == "DDP (gloo, CPU)"
    problems = problems_of(REPO / "recipes/accelerate/deepspeed_zero2.yaml", {**lifelong, "bf16": True}, machine=GPUS)
    assert problems == [
        "distributed_type: DEEPSPEED is not supported for lifelong recipes (one DeepSpeed engine per task on the same "
        "model was never validated); use recipes/accelerate/multi_cpu.yaml or recipes/accelerate/ddp.yaml (DDP)"
    ]


@pytest.mark.parametrize(
    "name,changes,expected",
    [
        (
            "fsdp",
            {"fsdp_config__fsdp_auto_wrap_polcy": "SIZE_BASED_WRAP"},
            "fsdp_config.fsdp_auto_wrap_polcy: unknown key, ignored by accelerate launch; did you mean "
            "'fsdp_auto_wrap_policy'?",
        ),
        (
            "fsdp",
            {"fsdp_config__fsdp_auto_wrap_policy": "TRANSFORMERS_WRAP"},
            "fsdp_config.fsdp_auto_wrap_policy: Accelerate refuses it: Invalid auto wrap policy: TRANSFORMERS_WRAP",
        ),
        ("fsdp", {"fsdp_config__fsdp_version": 3}, "fsdp_config.fsdp_version: unknown value 3; choose 1 or 2"),
        (
            "fsdp",
            {"fsdp_config__fsdp_state_dict_type": "HALF_STATE_DICT"},
            "fsdp_config.fsdp_state_dict_type: unknown value 'HALF_STATE_DICT'",
        ),
        (
            "fsdp",
            {"fsdp_config__fsdp_sync_module_states": False, "fsdp_config__fsdp_cpu_ram_efficient_loading": True},
            "fsdp_config.fsdp_sync_module_states: must be true with fsdp_cpu_ram_efficient_loading: true",
        ),
        (
            "deepspeed_zero2",
            {"deepspeed_config__zero_stage": 5},
            "deepspeed_config.zero_stage: unknown value 5; choose 0, 1, 2 or 3",
        ),
        (
            "deepspeed_zero2",
            {"deepspeed_config__offload_optimizer_device": "gpu"},
            "deepspeed_config.offload_optimizer_device: unknown value 'gpu'",
        ),
        (
            "deepspeed_zero2",
            {"deepspeed_config__offload_param_device": "cpu"},
            "deepspeed_config.offload_param_device: parameters are offloaded only with ZeRO-3",
        ),
        (
            "deepspeed_zero2",
            {"deepspeed_config__zero_stag": 3},
            "deepspeed_config.zero_stag: unknown key, ignored by accelerate launch; did you mean 'zero_stage'?",
        ),
        (
            "ddp",
            {"num_processs": 8},
            "num_processs: unknown accelerate config field (accelerate launch refuses the file); did you mean "
            "'num_processes'?",
        ),
        ("ddp", {"mixed_precision": "fp8"}, "mixed_precision: fp8 is not supported by hf_transfer recipes"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 20 else None,
)
def test_broken_copies_name_the_field(tmp_path, name, changes, expected):
    problems = problems_of(broken(tmp_path, name, **changes), machine=GPUS)
    assert any(p.startswith(expected) for p in problems), problems


def test_unreadable_configs(tmp_path):
    with pytest.raises(RecipeError, match="distributed_type: unknown value 'FSPD'; did you mean 'FSDP'"):
        check_launch(broken(tmp_path, "fsdp", distributed_type="FSPD"), machine=GPUS)
    with pytest.raises(RecipeError, match="config_file 'nope.yaml': file not found"):
        check_launch("nope.yaml", machine=GPUS)
    problems = problems_of(REPO / "recipes/accelerate/ddp.yaml", machine=Machine.assumed(2))
    assert problems == [
        "num_processes: 8 processes per machine, but the assumed machine has 2 GPU(s); set "
        "num_processes: 2 (or pass --num_processes 2)"
    ]
    assert check_launch(REPO / "recipes/accelerate/ddp.yaml", num_processes=2, machine=Machine.assumed(2))


def test_command_line(recipe, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    config = str(REPO / "recipes/accelerate/multi_cpu.yaml")
    assert main(["check-launch", "--config_file", config, str(path), "--per_device_train_batch_size", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {config}: ") and "global batch: 16 rows" in out
    bad = broken(tmp_path, "fsdp", fsdp_config__fsdp_version=3, fsdp_config__fsdp_auto_wrap_polcy="NO_WRAP")
    assert main(["check-launch", str(path), f"--config_file={bad}", "--assume_gpus", "8"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors[0].startswith("error: fsdp_config.fsdp_auto_wrap_polcy: unknown key")
    assert errors[1].startswith("error: fsdp_config.fsdp_version: unknown value 3")
    assert main(["check-launch", str(path)]) == 2
    assert "config_file: required" in capsys.readouterr().err
    assert main(["check-launch", "--config_file", config, "--mixed_precision", "bf17"]) == 2
    assert "mixed_precision: unknown value 'bf17'; did you mean 'bf16'?" in capsys.readouterr().err


def test_launched_processes_refuse_what_cannot_run(recipe, monkeypatch):
    """Inside `accelerate launch` (its environment variables), load_recipe refuses before anything loads. Run
    for real: `accelerate launch --config_file recipes/accelerate/fsdp.yaml ...` on a CPU prints the GPU problem
    once per process and exits with status 2 (docs/distributed.md)."""
    check_launched_engine(method_configs={})  # not launched with FSDP / DeepSpeed: nothing to check
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the test machine's answer, whatever it has
    with pytest.raises(LaunchConfigError) as err:
        load_recipe({**recipe, "method": "mmd"})
    (gpu,) = err.value.problems
    assert gpu.startswith("distributed_type: FSDP needs CUDA GPUs, and this machine has none")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(LaunchConfigError) as err:
        load_recipe({**recipe, "method": "dann"})
    assert err.value.problems[0] == gpu
    assert err.value.problems[1].startswith("method: dann train(s) parameters")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(LaunchConfigError) as err:
        load_recipe({**recipe, "peft": {"peft_type": "LORA", "r": 2, "target_modules": ["query"]},
                     "merge_adapter": True})
    assert err.value.problems[1].startswith("model.merge_adapter: FSDP leaves no process a whole model")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # a GPU machine: the adapter alone exports
    check_launched_engine(method_configs={}, merge_adapter=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # a GPU machine: only the recipe-kind refusal
    with pytest.raises(LaunchConfigError, match="^distributed_type: DEEPSPEED is not supported for lifelong recipes"):
        check_launched_engine(recipe_kind="lifelong")  # what load_lifelong_recipe calls
