"""The command line explains itself: `train --help`, `methods`, `--version`, `env`, `--config`, the hints for names
from TRL and the transformers example scripts, lazy imports (no torch for help), in-memory Datasets in
`hf_transfer.train`, logging instead of print, and the t-SNE recipe fields."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_transfer import catalog
from hf_transfer.cli import main

REPO = Path(__file__).resolve().parents[1]


def cli(*args, cwd=REPO, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "hf_transfer", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def imported_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter has imported after running ``code``."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.splitlines()[-1]))


# ------------------------------------------------------------------------------------------------ help and listing


def package_methods(available_methods, get_method_spec) -> list[str]:
    """The registered methods the package ships (other tests register throw-away ones in this process)."""
    return [n for n in available_methods() if get_method_spec(n).config_class.__module__.startswith("hf_transfer.")]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_train_help_lists_every_recipe_field_by_section(flag):
    from hf_transfer.methods import available_methods, get_method_spec
    from hf_transfer.recipe import DataArguments, MethodArguments, ModelArguments

    out = cli("train", flag)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    for title in ("Model:", "Data:", "Method:", "PEFT block", "Method blocks", "transformers.TrainingArguments"):
        assert title in text
    # every field of our dataclasses, in its section, with its help text's first words
    positions = [text.index(t) for t in ("\nModel:", "\nData:", "\nMethod:", "\nPEFT block")]
    for (start, end), cls in zip(zip(positions, positions[1:]), (ModelArguments, DataArguments, MethodArguments)):
        section = " ".join(text[start:end].split())
        for f in dataclasses.fields(cls):
            assert f"--{f.name} " in section, f.name
            assert " ".join(f.metadata["help"].split())[:40] in section, f.name
    for name in package_methods(available_methods, get_method_spec):  # every method's fields as --<method>.<field>
        for f in dataclasses.fields(get_method_spec(name).config_class):
            if f.name != "trade_off":
                assert f"--{name}.{f.name} " in text
    assert "--peft.r " in text and "--peft.lora_alpha " in text
    assert "help: unknown recipe field" not in out.stderr


def test_h_is_never_read_as_a_recipe_path(tmp_path):
    out = cli("train", "-h", cwd=tmp_path)
    assert out.returncode == 0 and "usage: hf-transfer train" in out.stdout
    assert "recipe '-h'" not in out.stderr


def test_catalog_matches_the_imported_classes_and_registry():
    """What the help reads from source equals what Python builds: names, order, help, defaults, registry."""
    from hf_transfer.lifelong.recipe import LIFELONG_METHODS, LifelongArguments
    from hf_transfer.meta.learner import META_METHODS
    from hf_transfer.meta.recipe import MetaArguments
    from hf_transfer.methods import available_methods, get_method_spec
    from hf_transfer.multitask.modeling import SHARING_MODES
    from hf_transfer.multitask.recipe import MultiTaskArguments
    from hf_transfer.recipe import DataArguments, MethodArguments, ModelArguments

    def check(docs, cls):
        real = [f for f in dataclasses.fields(cls) if f.init]
        assert [d.name for d in docs] == [f.name for f in real]
        for doc, f in zip(docs, real):
            assert doc.help == " ".join(f.metadata.get("help", "").split()), f.name
            if doc.default not in (None, "required"):
                value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                assert doc.default == repr(value), f.name

    for (_, _, docs), cls in zip(catalog.recipe_sections(), (ModelArguments, DataArguments, MethodArguments)):
        check(docs, cls)
    registered = {m.name: m for m in catalog.registered_methods()}
    assert sorted(registered) == package_methods(available_methods, get_method_spec)
    for name, doc in registered.items():
        spec = get_method_spec(name)
        check(doc.fields, spec.config_class)
        assert doc.needs_target == spec.needs_target, name
        assert (doc.kind in ("loss", "loss + prepare")) == (spec.method_class is not None), name
        assert ("prepare" in doc.kind) == (spec.prepare is not None), name
    families = {f.name: f for f in catalog.FAMILIES}
    for family, names, cls in (("multitask", SHARING_MODES, MultiTaskArguments), ("meta", META_METHODS, MetaArguments),
                               ("lifelong", LIFELONG_METHODS, LifelongArguments)):
        methods = catalog.family_methods(families[family])
        assert [m.name for m in methods] == list(names)
        assert all(m.summary for m in methods)  # every family method has its one line
        check(catalog.dataclass_fields(families[family].module, families[family].arguments), cls)


def test_methods_lists_every_family_with_kind_and_fields():
    out = cli("methods")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  ") and line.split()}
    for name in ("finetune", "dann", "cdan", "mmd", "coral", "instance_weighting", "protonet", "fomaml", "reptile",
                 "hypernet", "ewc", "replay", "l2sp", "adapter", "naive", "hard", "soft_lora", "soft_l2",
                 "shared_private"):
        assert name in lines, name
    assert "loss, needs target: domain-adversarial training" in lines["dann"]
    assert lines["finetune"].split()[1].startswith("supervised")
    assert lines["instance_weighting"].split()[1].startswith("prepare")
    assert "Meta-learning" in out.stdout and "Lifelong" in out.stdout and "Multi-task sharing" in out.stdout
    assert "fields: hidden_size, num_layers" in out.stdout


def test_methods_name_shows_one_in_full():
    out = cli("methods", "dann")
    assert out.returncode == 0
    assert "kind: loss" in out.stdout and "needs unlabelled target data" in out.stdout
    assert "lambda_schedule: Literal" in out.stdout and "= 'grl'" in out.stdout and "Steepness" in out.stdout
    out = cli("methods", "fomaml")
    assert "inner_steps: int = 5" in out.stdout and "Fields every meta method takes" in out.stdout
    assert "k_shot: int = 8" in out.stdout and "ewc_lambda" not in out.stdout
    out = cli("methods", "dan")
    assert out.returncode == 2
    assert "error: methods: no method or family named 'dan'; did you mean 'dann'?" in out.stderr


def test_version_and_env(capsys):
    from hf_transfer import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"hf-transfer {__version__}"
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    import torch
    import transformers

    assert info["torch"] == torch.__version__ and info["transformers"] == transformers.__version__
    for key in ("peft", "accelerate", "datasets", "evaluate", "huggingface_hub", "CPU count", "CUDA", "MPS",
                "Hub offline (HF_HUB_OFFLINE)"):
        assert key in info
    assert info["CUDA"].startswith("yes" if torch.cuda.is_available() else "no")
    minilm = info["Packaged sentence-transformers/all-MiniLM-L6-v2"]
    assert Path(minilm, "config.json").is_file()  # the packaged copy is installed in the test environment
    assert main(["env"]) == 0 and "- Python: " in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ lazy imports


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["methods"], ["methods", "dann"], ["train", "--help"]])
def test_help_listing_and_version_do_not_import_torch(args):
    modules = imported_after(f"from hf_transfer.cli import main\nimport contextlib, io\n"
                             f"with contextlib.redirect_stdout(io.StringIO()):\n    main({args!r})")
    assert not modules & {"torch", "transformers", "datasets", "peft", "accelerate"}, sorted(modules)


def test_import_is_lazy_and_public_names_still_work():
    assert "torch" not in imported_after("import hf_transfer")
    modules = imported_after("from hf_transfer import train, load_recipe, available_methods, RecipeError\n"
                             "assert 'dann' in available_methods() and callable(train)")
    assert "torch" in modules  # the names load their modules on first use
    import hf_transfer

    assert set(hf_transfer.__all__) <= set(dir(hf_transfer))
    with pytest.raises(AttributeError):
        hf_transfer.no_such_name  # noqa: B018


def test_register_auto_classes_makes_the_auto_classes_know_the_package_models():
    probe = ("import hf_transfer\n{call}\n"
             "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
             "print(sorted(k for k in CONFIG_MAPPING._extra_content if k.startswith('hf_transfer')))")
    for call, expected in (("", "[]"), ("hf_transfer.register_auto_classes()",
                                        "['hf_transfer_efficientnet_lite', 'hf_transfer_multitask']")):
        out = subprocess.run([sys.executable, "-c", probe.format(call=call)], capture_output=True, text=True,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
        assert out.returncode == 0 and out.stdout.strip() == expected, out.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ --config and hints


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--lora_r", "lora_r: unknown recipe field; here it is called peft.r (--peft.r VALUE"),
        ("--lora_alpha", "here it is called peft.lora_alpha"),
        ("--lora_dropout", "here it is called peft.lora_dropout"),
        ("--use_peft", "use_peft: unknown recipe field; PEFT is on when the recipe has a `peft:` block"),
        ("--dataset_name", "dataset_name: unknown recipe field; here it is called source_data"),
        ("--max_seq_length", "here it is called max_length"),
        ("--max_train_samples", "here it is called max_source_samples"),
        ("--model_name", "here it is called model_name_or_path"),
        ("--text_column_name", "here it is called text_column"),
        ("--label_column_name", "here it is called label_column"),
        ("--learning_rat", "did you mean 'learning_rate'"),
    ],
)
def test_names_from_trl_and_example_scripts_point_to_ours(flag, message, capsys):
    value = [] if flag == "--use_peft" else ["8"]
    assert main(["train", flag, *value]) == 2
    err = capsys.readouterr().err
    assert message in err and "local_rank" not in err and "use_cpu" not in err and "data_seed" not in err


def test_alias_table_names_real_fields_and_shadows_none():
    from transformers import TrainingArguments

    from hf_transfer.errors import FIELD_ADVICE, FIELD_ALIASES
    from hf_transfer.recipe import DataArguments, MethodArguments, ModelArguments

    ours = {f.name for cls in (ModelArguments, DataArguments, MethodArguments, TrainingArguments)
            for f in dataclasses.fields(cls)}
    assert not (set(FIELD_ALIASES) | set(FIELD_ADVICE)) & ours  # a valid field never gets a hint instead
    for foreign, target in FIELD_ALIASES.items():
        assert target.startswith("peft.") or target in ours, foreign


def test_config_flag_names_the_recipe(tmp_path, capsys):
    from hf_transfer.cli import _recipe_and_overrides

    assert _recipe_and_overrides(["--config", "r.yaml", "--max_steps", "3"]) == ("r.yaml", ["--max_steps", "3"])
    assert _recipe_and_overrides(["--max_steps", "3", "--config=r.yaml"]) == ("r.yaml", ["--max_steps", "3"])
    assert _recipe_and_overrides(["r.yaml", "--config_file", "x"]) == ("r.yaml", ["--config_file", "x"])
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert f"recipe '{tmp_path / 'missing.yaml'}': file not found" in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rat: 1\n")  # read as the recipe: its bad key is reported
    assert main(["train", "--config", str(recipe)]) == 2
    assert "learning_rat: unknown recipe field; did you mean 'learning_rate'" in capsys.readouterr().err
    assert main(["train", "a.yaml", "--config", "b.yaml"]) == 2
    assert "config: two recipes given" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ training runs


def _tiny_rows(path: str, n: int) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle][:n]


def test_train_accepts_in_memory_datasets(tiny_recipe, review_files, tmp_path):
    import datasets

    import hf_transfer

    source = datasets.Dataset.from_list(_tiny_rows(review_files["source"], 48))
    target_rows = _tiny_rows(review_files["target"], 40)
    target = datasets.DatasetDict(train=datasets.Dataset.from_list(target_rows),
                                  test=datasets.Dataset.from_list(target_rows[:24]))
    tiny_recipe.update(source_data=source, target_data=target, eval_data=target, eval_split="test",
                       source_eval_fraction=0.25, max_steps=2)
    result = hf_transfer.train(tiny_recipe, method=["dann"])
    assert result.metrics["target_accuracy"] >= 0
    saved = yaml.safe_load((Path(result.output_dir) / "recipe.yaml").read_text())
    assert saved["source_data"] == "<in-memory Dataset, 48 rows>"
    assert saved["target_data"] == "<in-memory Dataset, 40 rows>"  # the DatasetDict's train split (target_split)
    assert saved["eval_data"] == "<in-memory Dataset, 24 rows>"
    # the saved recipe still parses, and running it says why the data cannot come back from a file
    saved["output_dir"] = str(tmp_path / "rerun")
    with pytest.raises(hf_transfer.DataError, match="source_data: <in-memory Dataset, 48 rows> was an in-memory"):
        hf_transfer.train(saved)


def test_in_memory_dataset_dict_needs_an_existing_split(tiny_recipe, review_files):
    import datasets

    import hf_transfer

    table = datasets.DatasetDict(train=datasets.Dataset.from_list(_tiny_rows(review_files["source"], 8)))
    with pytest.raises(hf_transfer.DataError, match="source_split: 'validation' is not a split of the DatasetDict"):
        hf_transfer.load_recipe({**tiny_recipe, "source_data": table, "source_split": "validation"})
    with pytest.raises(hf_transfer.DataError, match=r"source_data: expected a file, folder or Hub id \(or a datasets"):
        hf_transfer.load_recipe({**tiny_recipe, "source_data": [{"text": "a", "label": 0}]})


def test_tsne_is_a_recipe_field_recorded_in_recipe_yaml(tiny_recipe, monkeypatch, caplog):
    import logging

    import hf_transfer
    from hf_transfer.diagnostics.training_plot import ENABLE_ENV, PLOT_NAME

    monkeypatch.setenv(ENABLE_ENV, "1")  # tests/conftest.py switches the picture off through the old variable
    tiny_recipe.update(max_steps=1, tsne_plot=False)
    with caplog.at_level(logging.INFO, logger="hf_transfer"):
        result = hf_transfer.train(tiny_recipe)
    out = Path(result.output_dir)
    assert not (out / PLOT_NAME).exists()
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["tsne_plot"] is False and saved["tsne_rows"] == 100
    # the run's progress line is a log record of the package's logger, not a print
    assert any(r.name == "hf_transfer.run" and "parameters trainable" in r.getMessage() for r in caplog.records)
    with pytest.raises(hf_transfer.RecipeError, match="tsne_rows: must be >= 2"):
        hf_transfer.load_recipe(tiny_recipe, {"tsne_rows": "1"})


def test_cli_keeps_stdout_for_the_result(tiny_recipe, tmp_path):
    """Progress goes to stderr through logging; stdout is the JSON metrics and the closing line only."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**tiny_recipe, "max_steps": 1}))
    out = cli("train", "--config", str(recipe))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "parameters trainable" in out.stderr and "parameters trainable" not in out.stdout
    lines = out.stdout.strip().splitlines()
    start = len(lines) - 1 - lines[::-1].index("{")  # the metrics block (the Trainer prints its own logs above it)
    assert "target_accuracy" in json.loads("\n".join(lines[start:-1]))
    assert lines[-1].startswith("hf-transfer: model, metrics.json")
    assert "Tokenizing" not in out.stderr  # disable_tqdm: true silences the datasets.map bars too


def test_help_piped_into_a_reader_that_stops_early_ends_quietly():
    """`hf-transfer train --help | head -2`: the reader closes the pipe; no BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(f"{sys.executable} -m hf_transfer train --help | head -2", shell=True, capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=300)
    assert done.stdout.startswith("usage: hf-transfer train")
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
