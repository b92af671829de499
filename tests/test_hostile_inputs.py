"""Bad input, as a hostile user would give it: the table of docs/robustness.md, one row per case.

Every row runs the real command line (``hf_transfer.cli.main``) and asserts what the project promises for user
errors: exit status 2, one line ``error: <field>: <fix>`` naming the field, no model loaded (every weight-loading
entry point is patched to fail the test if called), no data tokenised, and nothing written (no output folder, no
stray ``./true/``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hf_transfer.cli import main

from .conftest import REPO, RESOURCES, read_jsonl, write_jsonl

MULTI_CPU = str(REPO / "recipes/accelerate/multi_cpu.yaml")


@dataclass
class Inputs:
    """What a case builds its command line from."""

    base: list[str]  # `train` plus a tiny, valid run; a case appends its bad setting (the last value wins)
    folder: Path  # where a case writes its own files (never the working directory)
    source: str


@dataclass
class Case:
    id: str
    field: str  # the field the one-line error must name (a regular expression)
    argv: Callable[[Inputs], list[str]]


def _recipe(inputs: Inputs, text: str | bytes, name: str = "recipe.yaml") -> list[str]:
    """``train RECIPE`` with the tiny run's settings in the recipe file, then ``text`` appended to it."""
    path = inputs.folder / name
    settings = dict(zip(inputs.base[1::2], inputs.base[2::2]))
    head = "".join(f"{k[2:]}: {json.dumps(v)}\n" for k, v in settings.items())
    path.write_bytes(head.encode() + (text if isinstance(text, bytes) else text.encode()))
    return ["train", str(path)]


def _rows(inputs: Inputs, name: str, rows: list[dict]) -> str:
    return str(write_jsonl(inputs.folder / name, rows))


def _reviews(n: int) -> list[dict]:
    return read_jsonl(RESOURCES / "amazon_books_demo.jsonl")[:n]


def _labels_with(bad_row: int, bad_label, n: int = 40) -> list[dict]:
    rows = [{"text": f"review {i}", "label": i % 2} for i in range(n)]
    rows[bad_row]["label"] = bad_label
    return rows


def _mixed_folder(inputs: Inputs) -> str:
    folder = inputs.folder / "mixed"
    write_jsonl(folder / "a.jsonl", _reviews(20))
    (folder / "b.csv").write_text("text,label\ngood,1\nbad,0\n")
    return str(folder)


def _malformed_json(inputs: Inputs) -> str:
    path = inputs.folder / "broken.jsonl"
    lines = [json.dumps(r) for r in _reviews(12)]
    lines[5] = '{"text": "no comma" "label": 1}'
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _garbage_parquet(inputs: Inputs) -> str:
    path = inputs.folder / "garbage.parquet"
    path.write_bytes(b"this is not parquet at all" * 10)
    return str(path)


def _image_folder(inputs: Inputs) -> str:
    from PIL import Image

    for label in ("cat", "dog"):
        for i in range(3):
            (inputs.folder / "images" / label).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(inputs.folder / "images" / label / f"{i}.png")
    return str(inputs.folder / "images")


CASES = [
    # -- training arguments: wrong anywhere (load_recipe) ---------------------------------------------------------
    Case("learning_rate_negative", "learning_rate", lambda i: [*i.base, "--learning_rate", "-1"]),
    Case("learning_rate_nan", "learning_rate", lambda i: [*i.base, "--learning_rate", "nan"]),
    Case("learning_rate_inf", "learning_rate", lambda i: [*i.base, "--learning_rate", "inf"]),
    Case("batch_size_0", "per_device_train_batch_size", lambda i: [*i.base, "--per_device_train_batch_size", "0"]),
    Case("gradient_accumulation_0", "gradient_accumulation_steps",
         lambda i: [*i.base, "--gradient_accumulation_steps", "0"]),
    Case("seed_negative", "seed", lambda i: [*i.base, "--seed", "-1"]),
    Case("nothing_to_train", "max_steps", lambda i: [*i.base, "--max_steps", "-1", "--num_train_epochs", "0"]),
    Case("output_dir_without_value", "output_dir", lambda i: [*i.base, "--output_dir"]),
    Case("class_names_repeated", "class_names", lambda i: [*i.base, "--class_names", "pos", "pos"]),
    Case("text_pair_column_is_text_column", "text_pair_column", lambda i: [*i.base, "--text_pair_column", "text"]),
    Case("label_column_is_text_column", "label_column", lambda i: [*i.base, "--label_column", "text"]),
    Case("text_column_is_label_column", "label_column", lambda i: [*i.base, "--text_column", "label"]),
    Case("hub_token_twice", "hub_token", lambda i: [*i.base, "--hub_token", "hf_AAAA", "hf_BBBB"]),
    Case("peft_r_not_a_number", r"peft\.r", lambda i: [*i.base, "--peft.r", "abc"]),
    Case("peft_r_zero", r"peft\.r", lambda i: [*i.base, "--peft.r", "0"]),
    Case("peft_dropout_wrong_type", r"peft\.lora_dropout", lambda i: [*i.base, "--peft.lora_dropout", "high"]),
    # -- the recipe file --------------------------------------------------------------------------------------------
    Case("mapping_for_a_scalar", "learning_rate", lambda i: _recipe(i, "learning_rate: {a: 1}\n")),
    Case("integer_key", "1", lambda i: _recipe(i, "1: 2\n")),
    Case("null_key", "null", lambda i: _recipe(i, "null: 2\n")),
    Case("duplicate_key", "seed", lambda i: _recipe(i, "seed: 1\nseed: 2\n")),
    Case("latin1_recipe", "recipe", lambda i: _recipe(i, "class_names: [caf\xe9, bar]\n".encode("latin-1"))),
    Case("recipe_is_a_folder", "recipe", lambda i: ["train", str(i.folder)]),
    # -- this machine and the model's config (preflight, before any data is read) ---------------------------------
    Case("max_length_beyond_positions", "max_length", lambda i: [*i.base, "--max_length", "512"]),
    Case("report_to_not_installed", "report_to", lambda i: [*i.base, "--report_to", "wandb"]),
    Case("report_to_unknown", "report_to", lambda i: [*i.base, "--report_to", "wandbb"]),
    # -- data -------------------------------------------------------------------------------------------------------
    Case("label_id_far_outside", "label_column",
         lambda i: [*i.base, "--source_data", _rows(i, "l.jsonl", _labels_with(7, 100000))]),
    Case("label_ids_with_a_gap", "label_column",
         lambda i: [*i.base, "--source_data", _rows(i, "g.jsonl", [{"text": f"t{k}", "label": 5 * (k % 2)}
                                                                  for k in range(20)])]),
    Case("numbers_in_text_column", "text_column",
         lambda i: [*i.base, "--source_data", _rows(i, "n.jsonl", [{"text": k, "label": k % 2} for k in range(20)])]),
    Case("null_in_text_column", "text_column",
         lambda i: [*i.base, "--source_data", _rows(i, "z.jsonl", [{"text": None if k == 9 else "t", "label": k % 2}
                                                                  for k in range(20)])]),
    Case("eval_fraction_leaves_one_class", "source_eval_fraction",
         lambda i: [*i.base, "--source_data", _rows(i, "s.jsonl", _reviews(32)), "--source_eval_fraction", "0.95"]),
    Case("folder_of_mixed_formats", "source_data", lambda i: [*i.base, "--source_data", _mixed_folder(i)]),
    Case("malformed_json_line", "source_data", lambda i: [*i.base, "--source_data", _malformed_json(i)]),
    Case("unreadable_local_file", "source_data", lambda i: [*i.base, "--source_data", _garbage_parquet(i)]),
    # -- other commands ----------------------------------------------------------------------------------------------
    Case("check_launch_zero_processes", "num_processes",
         lambda i: ["check-launch", "--config_file", MULTI_CPU, "--num_processes", "0"]),
    Case("check_launch_negative_processes", "num_processes",
         lambda i: ["check-launch", "--config_file", MULTI_CPU, "--num_processes", "-3"]),
    Case("diagnose_output_is_a_file", "output",
         lambda i: ["diagnose", "--source", i.source, "--target", i.source, "--output", i.source]),
]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if any weights load or any data is tokenised."""
    import transformers

    import hf_transfer.run

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded (or data tokenised) for a bad input")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(boom))
    for auto in ("AutoModel", "AutoModelForSequenceClassification", "AutoModelForImageClassification"):
        monkeypatch.setattr(getattr(transformers, auto), "from_pretrained", staticmethod(boom))
    monkeypatch.setattr(hf_transfer.run, "load_classifier", boom)
    monkeypatch.setattr(hf_transfer.run, "prepare_data", boom)


def _inputs(tmp_path: Path, tiny_model_dir: str, review_files: dict) -> Inputs:
    folder = tmp_path / "inputs"
    folder.mkdir()
    base = ["train", "--model_name_or_path", tiny_model_dir, "--source_data", review_files["source"],
            "--target_data", review_files["target"], "--max_length", "64", "--output_dir", str(tmp_path / "out"),
            "--max_steps", "2", "--per_device_train_batch_size", "8", "--save_strategy", "no", "--use_cpu", "true",
            "--disable_tqdm", "true"]
    return Inputs(base, folder, review_files["source"])


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines of stderr (progress bars of ``datasets`` share it)."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]


def run_case(argv: list[str], workdir: Path, monkeypatch, capsys) -> tuple[int, str]:
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # a bare `--output_dir` used to write ./true/ here
    code = main(argv)
    assert sorted(workdir.iterdir()) == [], "something was written in the working directory"
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_before_any_model_loads(case, tmp_path, tiny_model_dir, review_files,
                                                             no_model_loads, monkeypatch, capsys):
    if case.id == "report_to_not_installed":
        from transformers.integrations.integration_utils import get_available_reporting_integrations

        if "wandb" in get_available_reporting_integrations():
            pytest.skip("wandb is installed here")
    inputs = _inputs(tmp_path, tiny_model_dir, review_files)
    code, err = run_case(case.argv(inputs), tmp_path / "work", monkeypatch, capsys)
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1, err
    assert re.match(rf"error: (recipe '[^']*': )?{case.field}\b", lines[0]) or (
        case.field == "recipe" and lines[0].startswith("error: recipe ")), lines[0]
    assert_no_output(tmp_path / "out")


def assert_no_output(folder: Path) -> None:
    """Nothing written: the output folder was not even created."""
    assert not folder.exists(), sorted(folder.iterdir())


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="fp16 is refused only without a GPU")
def test_fp16_without_a_gpu_is_refused(tmp_path, tiny_model_dir, review_files, no_model_loads, monkeypatch, capsys):
    inputs = _inputs(tmp_path, tiny_model_dir, review_files)
    code, err = run_case([*inputs.base, "--fp16"], tmp_path / "work", monkeypatch, capsys)
    assert code == 2 and error_lines(err) == [error_lines(err)[0]], err
    assert error_lines(err)[0].startswith("error: fp16: needs a GPU"), err


@pytest.mark.parametrize("pixels_limit", [500, 800], ids=["over_twice_the_limit", "over_the_limit_warning"])
def test_decompression_bomb_image_names_the_file(pixels_limit, tmp_path, tiny_model_dir, review_files,
                                                 no_model_loads, monkeypatch, capsys):
    """32x32 = 1024 pixels: above twice a limit of 500 PIL raises, above 800 it only warns; both are refused."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels_limit)
    inputs = _inputs(tmp_path, tiny_model_dir, review_files)
    argv = [*inputs.base, "--source_data", _image_folder(inputs), "--image_column", "image", "--target_data", "null",
            "--train_sampling_strategy", "random"]
    code, err = run_case(argv, tmp_path / "work", monkeypatch, capsys)
    (line,) = error_lines(err)
    assert code == 2, err
    assert line.startswith("error: image_column: source_data") and "decompression bomb" in line, err
    assert "cat/0.png)" in line  # names the file


# -- details of the rows above that the table's one assertion does not pin --------------------------------------------


@pytest.mark.parametrize("argv", [["--hub_token", "hf_AAAA", "hf_BBBB"], ["--hub_token=hf_AAAA", "hf_BBBB"],
                                  ["--hub_token", "hf_AAAA", "--learning_rate", "{a: 1}", "--hub_token", "hf_BBBB"]])
def test_secret_values_are_never_echoed(argv, tmp_path, tiny_model_dir, review_files, no_model_loads, monkeypatch,
                                        capsys):
    inputs = _inputs(tmp_path, tiny_model_dir, review_files)
    code, err = run_case([*inputs.base, *argv], tmp_path / "work", monkeypatch, capsys)
    assert code == 2
    assert "hf_AAAA" not in err and "hf_BBBB" not in err, err
    assert_no_output(tmp_path / "out")


def test_label_errors_name_the_row_of_the_file_not_of_the_subsample(tmp_path, tiny_model_dir, review_files,
                                                                    no_model_loads, monkeypatch, capsys):
    inputs = _inputs(tmp_path, tiny_model_dir, review_files)
    source = _rows(inputs, "l.jsonl", _labels_with(37, 100000, n=60))
    code, err = run_case([*inputs.base, "--source_data", source, "--max_source_samples", "10"], tmp_path / "work",
                         monkeypatch, capsys)
    assert code == 2
    assert "row 37 has label 100000" in err and "class 2 never occurs" in err, err


def test_a_stray_label_id_is_accepted_when_num_labels_says_so(tmp_path):
    from hf_transfer.data import load_raw_data
    from hf_transfer.recipe import load_recipe

    source = write_jsonl(tmp_path / "s.jsonl", [{"text": f"t{k}", "label": [0, 1, 4][k % 3]} for k in range(30)])
    recipe = load_recipe({"source_data": str(source), "target_data": None, "num_labels": 5})
    assert load_raw_data(recipe.data, num_labels=5).labels.num_labels == 5


def test_class_names_map_target_label_names_to_ids(tmp_path):
    """Source labels as ids 0/1 with class_names [negative, positive]; target labels given as those names."""
    from hf_transfer.data import load_raw_data
    from hf_transfer.recipe import load_recipe

    source = write_jsonl(tmp_path / "s.jsonl", [{"text": f"s{k}", "label": k % 2} for k in range(20)])
    names = ["negative", "positive"]
    target = write_jsonl(tmp_path / "t.jsonl", [{"text": f"t{k}", "label": names[k % 2]} for k in range(10)])
    recipe = load_recipe({"source_data": str(source), "target_data": str(target), "class_names": names})
    raw = load_raw_data(recipe.data)
    assert raw.labels.names == names
    assert raw.eval["labels"] == [k % 2 for k in range(10)]


def test_class_names_order_string_source_labels(tmp_path):
    """Name labels are sorted unless class_names gives their order; a name outside class_names is refused."""
    from hf_transfer.data import load_raw_data
    from hf_transfer.errors import DataError
    from hf_transfer.recipe import load_recipe

    rows = [{"text": f"s{k}", "label": ["pos", "neg"][k % 2]} for k in range(20)]
    source = write_jsonl(tmp_path / "s.jsonl", rows)
    raw = load_raw_data(load_recipe({"source_data": str(source), "target_data": None,
                                     "class_names": ["pos", "neg"]}).data)
    assert raw.labels.names == ["pos", "neg"] and raw.source["labels"][:2] == [0, 1]
    rows[3]["label"] = "meh"
    write_jsonl(tmp_path / "s.jsonl", rows)
    with pytest.raises(DataError, match=r"row 3 has label 'meh', which is not in class_names"):
        load_raw_data(load_recipe({"source_data": str(source), "target_data": None,
                                   "class_names": ["pos", "neg"]}).data)


def test_messages_of_data_rows_name_the_line_and_the_cause(tmp_path, tiny_model_dir, review_files, no_model_loads,
                                                           monkeypatch, capsys):
    inputs = _inputs(tmp_path, tiny_model_dir, review_files)
    code, err = run_case([*inputs.base, "--source_data", _malformed_json(inputs)], tmp_path / "w1", monkeypatch,
                         capsys)
    assert "broken.jsonl' line 6 is not valid JSON: Expecting ',' delimiter" in err, err
    code, err = run_case([*inputs.base, "--source_data", _garbage_parquet(inputs)], tmp_path / "w2", monkeypatch,
                         capsys)
    assert "Hub" not in err and "garbage.parquet" in err, err  # a local file: the Hub has nothing to do with it
    code, err = run_case([*inputs.base, "--source_data", _mixed_folder(inputs)], tmp_path / "w3", monkeypatch, capsys)
    assert "a.jsonl" in err and "b.csv" in err, err
    source = _rows(inputs, "z.jsonl", [{"text": None if k == 9 else "t", "label": k % 2} for k in range(20)])
    code, err = run_case([*inputs.base, "--source_data", source], tmp_path / "w4", monkeypatch, capsys)
    assert "row 9 holds null, not text" in err, err


def test_duplicate_key_names_both_lines(tmp_path):
    from hf_transfer.errors import RecipeError
    from hf_transfer.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("max_steps: 5\nseed: 1\nlearning_rate: 1e-4\nseed: 2\n")
    with pytest.raises(RecipeError, match=r"^seed: given twice in the recipe \(lines 2 and 4\)"):
        load_recipe(path)
    path.write_text("peft:\n  r: 8\n  r: 16\n")
    with pytest.raises(RecipeError, match=r"^r: given twice"):
        load_recipe(path)


def test_bare_flags_still_mean_true(tmp_path, tiny_model_dir):
    from hf_transfer.recipe import load_recipe

    recipe = load_recipe(None, ["--model_name_or_path", tiny_model_dir, "--disable_tqdm", "--output_dir", "o"])
    assert recipe.training.disable_tqdm is True and recipe.training.output_dir == "o"


def test_every_case_is_a_row_of_the_robustness_table():
    """docs/robustness.md lists every case of the table above with its test id, and nothing that is not one."""
    table = (REPO / "docs/robustness.md").read_text()
    assert [c.id for c in CASES if f"[{c.id}]" not in table] == []
    listed = set(re.findall(r"\[([a-z0-9_]+)\]`", table))
    assert listed <= {c.id for c in CASES}, listed - {c.id for c in CASES}
