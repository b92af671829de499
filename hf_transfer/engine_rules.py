"""The launch rules a process applies to itself: what FSDP / DeepSpeed cannot run here, checked when a recipe loads.

``hf-transfer launch-check`` (:mod:`hf_transfer.launch_check`) checks a launch config and a recipe before anything
starts; a process that ``accelerate launch`` started applies the same rules to itself when it reads its recipe
(:func:`check_launched_engine`, called by :func:`hf_transfer.recipe.load_recipe` and the families' loaders), so a
launch that skipped the check still fails with the reason instead of running wrong. Below the recipe layer: it
reads the environment Accelerate sets and the method registry, never a recipe.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

from .distributed import launched_engine
from .errors import RecipeError

MULTI_CPU_CONFIG = "recipes/accelerate/multi_cpu.yaml"
# Methods without parameters of their own, which every engine handles (the hint in the method-stack error).
_PARAMETER_FREE_HINT = "mmd, coral, entropy or mcc"


class LaunchConfigError(RecipeError):
    """One or more problems of a launch config (each names its field and the fix)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclasses.dataclass
class Machine:
    """The machine a launch is checked for: this one (:meth:`this_machine`) or an assumed GPU machine."""

    gpus: int
    gpu_bf16: bool
    cpu_bf16: bool
    cpu_cores: int
    deepspeed: bool
    #: described from this machine (False: assumed with ``--assume_gpus``, so its packages are not known)
    here: bool = True

    @classmethod
    def this_machine(cls) -> Machine:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return cls(
            gpus=gpus,
            gpu_bf16=bool(gpus) and torch.cuda.is_bf16_supported(),
            cpu_bf16=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            cpu_cores=os.cpu_count() or 1,
            deepspeed=importlib.util.find_spec("deepspeed") is not None,
        )

    @classmethod
    def assumed(cls, gpus: int) -> Machine:
        """A machine with ``gpus`` bf16-capable CUDA GPUs, and the packages its engine needs."""
        if gpus < 1:
            raise RecipeError(f"assume_gpus: must be >= 1, got {gpus}")
        return cls(gpus=gpus, gpu_bf16=True, cpu_bf16=True, cpu_cores=os.cpu_count() or 1, deepspeed=True, here=False)

    def describe(self) -> str:
        where = "this machine" if self.here else "the assumed machine"
        return (
            f"{where}: {self.gpus} CUDA GPU(s)" if self.gpus else f"{where}: no CUDA GPU, {self.cpu_cores} CPU cores"
        )


def methods_with_parameters(method_configs: dict[str, Any]) -> list[str]:
    """The recipe's methods that train parameters of their own (DANN's and CDAN's domain discriminators). They are
    built once with placeholder sizes: only whether they hold trainable parameters matters here."""
    from .methods import get_method_spec

    names = []
    for name, config in method_configs.items():
        cls = get_method_spec(name).method_class
        if cls is not None and any(p.requires_grad for p in cls(config, feature_dim=8, num_labels=2).parameters()):
            names.append(name)
    return names


def _as_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None  # "auto" and the like: left to the engine


def _engine_refusals(
    distributed_type: str,
    *,
    recipe_kind: str,
    parametric_methods: list[str],
    fsdp_version: int | None,
    merge_adapter: bool = False,
    zero_stage: int | None = None,
    zero3_saves_model: bool = True,
) -> list[str]:
    """Recipe and engine combinations that cannot work, whatever the machine (shared with the launched check).
    Each was seen failing on a GPU, or follows from code that was (docs/distributed.md)."""
    problems = []
    if distributed_type not in ("FSDP", "DEEPSPEED"):
        return problems
    shards_parameters = distributed_type == "FSDP" or zero_stage == 3
    if merge_adapter and shards_parameters:
        engine = "FSDP" if distributed_type == "FSDP" else "DeepSpeed ZeRO-3"
        problems.append(
            f"model.merge_adapter: {engine} leaves no process a whole model to merge the adapter into (FSDP refuses "
            "to deep-copy a sharded module). Set merge_adapter: false; the adapter is exported, and "
            "hf_transfer.run.load_trained(<output_dir>)[0].merge_and_unload() merges it after training"
        )
    if distributed_type == "DEEPSPEED" and zero_stage == 3 and not zero3_saves_model:
        problems.append(
            "deepspeed_config.zero3_save_16bit_model: must be true with zero_stage: 3, or the trained model cannot "
            "be gathered for export (Accelerate's get_state_dict refuses: stage3_gather_16bit_weights_on_model_save "
            "is false)"
        )
    if recipe_kind == "lifelong":
        why = (
            "FSDP2's forward gathers the shards on every process in lockstep, while each process scores its own "
            "share of the evaluation rows (and of the Fisher rows) outside the engine: a hang"
            if distributed_type == "FSDP"
            else "one DeepSpeed engine per task on the same model was never validated"
        )
        problems.append(
            f"distributed_type: {distributed_type} is not supported for lifelong recipes ({why}); use "
            f"{MULTI_CPU_CONFIG} or recipes/accelerate/ddp.yaml (DDP)"
        )
    if recipe_kind == "pretrain":
        problems.append(
            f"distributed_type: {distributed_type} is not supported for pretrain recipes (each process scores its "
            "share of the held-out text outside the engine, and the export merges and saves the whole model; "
            f"neither was run under a sharding engine); use {MULTI_CPU_CONFIG} or recipes/accelerate/ddp.yaml (DDP)"
        )
    if parametric_methods and distributed_type == "FSDP" and fsdp_version != 2:
        # Under FSDP2 and DeepSpeed the trainer makes the method stack a submodule of the model, which the engine
        # shards and optimises with the model (tests/test_distributed_equivalence.py). FSDP1 was never run so.
        problems.append(
            f"method: {', '.join(parametric_methods)} train(s) parameters of their own (a domain discriminator), "
            "which were never trained under FSDP1; use fsdp_version: 2 (recipes/accelerate/fsdp.yaml), DeepSpeed "
            f"or DDP, or a method without parameters ({_PARAMETER_FREE_HINT})"
        )
    return problems


def _machine_problems(dtype: str, n: int, machines: int, precision: str, machine: Machine) -> list[str]:
    problems = []
    gpu_engine = dtype in ("FSDP", "DEEPSPEED")
    per_machine = max(1, n // max(1, machines))
    if gpu_engine and not machine.gpus:
        engine = "FSDP" if dtype == "FSDP" else "DeepSpeed"
        consequence = (
            "crash loading the model (FSDP's low-memory loading leaves every rank but the first with "
            "weights on the meta device)"
            if dtype == "FSDP"
            else "silently run as DDP over gloo instead"
        )
        problems.append(
            f"distributed_type: {dtype} needs CUDA GPUs, and this machine has none: Accelerate turns {engine} on "
            f"only for a GPU (or other accelerator) process group, never for gloo on the CPU, so here it would "
            f"{consequence}. Run it on a GPU machine (check it from here with --assume_gpus N), or use "
            f"{MULTI_CPU_CONFIG} on this one"
        )
    elif (gpu_engine or dtype == "MULTI_GPU") and machine.gpus and per_machine > machine.gpus:
        where = "this machine" if machine.here else "the assumed machine"
        problems.append(
            f"num_processes: {per_machine} processes per machine, but {where} has {machine.gpus} GPU(s); "
            f"set num_processes: {machine.gpus * machines} (or pass --num_processes "
            f"{machine.gpus * machines})"
        )
    uses_gpu = bool(machine.gpus) and dtype != "MULTI_CPU"
    if precision == "fp8":
        problems.append("mixed_precision: fp8 is not supported by hf_transfer recipes; use bf16")
    elif precision == "bf16" and uses_gpu and not machine.gpu_bf16:
        problems.append("mixed_precision: bf16 needs an Ampere or newer GPU and this one has none; set fp16")
    elif precision == "fp16" and not uses_gpu:
        problems.append(
            "mixed_precision: fp16 needs a GPU (Accelerate skips fp16 autocast on the CPU, so it would "
            "train in fp32); set 'no', or bf16 on a CPU with bf16 support"
        )
    elif precision == "bf16" and not uses_gpu and not machine.cpu_bf16:
        problems.append(
            "mixed_precision: bf16 on the CPU needs AVX512-BF16/AMX support, which this CPU lacks; set 'no'"
        )
    return problems


def check_launched_engine(
    *, recipe_kind: str = "transfer", method_configs: dict[str, Any] | None = None, merge_adapter: bool = False
) -> None:
    """Refuse, in a launched process, what :func:`check_launch` refuses: FSDP or DeepSpeed without a GPU (which
    Accelerate would silently turn into CPU DDP, or crash on), and the recipe and engine combinations that cannot
    work. Called by ``load_recipe``; a no-op outside FSDP / DeepSpeed launches."""
    dtype = launched_engine()
    if dtype is None:
        return
    import torch

    problems = []
    if not torch.cuda.is_available():
        problems += _machine_problems(dtype, 1, 1, "no", Machine.this_machine())
    version = int(os.environ.get("FSDP_VERSION", "1")) if dtype == "FSDP" else None
    parametric = methods_with_parameters(method_configs or {})
    stage = _as_int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")) if dtype == "DEEPSPEED" else None
    saves = bool(os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")) or (
        os.environ.get("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "false").lower() == "true"
    )
    problems += _engine_refusals(
        dtype,
        recipe_kind=recipe_kind,
        parametric_methods=parametric,
        fsdp_version=version,
        merge_adapter=merge_adapter,
        zero_stage=stage,
        zero3_saves_model=saves,
    )
    if problems:
        raise LaunchConfigError(problems)
