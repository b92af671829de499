import pytest
import torch
from datasets import Dataset

from hf_transfer.data import (
    TransferCollator,
    accuracy_metrics,
    load_raw_data,
    pair_with_target,
    prepare_data,
)
from hf_transfer.errors import DataError
from hf_transfer.recipe import load_recipe

from .conftest import write_jsonl


def data_args(**kw):
    return load_recipe(kw).data


def test_missing_empty_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match=r"source_data: file '.*nope.jsonl' does not exist"):
        load_raw_data(data_args(source_data=str(tmp_path / "nope.jsonl")))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=r"source_data: .*empty.jsonl' is empty"):
        load_raw_data(data_args(source_data=str(empty)))
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(DataError, match=r"unsupported extension"):
        load_raw_data(data_args(source_data=str(odd)))


def test_missing_column_lists_the_columns(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{"review": "good", "label": 1}, {"review": "bad", "label": 0}])
    with pytest.raises(DataError, match=r"text_column: column 'text' is not in source_data .* are review, label"):
        load_raw_data(data_args(source_data=str(src), target_data=None))


def test_labels_out_of_range_and_non_integer(tmp_path):
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"text": "c", "label": 3}]
    src = write_jsonl(tmp_path / "s.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2 has label 3, outside 0..1 \(num_labels=2\)"):
        load_raw_data(data_args(source_data=str(src), target_data=None), num_labels=2)
    src2 = write_jsonl(tmp_path / "s2.jsonl", [{"text": "a", "label": 0.5}, {"text": "b", "label": 1.0}])
    with pytest.raises(DataError, match=r"row 0 has label 0.5; labels must be integer"):
        load_raw_data(data_args(source_data=str(src2), target_data=None))


def test_string_labels_map_to_ids_and_target_must_share_them(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    tgt = write_jsonl(tmp_path / "t.jsonl", [{"text": "c", "label": "neg"}, {"text": "d", "label": "pos"}])
    raw = load_raw_data(data_args(source_data=str(src), target_data=str(tgt)))
    assert raw.labels.names == ["neg", "pos"]
    assert raw.source["labels"] == [1, 0]
    assert raw.eval["labels"] == [0, 1]  # target labels evaluate, never train
    bad = write_jsonl(tmp_path / "b.jsonl", [{"text": "c", "label": "meh"}])
    with pytest.raises(DataError, match=r"target_data .* has labels \['meh'\] that the source does not have"):
        load_raw_data(data_args(source_data=str(src), target_data=str(bad)))


def test_single_class_source_is_refused(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 1}])
    with pytest.raises(DataError, match="single class"):
        load_raw_data(data_args(source_data=str(src), target_data=None))


def test_pairing_covers_both_sides_and_drops_target_labels():
    source = Dataset.from_dict({"input_ids": [[i] for i in range(5)], "labels": [0, 1, 0, 1, 0],
                                "length": [1] * 5})
    target = Dataset.from_dict({"input_ids": [[100 + i, 7] for i in range(12)], "labels": [1] * 12,
                                "length": [2] * 12})
    paired = pair_with_target(source, target, seed=0)
    assert len(paired) == 12
    assert sorted(r[0] - 100 for r in paired["target_input_ids"]) == list(range(12))  # every target row once
    counts = [sum(1 for r in paired["input_ids"] if r == [i]) for i in range(5)]
    assert min(counts) >= 2 and max(counts) <= 3  # source cycles evenly
    assert "target_labels" not in paired.column_names
    assert paired["length"] == [2] * 12
    assert pair_with_target(source, target, seed=0)["input_ids"] == paired["input_ids"]  # deterministic


def test_collator_pads_source_and_target_together(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [
        {"input_ids": [101, 5, 102], "attention_mask": [1, 1, 1], "labels": 1, "sample_weight": 2.0,
         "target_input_ids": [101, 6, 7, 8, 102], "target_attention_mask": [1] * 5},
        {"input_ids": [101, 102], "attention_mask": [1, 1], "labels": 0, "sample_weight": 0.5,
         "target_input_ids": [101, 9, 102], "target_attention_mask": [1] * 3},
    ]
    batch = TransferCollator(tok)(rows)
    assert batch["input_ids"].shape == (4, 5)
    assert batch["labels"].tolist() == [1, 0, -100, -100]
    assert batch["domain"].tolist() == [0, 0, 1, 1]
    assert batch["sample_weight"].tolist() == [2.0, 0.5, 0.0, 0.0]
    assert batch["attention_mask"].sum(1).tolist() == [3, 2, 5, 3]


def test_prepare_holds_out_source_and_pairs(tiny_model_dir, review_files):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = data_args(source_data=review_files["source"], target_data=review_files["target"], max_length=32)
    raw = load_raw_data(args)
    data = prepare_data(raw, tok, args)
    assert len(data.source_eval) == 10 and len(data.train) == 86
    assert sorted(list(data.train["labels"]) + list(data.source_eval["labels"])) == sorted(raw.source["labels"])
    assert max(data.train["length"]) <= 32
    assert len(data.target_eval) == 64


def test_accuracy_metrics_against_hand_count():
    from transformers import EvalPrediction

    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]]).numpy()
    labels = torch.tensor([0, 0, 0, 1]).numpy()
    m = accuracy_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert m["accuracy"] == pytest.approx(0.75)
    # class 0: tp=2, pred=2, true=3 -> f1 0.8; class 1: tp=1, pred=2, true=1 -> f1 2/3
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_csv_tsv_parquet_and_folder_load_alike(tmp_path):
    import pandas as pd

    from hf_transfer.data import load_table

    frame = pd.DataFrame({"text": ["good", "bad", "fine"], "label": [1, 0, 1]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_csv(tmp_path / "d.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "d.parquet")
    folder = tmp_path / "folder"
    folder.mkdir()
    frame.to_json(folder / "train.jsonl", orient="records", lines=True)
    for spec in ("d.csv", "d.tsv", "d.parquet", "folder"):
        table = load_table(str(tmp_path / spec), field="source_data")
        assert table["text"] == ["good", "bad", "fine"] and table["label"] == [1, 0, 1], spec


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    from hf_transfer.data import load_table

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"source_data: cannot read 'someone/some-dataset'"):
        load_table("someone/some-dataset", field="source_data")
