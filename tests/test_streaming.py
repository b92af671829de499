"""``streaming: true``: source and target read as ``datasets.IterableDataset`` streams, checked on a bounded sample up
front and row by row as they are read, trained for ``max_steps`` from an endless seeded stream (docs/streaming.md)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from datasets import Dataset
from safetensors.torch import load_file

import hf_transfer
from hf_transfer.data import (
    StreamingTrainSet,
    load_raw_data,
    pair_rows,
    pair_with_target,
    prepare_data,
    take_rows,
    tokenize,
)
from hf_transfer.errors import DataError, RecipeError
from hf_transfer.recipe import load_recipe
from tests.conftest import accelerate_launch, read_jsonl, write_jsonl
from tests.test_robustness import one_thread  # noqa: F401  (a fixture: 1 torch thread for bitwise comparisons)

REPO = Path(__file__).resolve().parents[1]
RESULT_FILES = ("config.json", "model.safetensors", "metrics.json", "README.md")


def streaming(recipe: dict, **extra) -> dict:
    # A small sample (the fixtures' files have 96 and 64 rows) so that the streams really go past it.
    return {**recipe, "streaming": True, "streaming_sample_size": 30, "streaming_shuffle_buffer": 16, **extra}


def data_args(recipe: dict):
    return load_recipe(recipe).data


# ---- the streamed path trains, and agrees with the table path where it should -----------------------------------


def test_streaming_run_trains_and_writes_metrics(tiny_recipe):
    # DANN pairs the two streams; the evaluation at step 4 also scores the label-free validators on the target sample
    result = hf_transfer.train(streaming(tiny_recipe, method=["dann"], eval_strategy="steps", eval_steps=4))
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 4 and np.isfinite(metrics["train_loss"])
    # 3 of the 30 sample rows are held out for source_accuracy; the target's 30 sample rows evaluate the target
    assert 0 <= metrics["source_accuracy"] <= 1 and 0 <= metrics["target_accuracy"] <= 1
    assert metrics["selection/snd/step"] == 4 and "dann/loss" in result.trainer.state.log_history[0]
    assert yaml.safe_load((result.output_dir / "recipe.yaml").read_text())["streaming"] is True
    assert isinstance(result.trainer.train_dataset, StreamingTrainSet)
    # batches are not dispatched from the main process (dynamically padded batches cannot be concatenated)
    assert result.trainer.accelerator.dataloader_config.dispatch_batches is False


def test_streamed_rows_equal_the_table_rows(tiny_recipe, tiny_model_dir):
    from hf_transfer.backbones import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    table_args, stream_args = data_args(tiny_recipe), data_args(streaming(tiny_recipe))
    table, stream = load_raw_data(table_args), load_raw_data(stream_args)
    assert stream.labels == table.labels
    # the lazily encoded labels and tokens of the stream are those of the table, row for row, in data order
    common = dict(text_column="text", text_pair_column=None, max_length=64)
    expected = tokenize(table.source, tokenizer, **common).to_list()
    streamed = list(tokenize(stream.source, tokenizer, **common))
    assert len(streamed) == len(expected) == 96
    assert streamed == expected
    # the held-out source slice is 3 seeded rows of the 30-row sample, and the training stream leaves them out: in
    # data order without a shuffle buffer, in a shuffled order with one, but always exactly the other 93 rows
    prepared = prepare_data(stream, tokenizer, data_args(streaming(tiny_recipe, streaming_shuffle_buffer=0)))
    held = [expected.index(row) for row in prepared.source_eval.to_list()]
    assert len(held) == 3 and max(held) < 30 and held != [0, 1, 2] and prepared.sample_rows == 30
    rest = [row for i, row in enumerate(expected) if i not in held]
    assert list(prepared.train) == rest
    shuffled = list(prepare_data(stream, tokenizer, stream_args).train)
    assert shuffled != rest and sorted(shuffled, key=str) == sorted(rest, key=str)
    # a lazily paired row has exactly the columns (and length) of a row of the paired table
    target = tokenize(table.target, tokenizer, keep=(), **common)
    paired_table = pair_with_target(tokenize(table.source, tokenizer, **common), target, seed=0)
    row = pair_rows(expected[0], target[0])
    assert set(row) == set(paired_table.column_names) and "target_labels" not in row
    assert row["length"] == max(expected[0]["length"], target[0]["length"])


def test_training_stream_is_endless_seeded_and_reshuffled_each_pass(review_files, tiny_model_dir):
    from hf_transfer.backbones import load_tokenizer

    args = data_args(
        {
            "source_data": review_files["source"],
            "target_data": review_files["target"],
            "streaming": True,
            "max_steps": 1,
            "max_source_samples": 10,
            "source_eval_fraction": 0.0,
            "streaming_shuffle_buffer": 4,
        }
    )
    raw, tokenizer = load_raw_data(args), load_tokenizer(tiny_model_dir)

    def rows(seed, n=30):  # the source ids of the first n training rows of prepare_data's stream (10 rows a pass)
        paired = iter(StreamingTrainSet(prepare_data(raw, tokenizer, args, seed=seed).train))
        return [tuple(next(paired)["input_ids"]) for _ in range(n)]

    first = rows(seed=1)
    assert first == rows(seed=1)  # reproducible: what a resumed run relies on
    assert first != rows(seed=2)
    passes = [first[i : i + 10] for i in (0, 10, 20)]
    assert len(set(passes[0])) == 10 and all(sorted(p) == sorted(passes[0]) for p in passes)  # every row, once a pass
    assert passes[0] != passes[1] != passes[2]  # ... in a new order each pass


def test_a_stream_of_several_files_keeps_row_numbers_and_held_out_rows_across_passes(tmp_path, tiny_model_dir):
    # A folder of 4 files is a stream of 4 shards. Shuffling must not reorder the shards under the row numbers: the
    # held-out rows are filtered out by number, and an error names a row by number, in every pass.
    from hf_transfer.backbones import load_tokenizer

    folder = tmp_path / "shards"
    rows = [{"text": f"review {i:03d}", "label": i % 2} for i in range(80)]
    for k in range(4):
        write_jsonl(folder / f"part{k}.jsonl", rows[20 * k : 20 * k + 20])
    args = data_args(
        {
            "source_data": str(folder),
            "target_data": None,
            "streaming": True,
            "max_steps": 1,
            "streaming_sample_size": 20,
            "streaming_shuffle_buffer": 8,
        }
    )
    tokenizer = load_tokenizer(tiny_model_dir)
    raw = load_raw_data(args)
    prepared = prepare_data(raw, tokenizer, args, seed=0)
    held = {tuple(r["input_ids"]) for r in prepared.source_eval}
    assert len(held) == 2
    stream = iter(StreamingTrainSet(prepared.train))
    passes = [[tuple(next(stream)["input_ids"]) for _ in range(78)] for _ in range(3)]
    every_other = {
        tuple(r["input_ids"])
        for r in tokenize(Dataset.from_list(rows), tokenizer, text_column="text", text_pair_column=None, max_length=64)
    } - held
    assert all(set(p) == every_other and len(p) == 78 for p in passes) and passes[0] != passes[1]
    rows[57]["label"] = 5
    write_jsonl(folder / "part2.jsonl", rows[40:60])
    with pytest.raises(DataError, match=r"row 57 has label 5"):
        list(load_raw_data(args).source.shuffle(seed=1, buffer_size=8))


def test_two_processes_split_the_stream_without_overlap(review_files):
    from accelerate.data_loader import IterableDatasetShard

    raw = load_raw_data(
        data_args({"source_data": review_files["source"], "target_data": None, "streaming": True, "max_steps": 1})
    )
    stream = StreamingTrainSet(raw.source)
    whole = [r["text"] for _, r in zip(range(48), stream)]
    # What Accelerate wraps the stream in under 2 processes once run.train turns batch dispatching off
    shards = [
        [
            r["text"]
            for _, r in zip(range(24), IterableDatasetShard(stream, batch_size=4, num_processes=2, process_index=i))
        ]
        for i in (0, 1)
    ]
    assert [shards[i][k : k + 4] for k in range(0, 24, 4) for i in (0, 1)] == [
        whole[k : k + 4] for k in range(0, 48, 4)
    ]


# ---- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"max_steps": -1},
            r"max_steps: streaming: true reads the data as a stream of unknown length.*set max_steps > 0",
        ),
        ({"image_column": "image"}, r"streaming: image data .* is read whole; set streaming: false"),
        ({"streaming_sample_size": 5}, r"streaming_sample_size: must be >= 10 rows, got 5"),
        ({"streaming_shuffle_buffer": -1}, r"streaming_shuffle_buffer: must be >= 0"),
        (
            {"dataloader_num_workers": 2},
            r"dataloader_num_workers: with streaming: true .* set dataloader_num_workers: 0",
        ),
    ],
)
def test_recipe_refusals(tiny_recipe, extra, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(streaming(tiny_recipe, **extra))


def test_streaming_without_max_steps_exits_2_from_the_cli(tiny_recipe, tmp_path, capsys):
    from hf_transfer.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in streaming(tiny_recipe).items() if k != "max_steps"}))
    assert main(["train", str(path)]) == 2
    assert "error: max_steps: streaming: true" in capsys.readouterr().err
    assert not Path(tiny_recipe["output_dir"]).exists()


def test_sample_checks_come_before_training(tiny_recipe, tmp_path):
    rows = read_jsonl(Path(tiny_recipe["source_data"]))
    bad = write_jsonl(tmp_path / "bad.jsonl", [*rows[:5], {"text": "x", "label": 0.5}, *rows[5:]])
    with pytest.raises(DataError, match=r"source_data .* row 5 has label 0.5; labels must be integer"):
        load_raw_data(data_args(streaming(tiny_recipe, source_data=str(bad))))
    sorted_rows = sorted(rows, key=lambda r: r["label"])  # a file sorted by class: the first 30 rows have one
    one_class = write_jsonl(tmp_path / "sorted.jsonl", sorted_rows)
    with pytest.raises(DataError, match=r"first 30 rows of source_data .* single class.*shuffle the data"):
        load_raw_data(data_args(streaming(tiny_recipe, source_data=str(one_class))))


def test_bad_label_deep_in_the_stream_stops_training_with_exit_2(tiny_recipe, tmp_path, capsys):
    from hf_transfer.cli import main

    rows = read_jsonl(Path(tiny_recipe["source_data"]))
    rows[80]["label"] = 7  # far past the 30-row sample: only the lazy check can see it
    source = write_jsonl(tmp_path / "deep.jsonl", rows)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(streaming(tiny_recipe, source_data=str(source), max_steps=40)))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error: label_column: source_data" in err and "row 80 has label 7, outside 0..1 (num_labels=2)" in err
    out = Path(tiny_recipe["output_dir"])
    assert not any((out / name).exists() for name in RESULT_FILES)


def test_unknown_class_name_deep_in_the_stream_names_the_row(tmp_path):
    rows = [{"text": f"review {i}", "label": ("good", "bad")[i % 2]} for i in range(60)]
    rows[45]["label"] = "meh"
    source = write_jsonl(tmp_path / "names.jsonl", rows)
    raw = load_raw_data(
        data_args(
            {
                "source_data": str(source),
                "target_data": None,
                "streaming": True,
                "max_steps": 1,
                "streaming_sample_size": 20,
            }
        )
    )
    assert raw.labels.names == ["bad", "good"]
    with pytest.raises(
        DataError,
        match=r"has labels \['meh'\] that the source does not have \(first at row 45.*"
        r"first 20 rows: raise streaming_sample_size",
    ):
        list(raw.source)


def test_a_value_the_reader_cannot_cast_is_a_data_error(tmp_path):
    # The JSON reader takes each column's type from the first block of the file and casts every later block to it:
    # a string label 11 MB in cannot become an int64. That must surface as a DataError naming the value and the fix,
    # not as pyarrow's ArrowInvalid, whether the reader meets it while taking the sample or later in the stream.
    import pyarrow as pa
    from datasets import IterableDataset

    path = tmp_path / "typed.jsonl"
    with open(path, "w") as handle:
        for i in range(12_000):
            handle.write(json.dumps({"text": f"{i} " + "x" * 1000, "label": "oops" if i == 11_500 else i % 2}) + "\n")
    expected = r"source_data: a row of .*typed.jsonl' cannot be read: .*'\"?oops\"?'.*fix that value"
    with pytest.raises(DataError, match=expected):
        raw = load_raw_data(
            data_args(
                {
                    "source_data": str(path),
                    "target_data": None,
                    "streaming": True,
                    "max_steps": 1,
                    "streaming_sample_size": 10,
                }
            )
        )
        for _ in StreamingTrainSet(raw.source, source_spec=str(path)):
            pass

    def rows():  # a stream whose reader fails after its first rows, as a later block of a file would
        yield from ({"text": "fine", "label": 0} for _ in range(5))
        raise pa.ArrowInvalid("Failed to parse string: 'oops' as a scalar of type int64")

    with pytest.raises(DataError, match=r"source_data: a row of 'late.jsonl' cannot be read: .*'oops'"):
        for _ in StreamingTrainSet(IterableDataset.from_generator(rows), source_spec="late.jsonl"):
            pass


# ---- resume ----------------------------------------------------------------------------------------------------


def test_resumed_streaming_run_equals_the_uninterrupted_one(tiny_recipe, tmp_path, one_thread):  # noqa: F811
    # DANN pairs every source row with a target row; 20 source rows (2 held out) and 8 rows a step make the 6 steps
    # wrap around the source 2.7 times, so the resumed run must find the same pairs in later, reshuffled passes.
    recipe = streaming(
        tiny_recipe,
        method=["dann"],
        max_source_samples=20,
        streaming_sample_size=20,
        max_steps=6,
        save_strategy="steps",
        save_steps=3,
        logging_steps=1,
    )
    whole = hf_transfer.train({**recipe, "output_dir": str(tmp_path / "whole")})
    resumed = hf_transfer.train(
        {
            **recipe,
            "output_dir": str(tmp_path / "resumed"),
            "resume_from_checkpoint": str(tmp_path / "whole" / "checkpoint-3"),
        }
    )
    assert resumed.trainer.state.global_step == 6
    final_whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    final_resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    for name in final_whole:
        torch.testing.assert_close(final_resumed[name], final_whole[name], rtol=0, atol=0, msg=name)
    for key in ("source_accuracy", "target_accuracy", "target_loss"):
        assert resumed.metrics[key] == whole.metrics[key], key
    losses = {h["step"]: h["loss"] for h in whole.trainer.state.log_history if "loss" in h}
    resumed_losses = {h["step"]: h["loss"] for h in resumed.trainer.state.log_history if "loss" in h}
    assert set(resumed_losses) >= {4, 5, 6} and all(resumed_losses[s] == losses[s] for s in resumed_losses)


# ---- instance weighting on a bounded sample ---------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["density_ratio", "kliep"])
def test_instance_weights_are_estimated_on_the_sample_and_scored_on_the_stream(tiny_recipe, estimator):
    recipe = streaming(
        tiny_recipe, method=["instance_weighting"], max_steps=2, **{"instance_weighting.estimator": estimator}
    )
    result = hf_transfer.train(recipe)
    sample_weights = np.load(result.output_dir / "instance_weights.npy")
    assert result.metrics["instance_weights/n"] == len(sample_weights) == 30  # the sample, not the 93-row stream
    # The training stream weights rows lazily with the estimator fitted on the sample: the sample's own rows get
    # their fitted weights back, and every later row (never seen by the estimator) gets a positive finite weight.
    rows = list(result.trainer.train_dataset.source.take(60))
    streamed = np.array([r["sample_weight"] for r in rows], dtype=np.float32)
    np.testing.assert_allclose(streamed[:30], sample_weights, rtol=1e-4, atol=1e-6)
    assert np.isfinite(streamed[30:]).all() and (streamed[30:] > 0).all()
    assert not np.allclose(streamed[30:], streamed[30:].mean())  # weights, not a constant


def test_estimators_that_cannot_score_new_rows_are_refused(tiny_recipe):
    recipe = streaming(tiny_recipe, method=["instance_weighting"], **{"instance_weighting.estimator": "kmm"})
    with pytest.raises(
        RecipeError,
        match=r"instance_weighting.estimator: kmm weights only the rows it is fitted "
        r"on.*use density_ratio or kliep \(or set streaming: false\)",
    ):
        hf_transfer.train(recipe)
    assert not any((Path(tiny_recipe["output_dir"]) / name).exists() for name in RESULT_FILES)


def test_density_ratio_predicts_the_fitted_weights_and_scores_new_rows():
    from hf_transfer.instance import DensityRatioClassifier

    rng = np.random.default_rng(0)
    xs, xt = rng.normal(0, 1, (200, 3)), rng.normal(0.7, 1, (150, 3))
    est = DensityRatioClassifier(max_weight=3.0).fit(xs, xt)
    assert est.weights_.max() == pytest.approx(3.0)  # some rows are capped: the scale must still carry over
    np.testing.assert_allclose(est.predict_weights(xs), est.weights_, rtol=1e-10)
    fresh = rng.normal(0, 1, (4000, 3))  # more rows from the source distribution: weights still average about 1
    assert est.predict_weights(fresh).mean() == pytest.approx(1.0, abs=0.1)
    # a target-like row weighs more than a source-like one
    assert est.predict_weights(np.full((1, 3), 1.5))[0] > est.predict_weights(np.full((1, 3), -1.5))[0]


# ---- diagnostics on a bounded sample ----------------------------------------------------------------------------


def test_diagnostics_sample_a_stream_without_reading_it_all(tmp_path):
    from hf_transfer.diagnostics import load_domain

    rows = [{"text": f"review number {i}", "label": i % 2} for i in range(5000)]
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    sample = load_domain(str(path), max_samples=20, seed=0, streaming=True)
    assert len(sample) == 20 and sample.streamed and set(sample.labels) == {0, 1}
    assert set(sample.texts) <= {r["text"] for r in rows}
    assert sample.texts != [r["text"] for r in rows[:20]]  # drawn through the shuffle buffer, not the head
    assert 200 <= sample.n_total < 5000  # the rows read: the 200-row buffer (plus read-ahead), not the file
    assert sample.texts == load_domain(str(path), max_samples=20, seed=0, streaming=True).texts  # seeded


def test_diagnose_cli_streaming(tiny_model_dir, review_files, tmp_path, capsys):
    from hf_transfer.cli import main

    out = tmp_path / "diag"
    code = main(
        [
            "diagnose",
            "--source",
            review_files["source"],
            "--target",
            review_files["target"],
            "--models",
            tiny_model_dir,
            "--output",
            str(out),
            "--max_samples",
            "40",
            "--num_permutations",
            "0",
            "--max_length",
            "32",
            "--streaming",
        ]
    )
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "diagnostics.json").read_text())
    assert results["streaming"] is True and results["n_target"] == 40


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv", ".parquet"])
def test_every_file_format_streams_like_it_loads(tmp_path, suffix):
    from datasets import Dataset

    from hf_transfer.data import load_table

    table = Dataset.from_dict({"text": ["good", "bad", "fine"], "label": [1, 0, 1]})
    path = tmp_path / f"rows{suffix}"
    if suffix == ".jsonl":
        table.to_json(path)
    elif suffix == ".parquet":
        table.to_parquet(path)
    else:
        table.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    stream = load_table(str(path), field="source_data", streaming=True)
    assert list(stream) == load_table(str(path), field="source_data").to_list()


def test_hub_id_offline_is_a_clear_error_when_streaming(monkeypatch):
    from hf_transfer.data import load_table

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"source_data: cannot read 'someone/some-dataset'.*offline"):
        load_table("someone/some-dataset", field="source_data", streaming=True)


def test_take_rows_keeps_declared_features_and_refuses_empty_streams(tmp_path):
    from datasets import ClassLabel, Dataset

    table = Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 1]})
    table = table.cast_column("label", ClassLabel(names=["neg", "pos"]))
    head = take_rows(table.to_iterable_dataset(), 2, field="source_data", spec="mem")
    assert head.features["label"].names == ["neg", "pos"] and head["text"] == ["a", "b"]
    with pytest.raises(DataError, match=r"source_data: 'mem' has no rows"):
        take_rows(table.to_iterable_dataset().take(0), 2, field="source_data", spec="mem")


# ---- two processes (slow: two interpreters start) ---------------------------------------------------------------

RECORDER = """
import json, os, sys
import hf_transfer.data as data

collate = data.TransferCollator.__call__


def record(self, rows):  # every batch this process collates, in order: training batches come first
    with open(os.environ["ROWS_LOG"] + "." + os.environ.get("RANK", "0"), "a") as handle:
        for row in rows:
            handle.write(json.dumps(row["input_ids"]) + "\\n")
    return collate(self, rows)


data.TransferCollator.__call__ = record
from hf_transfer.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_process_streaming_trains_each_row_once(tiny_recipe, tmp_path):
    recipe = streaming(tiny_recipe, max_steps=3, per_device_train_batch_size=4, max_length=32)
    recipe.pop("use_cpu")
    path, script, log = tmp_path / "r.yaml", tmp_path / "record.py", tmp_path / "rows"
    path.write_text(yaml.safe_dump(recipe))
    script.write_text(RECORDER)
    cmd = accelerate_launch(str(script), "train", str(path))
    env = {**os.environ, "PYTHONPATH": str(REPO), "ROWS_LOG": str(log)}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    per_rank = [[json.loads(line) for line in Path(f"{log}.{rank}").read_text().splitlines()][:12] for rank in (0, 1)]
    # The same recipe's stream read in one process: its first 3 global batches of 8 rows
    from hf_transfer.backbones import load_tokenizer

    args = data_args(recipe)
    tokenizer = load_tokenizer(tiny_recipe["model_name_or_path"])
    stream = StreamingTrainSet(prepare_data(load_raw_data(args, seed=42), tokenizer, args, seed=42).train)
    expected = [r["input_ids"] for _, r in zip(range(24), stream)]
    # rank 0 trained rows 0-3, 8-11, 16-19 and rank 1 rows 4-7, 12-15, 20-23: every row once, none twice
    assert [per_rank[rank][k : k + 4] for k in range(0, 12, 4) for rank in (0, 1)] == [
        expected[k : k + 4] for k in range(0, 24, 4)
    ]
