"""``hf-transfer`` command line: ``train``, ``evaluate``, ``push``. Also ``python -m hf_transfer``.

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
hf-transfer evaluate MODEL_DIR --data FILE [--text_column text] [--label_column label]
hf-transfer push MODEL_DIR --hub_model_id USER/NAME [--private]
hf-transfer methods
"""


def _train(argv: list[str]) -> int:
    from .run import train

    recipe = None
    if argv and not argv[0].startswith("--"):
        recipe, argv = argv[0], argv[1:]
    result = train(recipe, **_overrides(argv))
    if result.trainer.is_world_process_zero():
        print(json.dumps({k: v for k, v in result.metrics.items()}, indent=2, default=float))
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
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=256)
    a = parser.parse_args(argv)
    metrics = evaluate(a.model_dir, a.data, text_column=a.text_column, label_column=a.label_column, split=a.split,
                       batch_size=a.batch_size, max_length=a.max_length)
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


def _methods(argv: list[str]) -> int:
    from .methods import available_methods

    print("\n".join(available_methods()))
    return 0


COMMANDS = {"train": _train, "evaluate": _evaluate, "push": _push, "methods": _methods}


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
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
