"""Dry-run validation of an ``accelerate launch`` config against a recipe and its model, without training.

``hf-transfer check-launch --config_file recipes/accelerate/fsdp.yaml RECIPE.yaml`` reads the config with
Accelerate's own loader, merges it the way ``accelerate launch`` does (``_validate_launch_command``), builds the
environment the launched processes would get, and constructs Accelerate's own FSDP / DeepSpeed plugin from it, so a
bad value fails here exactly as it would on the cluster. It then checks the config against

* the machine: the engine's devices (FSDP and DeepSpeed need CUDA GPUs: Accelerate 1.x turns them on only for
  an accelerator process group, never for gloo on the CPU), ``num_processes`` against the GPUs, mixed precision
  against the hardware, the ``deepspeed`` package;
* the recipe and its model, built on the ``meta`` device (no weights are read): FSDP's auto-wrap classes exist in
  the model, FSDP1 with frozen parameters (PEFT, freezing plans) needs ``use_orig_params``, and the method stack's
  own parameters (a domain discriminator) or a lifelong recipe are refused where the engine cannot handle them.

Every problem is reported at once, each naming the config field (or recipe field) and the fix
(:class:`LaunchConfigError`, a :class:`~hf_transfer.errors.RecipeError`: exit status 2 on the command line);
otherwise a :class:`LaunchPlan` says what would run. ``--assume_gpus N`` checks for a machine with N CUDA GPUs
instead of this one (to validate a GPU config from a laptop). What was run for real and what only here:
docs/distributed.md.

:func:`check_launched_engine` is the part of these checks that needs no config file: ``load_recipe`` calls it
inside every launched process, so a refused combination fails before anything loads instead of deep inside
Accelerate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .defaults import DEFAULT_LORA
from .distributed import launched_engine  # noqa: F401  (also named here)
from .engine_rules import (  # noqa: F401  (the rules a launched process applies; also named here)
    MULTI_CPU_CONFIG,
    LaunchConfigError,
    Machine,
    _as_int,
    _engine_refusals,
    _machine_problems,
    check_launched_engine,
    methods_with_parameters,
)
from .errors import RecipeError, did_you_mean, unknown_choice
from .families import family_of

#: what ``accelerate config`` offers for these DeepSpeed fields (the plugin itself accepts any value)
ZERO_STAGES = (0, 1, 2, 3)
OFFLOAD_DEVICES = ("none", "cpu", "nvme")
FSDP_VERSIONS = (1, 2)
ZERO_SHARDING = {
    0: "none (plain data parallelism)",
    1: "optimizer state",
    2: "optimizer state and gradients",
    3: "parameters, gradients and optimizer state",
}
# Accelerate's FSDP plugin ValueErrors -> the fsdp_config field they are about (KeyErrors name the value).
_FSDP_ERROR_FIELDS = (
    (r"auto wrap policy", "fsdp_auto_wrap_policy"),
    (r"reshard_after_forward", "fsdp_reshard_after_forward"),
    (r"forward_prefetch", "fsdp_forward_prefetch"),
    (r"activation_checkpointing_offload", "fsdp_activation_checkpointing_offload"),
    (r"min_num_params", "fsdp_min_num_params"),
    (r"offload", "fsdp_offload_params"),
)


@dataclasses.dataclass
class LaunchPlan:
    """What ``accelerate launch --config_file ...`` would run, once every check passed."""

    config_file: str
    engine: str
    num_processes: int
    num_machines: int
    mixed_precision: str
    sharding: str
    machine: str
    recipe: str | None = None
    model: str | None = None
    global_batch: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """Multi-line, human-readable: the first line starts with ``ok:``."""
        processes = f"{self.num_processes} process(es)"
        if self.num_machines > 1:
            processes += f" on {self.num_machines} machines"
        lines = [
            f"ok: {self.config_file}: {self.engine}, {processes}, mixed precision {self.mixed_precision}",
            f"  sharding: {self.sharding}",
            f"  checked for {self.machine}",
        ]
        if self.recipe:
            lines.append(f"  recipe: {self.recipe}")
        if self.model:
            lines.append(f"  model: {self.model}")
        if self.global_batch:
            lines.append(f"  global batch: {self.global_batch} rows per optimizer step")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The config, read and merged by Accelerate's own code
# ---------------------------------------------------------------------------------------------------------------


def load_launch_config(config_file: str | os.PathLike):
    """The config as Accelerate reads it (``load_config_from_file``), its errors turned into field-naming ones."""
    import yaml
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DistributedType

    path = Path(config_file)
    if not path.is_file():
        raise RecipeError(
            f"config_file {str(path)!r}: file not found; pass an accelerate config such as {MULTI_CPU_CONFIG}"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) if path.suffix != ".json" else None
    except yaml.YAMLError as err:
        raise RecipeError(f"config_file {str(path)!r}: malformed YAML: {str(err).splitlines()[0]}") from None
    if raw is not None and not isinstance(raw, dict):
        raise RecipeError(f"config_file {str(path)!r}: expected a mapping of field: value")
    if raw is not None:
        fields = {f.name for f in dataclasses.fields(ClusterConfig)} | {"fp16", "dynamo_backend"}
        unknown = [key for key in raw if key not in fields]
        if unknown:
            raise LaunchConfigError(
                [
                    f"{key}: unknown accelerate config field (accelerate launch refuses the file)"
                    f"{did_you_mean(key, sorted(fields))}"
                    for key in unknown
                ]
            )
        if raw.get("compute_environment", "LOCAL_MACHINE") != "LOCAL_MACHINE":
            raise RecipeError(
                f"compute_environment: only LOCAL_MACHINE configs are checked, got {raw['compute_environment']!r}"
            )
        if "distributed_type" not in raw:
            raise RecipeError("distributed_type: missing; set NO, MULTI_CPU, MULTI_GPU, FSDP or DEEPSPEED")
        if raw["distributed_type"] not in {t.value for t in DistributedType}:
            raise unknown_choice("distributed_type", str(raw["distributed_type"]), [t.value for t in DistributedType])
    try:
        return load_config_from_file(str(path))
    except (ValueError, TypeError) as err:
        raise RecipeError(f"config_file {str(path)!r}: {err}") from None


def _launch_args(config_file: str, num_processes: int | None, mixed_precision: str | None):
    """``accelerate launch``'s own argument namespace for this config (and the command-line overrides), merged by
    its ``_validate_launch_command``."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    argv = ["--config_file", str(config_file)]
    if num_processes is not None:
        argv += ["--num_processes", str(num_processes)]
    if mixed_precision is not None:
        argv += ["--mixed_precision", mixed_precision]
    args = parser.parse_args([*argv, "-m", "hf_transfer", "train"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args, _, from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as launch_command does before it starts the DeepSpeed launcher
        fields = list(load_launch_config(config_file).deepspeed_config) + (["mixed_precision"] if from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    return args


def _launcher_env(args) -> dict[str, str]:
    """The variables ``accelerate launch`` would add to each process's environment."""
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = prepare_deepspeed_cmd_env(args)[1] if args.use_deepspeed else prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if os.environ.get(k) != v}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _unknown_block_keys(parser, block: str, values: dict[str, Any], prefix: str) -> list[str]:
    """Keys of ``fsdp_config`` / ``deepspeed_config`` that no ``accelerate launch`` option reads: Accelerate copies
    them onto its arguments and ignores them silently."""
    options = {a.dest for a in parser._actions}
    known = sorted(o for o in options if not prefix or o.startswith(prefix))
    problems = []
    for key in values:
        name = key if key.startswith(prefix) else prefix + key
        if name not in options:
            problems.append(f"{block}.{key}: unknown key, ignored by accelerate launch{did_you_mean(name, known)}")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# The engines
# ---------------------------------------------------------------------------------------------------------------


def _fsdp_plugin(env: dict[str, str], config, mixed_precision: str, problems: list[str]):
    """Accelerate's FSDP plugin, built from the launcher's environment as each process would build it."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    version = config.fsdp_config.get("fsdp_version", 1)
    if str(version) not in {str(v) for v in FSDP_VERSIONS}:
        problems.append(
            f"fsdp_config.fsdp_version: unknown value {version!r}; choose 1 or 2 (2 = FSDP2, per-parameter "
            "sharding, recommended)"
        )
        return None
    # FSDP1 syncs module states from a device it looks up while the plugin is built; on a machine without one
    # (checking for an assumed GPU machine) build it without, which changes nothing else the checks read.
    no_device = {"FSDP_SYNC_MODULE_STATES": "false", "FSDP_CPU_RAM_EFFICIENT_LOADING": "false"}
    for attempt in (env, {**env, **no_device}):
        try:
            with _environment(attempt), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plugin = FullyShardedDataParallelPlugin()
                if mixed_precision not in ("no", "fp8"):
                    plugin.set_mixed_precision(mixed_precision)
            return plugin
        except RuntimeError as err:
            if "no available devices" in str(err):
                continue
            problems.append(f"fsdp_config: {err}")
        except KeyError as err:  # an enum lookup (state dict type, prefetch, sharding strategy): name the value's key
            value = str(err).strip("'\"")
            key = next((k for k, v in config.fsdp_config.items() if str(v).upper() == value.upper()), None)
            problems.append(
                f"fsdp_config{'.' + key if key else ''}: unknown value {value!r}, Accelerate has no such "
                "option; see `accelerate config` for the choices"
            )
        except (ValueError, TypeError) as err:
            message = str(err)
            field = next((f for pattern, f in _FSDP_ERROR_FIELDS if re.search(pattern, message)), None)
            where = f"fsdp_config.{field}" if field else "fsdp_config"
            problems.append(f"{where}: Accelerate refuses it: {message}")
        return None
    return None


def _deepspeed_plugin(env: dict[str, str], config, problems: list[str]):
    """Accelerate's DeepSpeed plugin from the launcher's environment, after the value checks it does not make."""
    from accelerate.utils import DeepSpeedPlugin

    ds = config.deepspeed_config
    config_file = ds.get("deepspeed_config_file")
    if config_file and not Path(config_file).is_file():
        problems.append(f"deepspeed_config.deepspeed_config_file: {config_file!r} not found")
        return None
    if not config_file:
        before = len(problems)
        stage = ds.get("zero_stage", 2)
        if stage not in ZERO_STAGES:
            problems.append(f"deepspeed_config.zero_stage: unknown value {stage!r}; choose 0, 1, 2 or 3")
        for key in ("offload_optimizer_device", "offload_param_device"):
            device = str(ds.get(key, "none")).lower()
            if device not in OFFLOAD_DEVICES:
                problems.append(unknown_choice(f"deepspeed_config.{key}", device, OFFLOAD_DEVICES).args[0])
            elif device == "nvme" and not ds.get(key.replace("_device", "_nvme_path")):
                problems.append(
                    f"deepspeed_config.{key.replace('_device', '_nvme_path')}: needed with "
                    f"{key}: nvme; set the NVMe folder"
                )
        if ds.get("offload_param_device", "none") != "none" and stage != 3:
            problems.append(
                f"deepspeed_config.offload_param_device: parameters are offloaded only with ZeRO-3; "
                f"set zero_stage: 3 or offload_param_device: none (zero_stage is {stage})"
            )
        if len(problems) > before:
            return None
    try:
        with _environment(env), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return DeepSpeedPlugin()
    except (ValueError, KeyError, TypeError, OSError) as err:
        problems.append(f"deepspeed_config: Accelerate refuses it: {err}")
    return None


def _wrap_units(plugin, model) -> tuple[list, str | None]:
    """The modules FSDP's auto-wrap policy would make their own shard units, or the problem."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    try:
        policy = fsdp2_prepare_auto_wrap_policy(plugin, model)  # one policy function, FSDP1 or 2 alike
    except ValueError as err:
        missing = re.search(r"class (\S+) in the model", str(err))
        name = missing.group(1) if missing else str(err)
        return [], (
            f"fsdp_config.fsdp_transformer_layer_cls_to_wrap: {name!r} is not a module class of "
            f"{_model_type(model)}; {_layer_hint(model)}"
        )
    if policy is None:
        return [], None
    return [m for m in model.modules() if m is not model and policy(m)], None


def _carve_out_conflicts(model, units: list) -> list[str]:
    """Modules that Accelerate's FSDP2 preparation (``fsdp2_prepare_model``) shards on their own after the auto-wrap
    units, the input embeddings (untied) and the final norm and output embeddings, but that already sit inside one
    of those units: ``fully_shard`` then fails on their already sharded weights (``Invariant encountered: value was
    None``; seen with BERT, whose ``_no_split_modules`` names ``BertEmbeddings``)."""
    from accelerate.utils.fsdp_utils import _find_final_norm

    inputs = getattr(model, "get_input_embeddings", lambda: None)()
    outputs = getattr(model, "get_output_embeddings", lambda: None)()
    tied = (
        inputs is not None
        and outputs is not None
        and getattr(inputs, "weight", None) is getattr(outputs, "weight", object())
    )
    separate = {
        "input embeddings": None if tied else inputs,
        "final norm": _find_final_norm(model),
        "output embeddings": outputs,
    }
    conflicts = []
    for what, module in separate.items():
        if module is None or any(module is unit for unit in units):
            continue
        owner = next((u for u in units if any(module is sub for sub in u.modules())), None)
        if owner is not None:
            conflicts.append(f"{type(owner).__name__} holds the {what}")
    return conflicts


def _model_type(model) -> str:
    from .backbones import _unwrap

    return type(_unwrap(model)).__name__


def _layer_hint(model) -> str:
    """The fix for a wrap class that is missing: the model's repeated layer and its declared no-split modules."""
    from .backbones import _unwrap, encoder_layers
    from .errors import UserError

    try:
        layer = type(encoder_layers(model)[0]).__name__
    except UserError:
        layer = None
    declared = getattr(_unwrap(model), "_no_split_modules", None)
    fix = f"set it to {layer}" if layer else "name the model's repeated block class"
    return f"{fix} (the model declares _no_split_modules: {sorted(declared) if declared else 'none'})"


# ---------------------------------------------------------------------------------------------------------------
# The recipe and its model
# ---------------------------------------------------------------------------------------------------------------


def _meta_model(recipe) -> Any:
    """The recipe's model with the freezing plan and PEFT applied, built on the ``meta`` device (no weights)."""
    import torch
    from transformers import AutoConfig

    from .backbones import _load_error, resolve_model_path, set_trainable_top_layers, wrap_with_peft

    base = getattr(recipe, "base", recipe)
    name = base.model.model_name_or_path
    num_labels = base.model.num_labels or 2
    hub = dict(revision=base.model.revision, trust_remote_code=base.model.trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(name), num_labels=num_labels, **hub)
    except (OSError, ValueError) as err:
        raise _load_error(name, err) from None
    auto = base.data.resolved_task.auto_class()  # the recipe's task (hf_transfer.tasks) names its Auto class
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=base.model.trust_remote_code)
    if base.model.freeze_backbone:
        set_trainable_top_layers(model, 0)
    elif base.model.trainable_layers is not None:
        set_trainable_top_layers(model, base.model.trainable_layers)
    peft = recipe.peft
    if _recipe_kind(recipe) == "lifelong" and recipe.lifelong.lifelong_method == "adapter":
        peft = {"peft_type": "LORA", **DEFAULT_LORA, "target_modules": ["query", "value"], **(peft or {})}
    if peft:
        with torch.device("meta"):
            model = wrap_with_peft(model, peft)
    return model


# The families' names as the launch messages say them (hf_transfer/families.py registers the families).
_FAMILY_WORDS = {"meta": "meta-learning", "multitask": "multi-task"}


def _recipe_kind(recipe) -> str:
    family = family_of(recipe)
    return _FAMILY_WORDS.get(family, family)


# ---------------------------------------------------------------------------------------------------------------
# The whole check
# ---------------------------------------------------------------------------------------------------------------


def check_launch(
    config_file: str | os.PathLike,
    recipe: str | os.PathLike | dict | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    num_processes: int | None = None,
    mixed_precision: str | None = None,
    machine: Machine | None = None,
) -> LaunchPlan:
    """Validate ``accelerate launch --config_file config_file -m hf_transfer train recipe`` without training.

    Args:
        config_file: an accelerate config (``recipes/accelerate/*.yaml``).
        recipe: the recipe (path or mapping) to check against the config; ``None`` checks the config alone.
        overrides: recipe overrides, as for ``hf-transfer train``.
        num_processes, mixed_precision: ``accelerate launch`` command-line overrides of the config.
        machine: the machine to check for (default: this one; :meth:`Machine.assumed` for a GPU machine).

    Returns:
        the :class:`LaunchPlan` (``plan.summary()`` for people).

    Raises:
        LaunchConfigError: every problem found, each naming its field and the fix.
        RecipeError: an unreadable config, or a bad recipe (as ``hf-transfer train`` would report it).
    """
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import PrecisionType

    if mixed_precision is not None and mixed_precision not in PrecisionType.list():
        raise unknown_choice("mixed_precision", mixed_precision, PrecisionType.list())
    if num_processes is not None and num_processes < 1:
        raise RecipeError(f"num_processes: must be >= 1 (one process per device), got {num_processes}")
    machine = machine or Machine.this_machine()
    config = load_launch_config(config_file)
    parser = launch_command_parser()
    problems = _unknown_block_keys(parser, "fsdp_config", config.fsdp_config, "fsdp_")
    problems += _unknown_block_keys(parser, "deepspeed_config", config.deepspeed_config, "")
    try:
        args = _launch_args(config_file, num_processes, mixed_precision)
        env = _launcher_env(args) if args.use_fsdp or args.use_deepspeed else {}
    except ValueError as err:
        raise LaunchConfigError([*problems, _launch_error(str(err))]) from None
    dtype = config.distributed_type.value
    n, machines, precision = int(args.num_processes), int(args.num_machines or 1), str(args.mixed_precision)
    if n < 1 or machines < 1:  # accelerate itself only refuses -1 ("unset"); 0 or -3 would launch nothing
        name, value = ("num_processes", n) if n < 1 else ("num_machines", machines)
        raise LaunchConfigError([*problems, f"{name}: must be >= 1 in {str(config_file)!r}, got {value}; set it"])
    plugin = None
    if dtype == "FSDP":
        plugin = _fsdp_plugin(env, config, precision, problems)
    elif dtype == "DEEPSPEED":
        plugin = _deepspeed_plugin(env, config, problems)

    problems += _machine_problems(dtype, n, machines, precision, machine)
    engine, sharding, notes = _describe(dtype, n, plugin, config, machine)
    plan = LaunchPlan(
        config_file=str(config_file),
        engine=engine,
        num_processes=n,
        num_machines=machines,
        mixed_precision=precision,
        sharding=sharding,
        machine=machine.describe(),
        notes=notes,
    )
    if dtype == "DEEPSPEED" and not machine.deepspeed:
        problems.append(
            "distributed_type: DEEPSPEED needs the deepspeed package, not installed here; "
            "`pip install -r requirements.txt` (which pins deepspeed) on the GPU machine"
        )
    elif dtype == "DEEPSPEED" and not machine.here:
        notes.append("the GPU machine needs deepspeed (`pip install -r requirements.txt` pins it)")
    efficient_loading = (config.fsdp_config or {}).get("fsdp_cpu_ram_efficient_loading", False)
    if dtype == "FSDP" and n > 1 and str(efficient_loading).lower() == "true":
        notes.append(
            "fsdp_cpu_ram_efficient_loading: true (weights read by the main process only) went wrong with 2 FSDP2 "
            "processes on the CPU: the second process's shard of the new classifier's bias was updated twice a "
            "step, and saving a checkpoint failed (KeyError in torch's get_optimizer_state_dict); with false the "
            "run equals one process (docs/distributed.md). Unchecked on GPUs"
        )

    if recipe is not None:
        problems += _recipe_problems(plan, recipe, overrides, config, plugin, notes)
    if problems:
        raise LaunchConfigError(problems)
    return plan


def _launch_error(message: str) -> str:
    """An error of ``accelerate launch``'s own argument checks, as a field-naming problem."""
    if "fsdp_cpu_ram_efficient_loading" in message:
        return (
            "fsdp_config.fsdp_sync_module_states: must be true with fsdp_cpu_ram_efficient_loading: true (only "
            "the first process reads the weights; the others receive them)"
        )
    if "at least 2 processes" in message:
        return (
            "num_processes: MULTI_GPU needs at least 2 processes; raise num_processes, or use "
            "distributed_type: NO for one process"
        )
    if "manually pass in `--num_processes`" in message:
        return "num_processes: the config leaves it unset (-1); set it, or pass --num_processes N"
    if "mixed_precision" in message or "bf16" in message:
        return f"mixed_precision: {message}"
    return f"config: accelerate launch refuses it: {message}"


def _describe(dtype: str, n: int, plugin, config, machine: Machine) -> tuple[str, str, list[str]]:
    notes: list[str] = []
    if dtype == "NO":
        return "one process", "none", notes
    if dtype in ("MULTI_GPU", "MULTI_CPU"):
        if dtype == "MULTI_CPU" or not machine.gpus:
            notes.append("no GPU: DDP over gloo on the CPU (hf_transfer sets use_cpu when launched without CUDA)")
            engine = "DDP (gloo, CPU)"
        else:
            engine = "DDP (NCCL)"
        if n > machine.cpu_cores and engine.startswith("DDP (gloo"):
            notes.append(f"{n} processes on {machine.cpu_cores} CPU cores: they will share cores")
        return engine, "none: every process holds the whole model; gradients are all-reduced", notes
    if dtype == "FSDP":
        fsdp = config.fsdp_config
        version = plugin.fsdp_version if plugin is not None else fsdp.get("fsdp_version", 1)
        what = (
            "parameters, gradients and optimizer state"
            if str(version) == "2" or str(fsdp.get("fsdp_sharding_strategy", "FULL_SHARD")).upper() == "FULL_SHARD"
            else f"{fsdp.get('fsdp_sharding_strategy')}"
        )
        extra = []
        if plugin is not None and str(version) == "2":
            extra.append(f"reshard after forward: {str(plugin.reshard_after_forward).lower()}")
        if str(fsdp.get("fsdp_offload_params", False)).lower() == "true":
            extra.append("parameters offloaded to the CPU")
        extra.append(f"state dict: {fsdp.get('fsdp_state_dict_type', 'default')}")
        return f"FSDP{version}", f"{what} sharded over {n} processes ({'; '.join(extra)})", notes
    ds = config.deepspeed_config
    stage = getattr(plugin, "zero_stage", ds.get("zero_stage", 2))
    sharding = ZERO_SHARDING.get(stage, f"ZeRO stage {stage}")
    offload = [
        f"{k.split('_')[1]} offloaded to {ds[k]}"
        for k in ("offload_optimizer_device", "offload_param_device")
        if str(ds.get(k, "none")) != "none"
    ]
    detail = f" sharded over {n} processes" if stage else ""
    return f"DeepSpeed ZeRO-{stage}", sharding + detail + (f" ({'; '.join(offload)})" if offload else ""), notes


def _recipe_problems(plan: LaunchPlan, recipe, overrides, config, plugin, notes: list[str]) -> list[str]:
    import torch

    from .backbones import count_parameters
    from .recipe import load_recipe, parse_cli_overrides

    dtype, n = config.distributed_type.value, plan.num_processes
    if isinstance(overrides, list):
        overrides = parse_cli_overrides(overrides)
    overrides = dict(overrides or {})
    if not torch.cuda.is_available():  # parsed here only, never trained: TrainingArguments refuses bf16 without it
        overrides.setdefault("use_cpu", True)
    parsed = load_recipe(recipe, overrides)
    base = getattr(parsed, "base", parsed)
    kind = _recipe_kind(parsed)
    args = base.training
    plan.recipe = str(recipe) if not isinstance(recipe, dict) else f"a {kind} recipe"
    plan.global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * n
    fsdp_version = int(plugin.fsdp_version) if dtype == "FSDP" and plugin is not None else None
    parametric = methods_with_parameters(base.method_configs) if kind == "transfer" else []
    ds = config.deepspeed_config or {}
    zero_stage = _as_int(getattr(plugin, "zero_stage", ds.get("zero_stage", 2))) if dtype == "DEEPSPEED" else None
    # A DeepSpeed JSON file decides for itself (stage3_gather_16bit_weights_on_model_save): not checked here.
    saves = ds.get("deepspeed_config_file") or getattr(
        plugin, "zero3_save_16bit_model", ds.get("zero3_save_16bit_model")
    )
    problems = _engine_refusals(
        dtype,
        recipe_kind=kind,
        parametric_methods=parametric,
        fsdp_version=fsdp_version,
        merge_adapter=kind == "transfer" and bool(base.peft) and base.model.merge_adapter,
        zero_stage=zero_stage,
        zero3_saves_model=bool(saves) and str(saves).lower() != "false",
    )
    if parametric and dtype in ("FSDP", "DEEPSPEED") and args.max_grad_norm and not problems:
        notes.append(
            f"method: {', '.join(parametric)}: the discriminator is sharded with the model here, so max_grad_norm "
            f"({args.max_grad_norm:g}) clips its gradients together with the model's (one process or DDP clips the "
            "model's alone); set max_grad_norm: 0 for the same updates as DDP (docs/distributed.md)"
        )
    if kind in ("meta-learning", "multi-task") and dtype in ("FSDP", "DEEPSPEED"):
        notes.append(f"{kind} recipes were not validated under {dtype} (only flat transfer recipes and DDP)")
    if dtype == "DEEPSPEED" and plan.mixed_precision in ("bf16", "fp16") and not getattr(args, plan.mixed_precision):
        problems.append(
            f"{plan.mixed_precision}: DeepSpeed needs the recipe's precision to match the config's "
            f"mixed_precision: {plan.mixed_precision} (transformers refuses 'ds {plan.mixed_precision}."
            f"enabled=True vs hf {plan.mixed_precision}=False'); add {plan.mixed_precision}: true to the "
            f"recipe (or pass --{plan.mixed_precision})"
        )
    if args.fp16 and plan.mixed_precision == "bf16" or args.bf16 and plan.mixed_precision == "fp16":
        problems.append(
            f"{'fp16' if args.fp16 else 'bf16'}: the recipe asks for one half precision and the config "
            f"(mixed_precision: {plan.mixed_precision}) for the other; remove it from the recipe"
        )

    model = _meta_model(parsed)
    trainable, total = count_parameters(model)
    plan.model = (
        f"{base.model.model_name_or_path} ({_model_type(model)}), {trainable:,} of {total:,} parameters "
        f"trainable" + (f"; method {'+'.join(base.methods.method)}" if kind == "transfer" else "")
    )
    if dtype != "FSDP" or plugin is None:
        return problems
    units, problem = _wrap_units(plugin, model)
    policy = str(config.fsdp_config.get("fsdp_auto_wrap_policy") or "NO_WRAP").upper()
    conflicts = _carve_out_conflicts(model, units) if fsdp_version == 2 and units else []
    if problem:
        problems.append(problem)
    elif conflicts:
        source = (
            "fsdp_transformer_layer_cls_to_wrap"
            if config.fsdp_config.get("fsdp_transformer_layer_cls_to_wrap")
            else "the model's _no_split_modules, since fsdp_transformer_layer_cls_to_wrap is unset"
        )
        problems.append(
            f"fsdp_config.fsdp_transformer_layer_cls_to_wrap: FSDP2 would wrap units taken from {source}, and "
            f"{'; '.join(conflicts)}, which Accelerate then shards again on its own: fully_shard fails ('Invariant "
            f"encountered: value was None'). Name only the repeated layer: {_layer_hint(model)}"
        )
    elif units:
        plan.sharding += f"; shard units: {', '.join(sorted({type(u).__name__ for u in units}))}"
    elif policy == "TRANSFORMER_BASED_WRAP":
        problems.append(
            f"fsdp_config.fsdp_transformer_layer_cls_to_wrap: TRANSFORMER_BASED_WRAP finds no layer class "
            f"to wrap in {_model_type(model)} (the whole model would be one unit, gathered at once); "
            f"{_layer_hint(model)}"
        )
    else:
        notes.append(f"{policy}: no module is wrapped on its own, the whole model is one FSDP unit")
    frozen = trainable < total or base.model.gradual_unfreezing_steps
    if fsdp_version == 1 and frozen and not plugin.use_orig_params:
        problems.append(
            "fsdp_config.fsdp_use_orig_params: must be true when only part of the model trains (PEFT or "
            "a freezing plan); or use fsdp_version: 2"
        )
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Inside a launched process
# ---------------------------------------------------------------------------------------------------------------


