"""Taggers whose entity types differ between source and target (hf_transfer/tasks/token_labels.py and
``method: label_relation`` on a tagger): the type-level plan from a recipe's ``label_map`` or from the shipped
entity-type graph, expanded to BIO rows checked against hand computations; a source-then-target run whose card shows
the plan; and one run on the union of two label sets (``source_data`` as a list of files)."""

from __future__ import annotations

import json

import pytest
import torch

from hf_transfer.errors import RecipeError
from hf_transfer.methods.label_relation import ENTITY_TYPES_GRAPH, LabelRelationConfig, initialise_from_graph
from hf_transfer.tasks.token_labels import entity_types, expand_to_tags, is_bio, type_plan_from_map
from tests.test_token_classification import write_conll

SOURCE_TAGS = ["O", "B-location", "I-location", "B-misc", "I-misc", "B-organisation", "I-organisation", "B-person",
               "I-person"]
TARGET_TAGS = ["O", "B-academicjournal", "I-academicjournal", "B-country", "I-country", "B-election", "B-location",
               "I-location", "B-politician", "I-politician", "B-politicalparty", "I-politicalparty", "B-zzz",
               "I-zzz"]


def _tagger(model_dir: str, tags: list[str], seed: int):
    from transformers import AutoModelForTokenClassification

    torch.manual_seed(seed)
    model = AutoModelForTokenClassification.from_pretrained(
        model_dir, num_labels=len(tags), id2label=dict(enumerate(tags)), label2id={t: i for i, t in enumerate(tags)})
    with torch.no_grad():  # distinct, non-zero rows, so that every mix is visible
        model.classifier.weight.normal_()
        model.classifier.bias.normal_()
    return model


@pytest.fixture
def taggers(tiny_model_dir):
    from transformers import AutoTokenizer

    source, target = _tagger(tiny_model_dir, SOURCE_TAGS, 0), _tagger(tiny_model_dir, TARGET_TAGS, 1)
    fresh = (target.classifier.weight.detach().clone(), target.classifier.bias.detach().clone())
    return source, target, fresh, AutoTokenizer.from_pretrained(tiny_model_dir)


def _rows(source):
    w, b = source.classifier.weight.detach(), source.classifier.bias.detach()
    return (lambda tag: w[SOURCE_TAGS.index(tag)]), (lambda tag: b[SOURCE_TAGS.index(tag)])


def test_label_map_rows_by_hand(taggers):
    source, target, (fresh_w, fresh_b), tokenizer = taggers
    label_map = {"politician": "person", "country": ["location", "organisation"],
                 "politicalparty": {"organisation": 3, "person": 1}}
    config = LabelRelationConfig(label_map=label_map, link_with_encoder=False)
    report = initialise_from_graph(config, target, tokenizer, TARGET_TAGS, source_model=source)
    w, b = _rows(source)
    got_w, got_b = target.classifier.weight.detach(), target.classifier.bias.detach()

    def row(tag):
        return got_w[TARGET_TAGS.index(tag)]

    torch.testing.assert_close(row("O"), w("O"))  # O copies O
    torch.testing.assert_close(got_b[0], b("O"))
    torch.testing.assert_close(row("B-politician"), w("B-person"))
    torch.testing.assert_close(row("I-politician"), w("I-person"))
    torch.testing.assert_close(row("B-country"), 0.5 * w("B-location") + 0.5 * w("B-organisation"))
    torch.testing.assert_close(row("I-country"), 0.5 * w("I-location") + 0.5 * w("I-organisation"))
    torch.testing.assert_close(row("I-politicalparty"), 0.75 * w("I-organisation") + 0.25 * w("I-person"))
    torch.testing.assert_close(got_b[TARGET_TAGS.index("B-politicalparty")],
                               0.75 * b("B-organisation") + 0.25 * b("B-person"))
    torch.testing.assert_close(row("B-location"), w("B-location"))  # a shared type copies itself
    for tag in ("B-election", "B-academicjournal", "I-academicjournal", "B-zzz", "I-zzz"):  # unmapped: fresh
        i = TARGET_TAGS.index(tag)
        torch.testing.assert_close(got_w[i], fresh_w[i])
        torch.testing.assert_close(got_b[i], fresh_b[i])
    assert report["initialised"] == 9  # O, and B-/I- of politician, country, politicalparty, location
    assert report["counts"] == {"same": 1, "given": 3, "neighbours": 0, "none": 3}
    assert "| politicalparty | given | organisation (0.75), person (0.25) |" in report["table"]
    assert "| zzz | none | — (fresh initialisation) |" in report["table"]


def test_entity_type_graph_plan_by_hand(taggers):
    source, target, (fresh_w, _), tokenizer = taggers
    config = LabelRelationConfig(graph="entity_types", link_with_encoder=False)
    report = initialise_from_graph(config, target, tokenizer, TARGET_TAGS, source_model=source)
    w, _ = _rows(source)
    got = target.classifier.weight.detach()
    # academicjournal is_a misc (1) and related_to organisation (0.5): the walk's first step splits 2/3, 1/3, and
    # no two-step path from it ends on a CoNLL type (their other neighbours are fine types).
    torch.testing.assert_close(got[TARGET_TAGS.index("B-academicjournal")],
                               2 / 3 * w("B-misc") + 1 / 3 * w("B-organisation"))
    torch.testing.assert_close(got[TARGET_TAGS.index("B-politician")], w("B-person"))
    torch.testing.assert_close(got[TARGET_TAGS.index("I-country")], w("I-location"))
    torch.testing.assert_close(got[TARGET_TAGS.index("B-election")], w("B-misc"))
    torch.testing.assert_close(got[TARGET_TAGS.index("I-politicalparty")], w("I-organisation"))
    for tag in ("B-zzz", "I-zzz"):  # not in the graph (and no encoder linking): fresh
        torch.testing.assert_close(got[TARGET_TAGS.index(tag)], fresh_w[TARGET_TAGS.index(tag)])
    plan = report["type_plan"]
    assert plan["location"]["how"] == "same" and plan["zzz"]["how"] == "none"
    assert plan["academicjournal"] == {"how": "neighbours", "from": [["misc", pytest.approx(2 / 3, abs=1e-6)],
                                                                     ["organisation", pytest.approx(1 / 3, abs=1e-6)]]}
    assert report["target_links"]["counts"]["unlinked"] == 1


def test_shipped_graph_covers_every_crossner_type():
    from hf_transfer.relation import KnowledgeGraph, label_transfer_plan, link_names

    # Every type of the CrossNER politics, science and music domains reaches a CoNLL type.
    crossner = ["politician", "politicalparty", "election", "event", "country", "location", "organisation", "person",
                "misc", "scientist", "university", "academicjournal", "astronomicalobject", "award",
                "chemicalcompound", "chemicalelement", "discipline", "enzyme", "protein", "theory", "album", "band",
                "musicalartist", "musicalinstrument", "musicgenre", "song"]
    kg = KnowledgeGraph.load(ENTITY_TYPES_GRAPH)
    conll = ["PER", "LOC", "ORG", "MISC"]  # the Hub's conll2003 names link through the aliases
    links = link_names(crossner, kg)
    assert links.unlinked == []
    plan = label_transfer_plan(kg, links.nodes, link_names(conll, kg).nodes, target_names=crossner,
                               source_names=conll)
    assert "none" not in plan.how
    assert dict(zip(crossner, (s[0][0] for s in plan.sources)))["musicalartist"] == "PER"


def test_bio_helpers_and_expansion():
    assert is_bio(SOURCE_TAGS) and not is_bio(["negative", "positive"]) and not is_bio(["O"])
    assert entity_types(TARGET_TAGS)[:3] == ["academicjournal", "country", "election"]
    plan = type_plan_from_map({"a": "x"}, ["a", "b"], ["x"])
    tags = expand_to_tags(plan, ["O", "B-a", "I-a", "B-b"], ["O", "B-x"])  # the source has no I-x
    assert tags.how == ["same", "given", "none", "none"]


@pytest.mark.parametrize("label_map, match", [
    ({"senator": "person"}, r"label_relation.label_map: 'senator' is not an entity type of the target data"),
    ({"politician": "human"}, r"label_relation.label_map.politician: 'human' is not an entity type of the source"),
    ({"politician": {"person": 0}}, r"weight of 'person' must be a number > 0"),
    ({"politician": 3}, r"expected a source type"),
])
def test_bad_label_map_is_refused(taggers, label_map, match):
    source, target, _, tokenizer = taggers
    with pytest.raises(RecipeError, match=match) as err:
        initialise_from_graph(LabelRelationConfig(label_map=label_map), target, tokenizer, TARGET_TAGS,
                              source_model=source)
    assert "\n" not in str(err.value)


def test_label_map_needs_taggers_and_a_mapping(tiny_model_dir):
    from transformers import AutoTokenizer

    with pytest.raises(RecipeError, match="label_relation.label_map: expected a mapping"):
        LabelRelationConfig(label_map="[a, b]")
    assert LabelRelationConfig(label_map="{politician: person}").label_map == {"politician": "person"}
    source = _tagger(tiny_model_dir, ["negative", "positive"], 0)
    target = _tagger(tiny_model_dir, TARGET_TAGS, 1)
    with pytest.raises(RecipeError, match="label_relation.source_model: .* are not tags"):
        initialise_from_graph(LabelRelationConfig(link_with_encoder=False), target,
                              AutoTokenizer.from_pretrained(tiny_model_dir), TARGET_TAGS, source_model=source)


# ---- runs ----------------------------------------------------------------------------------------------------------

NEWS = [("John Smith lives in Paris", "B-person I-person O O B-location"),
        ("Mary works at Google in Berlin", "B-person O O B-organisation O B-location"),
        ("The Red Cross helped", "O B-organisation I-organisation O"),
        ("Peter saw Anna in Rome", "B-person O B-person O B-location")]
POLITICS = [("Senator Obama visited Ohio", "O B-politician O B-location"),
            ("The Labour Party won the 1997 election", "O B-politicalparty I-politicalparty O O B-election "
             "I-election"),
            ("Merkel spoke in Germany", "B-politician O O B-country")]


def _run(tiny_model_dir, tmp_path, **over) -> dict:
    return {"model_name_or_path": tiny_model_dir, "task": "token-classification", "target_data": None,
            "metrics": ["seqeval"], "selection_validators": [], "max_length": 32, "max_steps": 2,
            "per_device_train_batch_size": 4, "learning_rate": 1e-3, "save_strategy": "no", "use_cpu": True,
            "dataloader_pin_memory": False, "disable_tqdm": True, "source_eval_fraction": 0.0, **over}


def test_source_then_target_run_reports_the_plan(tiny_model_dir, tmp_path):
    import hf_transfer
    from hf_transfer.tasks import load_trained

    news, politics = write_conll(tmp_path / "news.txt", NEWS * 3), write_conll(tmp_path / "politics.txt", POLITICS)
    source_dir = tmp_path / "news-tagger"
    hf_transfer.train(_run(tiny_model_dir, tmp_path, source_data=news, output_dir=str(source_dir)))
    # The target run starts from the source tagger (its encoder; the head re-created at the target's size and then
    # set by the plan); learning rate 0, so the exported head is exactly the initialisation.
    result = hf_transfer.train(_run(
        str(source_dir), tmp_path, source_data=politics, output_dir=str(tmp_path / "politics-tagger"),
        method=["label_relation"], label_relation={"label_map": {"politician": "person", "country": "location",
                                                                 "politicalparty": "organisation"}},
        learning_rate=0.0, max_steps=1))
    out = result.output_dir
    assert result.metrics["label_relation/given"] == 3 and result.metrics["label_relation/none"] == 1  # election
    report = json.loads((out / "label_relation.json").read_text())
    card = (out / "README.md").read_text()
    assert "## Label correspondence" in card and "| politician | given | person (1.00) |" in card
    assert report["table"] in card
    source, _ = load_trained(source_dir)
    exported, _ = load_trained(out)
    s_tags, t_tags = list(source.config.id2label.values()), list(exported.config.id2label.values())
    s_w, t_w = source.classifier.weight.detach(), exported.classifier.weight.detach()
    torch.testing.assert_close(t_w[t_tags.index("I-politicalparty")], s_w[s_tags.index("I-organisation")])
    torch.testing.assert_close(t_w[t_tags.index("B-location")], s_w[s_tags.index("B-location")])
    # A later run into the same folder without label_relation shows no stale plan.
    again = hf_transfer.train(_run(str(source_dir), tmp_path, source_data=politics, output_dir=str(out),
                                   overwrite_output_dir=True))
    assert "Label correspondence" not in (again.output_dir / "README.md").read_text()


def test_union_of_label_sets_from_a_list_of_files(tiny_model_dir, tmp_path):
    import hf_transfer
    from hf_transfer.data import load_raw_data
    from hf_transfer.recipe import load_recipe

    news, politics = write_conll(tmp_path / "news.txt", NEWS), write_conll(tmp_path / "politics.txt", POLITICS)
    recipe = _run(tiny_model_dir, tmp_path, source_data=[news, politics, politics], output_dir=str(tmp_path / "u"))
    raw = load_raw_data(load_recipe(recipe).data)
    # Every file's tags, in the stable BIO order (O, then by type, B- before I-), whatever the file order.
    assert raw.labels.names == ["O", "B-country", "I-country", "B-election", "I-election", "B-location",
                                "I-location", "B-organisation", "I-organisation", "B-person", "I-person",
                                "B-politicalparty", "I-politicalparty", "B-politician", "I-politician"]
    assert len(raw.source) == len(NEWS) + 2 * len(POLITICS)  # a file listed twice counts twice (oversampling)
    swapped = load_raw_data(load_recipe({**recipe, "source_data": [politics, news]}).data)
    assert swapped.labels.names == raw.labels.names
    result = hf_transfer.train(recipe)
    saved = (result.output_dir / "recipe.yaml").read_text()
    assert f"- {news}" in saved or news in saved  # the list is saved, so the run can be rerun
    from hf_transfer.recipe import load_recipe as reload

    assert list(reload(str(result.output_dir / "recipe.yaml")).data.source_data.specs) == [news, politics, politics]
    assert list(result.trainer.model.config.id2label.values()) == raw.labels.names


def test_source_data_list_is_refused_where_it_cannot_work(tiny_model_dir, tmp_path):
    from hf_transfer.data import load_raw_data
    from hf_transfer.errors import DataError
    from hf_transfer.recipe import load_recipe

    with pytest.raises(RecipeError, match="source_data: expected a non-empty list of files"):
        load_recipe(_run(tiny_model_dir, tmp_path, source_data=[]))
    with pytest.raises(DataError, match="target_data: expected a file, folder or Hub id"):  # a list: source only
        load_recipe(_run(tiny_model_dir, tmp_path, target_data=["a.txt", "b.txt"]))
    news = write_conll(tmp_path / "news.txt", NEWS)
    jsonl = tmp_path / "other.jsonl"  # a file whose columns differ from the CoNLL file's
    jsonl.write_text(json.dumps({"words": ["a"], "tags": ["O"]}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"source_data: .*other.jsonl.* columns"):
        load_raw_data(load_recipe(_run(tiny_model_dir, tmp_path, source_data=[news, str(jsonl)])).data)
