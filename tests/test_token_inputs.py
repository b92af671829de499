"""Every bad tagging input of the issue is refused before training with one line naming the file, row or field: the
ones tests/test_token_classification.py does not cover already (tag length, empty sentence, unknown tag, I- with no
B-, a line that is not ``word<TAB>tag``): a mixed-up column in its three forms, tags mixing names and ids, and a
union of files whose tag columns disagree."""

from __future__ import annotations

import json

import pytest

from hf_transfer.data import load_raw_data
from hf_transfer.errors import DataError, RecipeError
from hf_transfer.recipe import load_recipe
from tests.test_token_classification import SOURCE, files, token_recipe, write_conll, write_jsonl  # noqa: F401


def _rows(sentences):
    return [{"tokens": s.split(), "ner_tags": t.split()} for s, t in sentences]


@pytest.mark.parametrize("case, error, match", [
    # the words column holds sentences as text, not word lists
    ("text", DataError, r"row 0 of column 'tokens' holds 'John Smith lives in Paris \.'; .* a list of words per row"),
    # the tags column holds one tag a row, not a list
    ("scalar", DataError, r"row 0 holds 'B-PER'; task token-classification reads a list of tags per row"),
    # words and tags swapped: the "tags" are words
    ("swapped", DataError, r"row 0 has tag 'John'; tags are O, B-<type> or I-<type> \(BIO\)"),
    # tag names and tag ids in one column
    ("mixed", DataError, r"mixes tag names and tag ids; use one kind"),
])
def test_mixed_up_columns(tmp_path, token_recipe, case, error, match):  # noqa: F811
    rows = _rows(SOURCE)
    recipe = {**token_recipe, "target_data": None}
    if case == "text":
        rows = [{"tokens": s, "ner_tags": t.split()} for s, t in SOURCE]
    elif case == "scalar":
        rows = [{"tokens": s.split(), "ner_tags": t.split()[0]} for s, t in SOURCE]
    elif case == "swapped":
        recipe.update(text_column="ner_tags", label_column="tokens")
    else:
        rows[1]["ner_tags"] = [0] * len(rows[1]["tokens"])
    recipe["source_data"] = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(error, match=match) as err:
        load_raw_data(load_recipe(recipe).data)
    assert "bad.jsonl" in str(err.value) and "\n" not in str(err.value)


def test_one_column_for_words_and_tags(token_recipe):  # noqa: F811
    with pytest.raises(RecipeError, match=r"^label_column: is the same column as text_column \('tokens'\)"):
        load_recipe({**token_recipe, "text_column": "tokens", "label_column": "tokens"})


def test_union_of_files_whose_tag_columns_differ(tmp_path, token_recipe):  # noqa: F811
    conll = write_conll(tmp_path / "news.txt", SOURCE)
    ids = tmp_path / "ids.jsonl"  # the same columns, tags as ids: one table cannot hold both kinds
    ids.write_text("".join(json.dumps({"tokens": r["tokens"], "ner_tags": [0] * len(r["tokens"])}) + "\n"
                           for r in _rows(SOURCE)), encoding="utf-8")
    with pytest.raises(DataError, match=r"^source_data: the files .* hold the same columns with different types"):
        load_raw_data(load_recipe({**token_recipe, "target_data": None, "source_data": [conll, str(ids)]}).data)
