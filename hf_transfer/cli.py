"""``hf-transfer`` command line: ``train``, ``evaluate``, ``push``, ``diagnose``. Also ``python -m hf_transfer``.

User errors (bad recipe, bad data) print one line ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

USAGE = """\
hf-transfer train [RECIPE.yaml] [--field value ...]
    Train from a recipe (or the embedded defaults). Any recipe field can be overridden:
      hf-transfer train recipes/text_classification/finetune.yaml --source_data a.jsonl --target_data b.jsonl \\
          --output_dir out --max_steps 150
      hf-transfer train recipes/text_classification/lora.yaml --peft.r 16
      accelerate launch --config_file recipes/accelerate/multi_cpu.yaml -m hf_transfer train RECIPE.yaml
hf-transfer evaluate MODEL_DIR --data FILE [--text_column text | --image_column image] [--label_column label]
hf-transfer evaluate MODEL --data FILE --shots K [--episodes 20] [--query_data TEST_FILE] [--adapt finetune]
    Few-shot: adapt on K labelled rows per class, accuracy mean and 95% interval over episodes
    (docs/meta_lifelong.md).
hf-transfer push MODEL_DIR --hub_model_id USER/NAME [--private]
hf-transfer diagnose --source A [B ...] --target T [--models M1 M2 ...] --output DIR [--trained_model MODEL_DIR]
        [--streaming]
    Domain gap, transferability ranking, learning curve and a recommended method: report.html,
    diagnostics.json and PNGs in DIR (docs/diagnostics.md).
hf-transfer methods
hf-transfer check-launch --config_file ACCELERATE.yaml [RECIPE.yaml] [--num_processes N] [--mixed_precision M]
                         [--assume_gpus N] [--field value ...]
    Dry-run an `accelerate launch` config (DDP, FSDP, DeepSpeed) against the recipe and its model, without
    training: each problem names its field and the fix (exit 2), else what would run (docs/distributed.md).
"""


def _train(argv: list[str]) -> int:
    from .run import train

    recipe = None
    if argv and not argv[0].startswith("--"):
        recipe, argv = argv[0], argv[1:]
    overrides = _overrides(argv)
    if _is_task_list_recipe(recipe, overrides):
        return _train_task_list(recipe, overrides)  # docs/meta_lifelong.md
    result = train(recipe, **overrides)
    if result.trainer.is_world_process_zero():
        print(json.dumps({k: v for k, v in result.metrics.items()}, indent=2, default=float))
        print(f"hf-transfer: model, metrics.json, recipe.yaml and README.md written to {result.output_dir}")
    return 0


def _is_task_list_recipe(recipe: str | None, overrides: dict) -> bool:
    from .recipe import _load_yaml

    keys = set(overrides) | set(_load_yaml(recipe) if recipe else ())
    return bool(keys & {"meta_method", "lifelong_method"})


def _train_task_list(recipe: str | None, overrides: dict) -> int:
    """Meta-learning (``meta_method``) and lifelong (``lifelong_method``) recipes."""
    from .recipe import load_recipe

    parsed = load_recipe(recipe, overrides)
    if type(parsed).__name__ == "MetaRecipe":
        from .meta import train_meta as run
    else:
        from .lifelong import train_lifelong as run
    result = run(parsed)
    if result.is_main_process:
        print(json.dumps(result.metrics, indent=2, default=float))
        print(f"hf-transfer: model, metrics.json, recipe.yaml and README.md written to {result.output_dir}")
    return 0


def _overrides(argv: list[str]) -> dict:
    from .recipe import parse_cli_overrides

    return parse_cli_overrides(argv)


def _evaluate(argv: list[str]) -> int:
    from .run import evaluate

    parser = argparse.ArgumentParser(prog="hf-transfer evaluate")
    parser.add_argument("model_dir")
    parser.add_argument("--data", required=True, help="labelled file, folder or Hub dataset id")
    parser.add_argument("--split", default="train")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--image_column", help="evaluate an image classifier on this column (docs/vision.md)")
    parser.add_argument("--config", help="dataset config; for a .npz, the key prefix (mnist reads mnist_x/mnist_y)")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=256)
    few = parser.add_argument_group("few-shot (with --shots)")
    few.add_argument("--shots", type=int, help="K: adapt on K labelled rows per class, report mean and 95%% interval")
    few.add_argument("--episodes", type=int, default=20)
    few.add_argument("--n_query", type=int, default=16, help="query rows per class and episode")
    few.add_argument("--n_way", type=int, help="classes per episode (default: all)")
    few.add_argument("--query_data", help="draw query rows from this labelled file (default: the rest of --data)")
    few.add_argument("--adapt", help="protonet, maml, hypernet, finetune or probe (default: the model's meta "
                                     "method, else finetune)")
    few.add_argument("--seed", type=int, default=0)
    for name, kind in (("finetune_steps", int), ("finetune_lr", float), ("finetune_head_lr", float),
                       ("inner_steps", int), ("inner_lr", float), ("distance", str)):
        few.add_argument(f"--{name}", type=kind)
    a = parser.parse_args(argv)
    if a.shots is not None:
        from .meta.trainer import few_shot_evaluate

        settings = {k: getattr(a, k) for k in ("finetune_steps", "finetune_lr", "finetune_head_lr", "inner_steps",
                                               "inner_lr", "distance") if getattr(a, k) is not None}
        metrics = few_shot_evaluate(a.model_dir, a.data, shots=a.shots, episodes=a.episodes, n_query=a.n_query,
                                    n_way=a.n_way, adapt=a.adapt, query_data=a.query_data, split=a.split,
                                    text_column=a.text_column, label_column=a.label_column,
                                    max_length=a.max_length, seed=a.seed, **settings)
        print(json.dumps(metrics, indent=2))
        return 0
    metrics = evaluate(a.model_dir, a.data, text_column=a.text_column, label_column=a.label_column, split=a.split,
                       batch_size=a.batch_size, max_length=a.max_length, image_column=a.image_column,
                       config=a.config)
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
    report = diagnose(a.source, a.target, models=a.models, output_dir=a.output, trained_model=a.trained_model,
                      max_samples=a.max_samples, text_column=a.text_column, label_column=a.label_column,
                      use_target_labels=not a.unlabeled_target, target_labeled_rows=a.target_labeled_rows,
                      target_accuracy=a.target_accuracy, num_permutations=a.num_permutations,
                      max_length=a.max_length, batch_size=a.batch_size, seed=a.seed, streaming=a.streaming)
    print(report.advice.table())
    print(f"hf-transfer: report.html, diagnostics.json and {len(report.images)} PNGs written to {a.output}")
    return 0


def _methods(argv: list[str]) -> int:
    from .methods import available_methods

    print("\n".join(available_methods()))
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
            "check-launch": _check_launch}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        from .errors import did_you_mean

        print(f"error: unknown command {command!r}{did_you_mean(command, COMMANDS)}", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    from .errors import UserError

    try:
        return COMMANDS[command](rest)
    except UserError as err:
        for problem in getattr(err, "problems", None) or [str(err)]:  # a LaunchConfigError holds several
            print(f"error: {problem}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
