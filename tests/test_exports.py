"""Every export reloads without hf_transfer: full models, merged adapters and adapters (2 and 3 classes, class names
kept), in a fresh Python process that never imports hf_transfer; image adapters through ``load_trained``; and an
adapter names the Hub id of its base, not the folder of a packaged copy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_transfer
from tests.conftest import read_jsonl, write_jsonl
from tests.vision.conftest import digits_npz, image_recipe, tiny_vit_dir  # noqa: F401  (fixtures)

TEXTS = ["The kettle boils fast and pours cleanly.", "A dull, confusing book; I gave up halfway."]

# Run in a fresh interpreter: loads exports the way a user would, with transformers / peft only. Several folders in
# one process (each loaded on its own, nothing shared between them): each interpreter costs seconds to start.
LOADER = r"""
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

def load(kind, folder, texts):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if kind == "adapter":
        from peft import AutoPeftModelForSequenceClassification

        # The adapter's classifier_config.json holds the labels the base config lacks; from_pretrained passes them on.
        labels = json.load(open(f"{folder}/classifier_config.json"))
        id2label = {int(k): v for k, v in labels["id2label"].items()}
        label_kwargs = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
        model = AutoPeftModelForSequenceClassification.from_pretrained(folder, **label_kwargs)
        classifier = pipeline("text-classification", model=model, tokenizer=tokenizer)
        # transformers' own PEFT integration: the pipeline finds the adapter and its base from the folder alone.
        by_folder = pipeline("text-classification", model=folder, model_kwargs=label_kwargs)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        classifier = by_folder = pipeline("text-classification", model=folder)
    model.eval()
    with torch.no_grad():
        logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits.tolist()
    return {"logits": logits, "labels": [p["label"] for p in classifier(texts)],
            "folder_labels": [p["label"] for p in by_folder(texts)],
            "id2label": {int(k): v for k, v in model.config.id2label.items()}}

jobs, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
loaded = {folder: load(kind, folder, texts) for kind, folder in jobs}
assert "hf_transfer" not in sys.modules
print(json.dumps(loaded))
"""


def load_in_fresh_process(jobs: list[tuple[str, Path]], cwd: Path) -> dict[Path, dict]:
    """Each ``(kind, folder)`` of ``jobs`` ("adapter" or "full") loaded in one fresh process, by folder."""
    done = subprocess.run([sys.executable, "-c", LOADER, json.dumps([(k, str(f)) for k, f in jobs]),
                           json.dumps(TEXTS)], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for result in loaded.values():
        result["id2label"] = {int(k): v for k, v in result["id2label"].items()}  # JSON keys are strings
    return {Path(folder): result for folder, result in loaded.items()}


def reference_logits(model, tokenizer) -> torch.Tensor:
    model = model.cpu().eval()
    with torch.no_grad():
        return model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits


@pytest.fixture(scope="module")
def three_class_file(review_files, tmp_path_factory) -> str:
    rows = read_jsonl(Path(review_files["source"]))[:48]
    rows = [{"text": r["text"], "label": i % 3} for i, r in enumerate(rows)]
    return str(write_jsonl(tmp_path_factory.mktemp("three") / "three.jsonl", rows))


def _recipe(tiny_model_dir, review_files, source, out, **extra) -> dict:
    return {"model_name_or_path": tiny_model_dir, "source_data": source, "target_data": review_files["target"],
            "max_length": 32, "output_dir": str(out), "max_steps": 2, "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 32, "learning_rate": 1e-3, "save_strategy": "no", "use_cpu": True,
            "disable_tqdm": True, "report_to": "none", "selection_validators": ["none"], **extra}


LORA = {"peft": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}}
THREE = ["negative", "neutral", "positive"]
NAMES = {2: ["negative", "positive"], 3: THREE}


@pytest.fixture(scope="module")
def text_exports(tiny_model_dir, review_files, three_class_file, tmp_path_factory) -> dict:
    """The text exports the reload tests share, by name: adapters of 2 and 3 classes (merged too) and a full
    3-class model, each with the trained model's logits on TEXTS; then every folder loaded in one fresh process
    (``loaded``, by folder)."""
    folder = tmp_path_factory.mktemp("exports")
    runs = {}
    for classes in (2, 3):
        source = three_class_file if classes == 3 else review_files["source"]
        runs[f"adapter{classes}"] = hf_transfer.train(
            _recipe(tiny_model_dir, review_files, source, folder / f"adapter{classes}" / "out",
                    class_names=NAMES[classes], merge_adapter=True, **LORA))
    runs["full3"] = hf_transfer.train(_recipe(tiny_model_dir, review_files, three_class_file,
                                              folder / "full3" / "out", class_names=THREE))
    exports = {name: {"result": result, "out": result.output_dir,
                      "expected": reference_logits(result.model, result.tokenizer)} for name, result in runs.items()}
    jobs = [("adapter", exports["adapter2"]["out"]), ("full", exports["adapter2"]["out"] / "merged"),
            ("adapter", exports["adapter3"]["out"]), ("full", exports["adapter3"]["out"] / "merged"),
            ("full", exports["full3"]["out"])]
    exports["loaded"] = load_in_fresh_process(jobs, cwd=folder)
    return exports


@pytest.mark.parametrize("classes", [2, 3])
def test_adapter_reloads_without_hf_transfer_with_its_class_names(classes, tiny_model_dir, text_exports):
    names = NAMES[classes]
    export = text_exports[f"adapter{classes}"]
    out, expected = export["out"], export["expected"]
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    # A local base folder is its own "Hub id": recorded absolute, so the adapter loads from any working directory.
    assert adapter_config["base_model_name_or_path"] == str(Path(tiny_model_dir).resolve())
    assert expected.shape == (2, classes)

    loaded = text_exports["loaded"][out]
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=1e-4, atol=1e-5)
    assert loaded["id2label"] == dict(enumerate(names))
    predicted = [names[i] for i in expected.argmax(-1).tolist()]
    assert loaded["labels"] == predicted and loaded["folder_labels"] == predicted

    merged = text_exports["loaded"][out / "merged"]
    torch.testing.assert_close(torch.tensor(merged["logits"]), expected, rtol=1e-4, atol=1e-5)
    assert merged["id2label"] == dict(enumerate(names)) and merged["labels"] == predicted

    # hf-transfer's own loader (what `hf-transfer evaluate` uses) gives the same model
    model, tokenizer = hf_transfer.run.load_trained(out)
    torch.testing.assert_close(reference_logits(model, tokenizer), expected, rtol=1e-4, atol=1e-5)


def test_full_three_class_export_reloads_without_hf_transfer(text_exports):
    export = text_exports["full3"]
    assert not (export["out"] / "adapter_config.json").exists()
    expected = export["expected"]
    loaded = text_exports["loaded"][export["out"]]
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=1e-4, atol=1e-5)
    assert loaded["id2label"] == dict(enumerate(THREE))
    assert loaded["labels"] == [THREE[i] for i in expected.argmax(-1).tolist()]


def test_adapter_on_a_packaged_base_names_its_hub_id(tmp_path):
    """The packaged MiniLM loads from site-packages, but the adapter must name the Hub repository."""
    from hf_transfer.backbones import load_classifier, resolve_model_path, validate_peft_block, wrap_with_peft

    hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_model_path(hub_id) != hub_id  # the packaged copy is what actually loads
    model = load_classifier(hub_id, num_labels=3)
    peft_model = wrap_with_peft(model, validate_peft_block({"r": 2, "target_modules": ["query"]}))
    peft_model.save_pretrained(tmp_path, save_embedding_layers=False)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id


def test_image_adapter_reloads(tiny_vit_dir, image_recipe):  # noqa: F811  (fixtures imported above)
    result = hf_transfer.train({**image_recipe, "model_name_or_path": tiny_vit_dir, "merge_adapter": True,
                                "peft": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}})
    out = result.output_dir
    assert (out / "adapter_config.json").is_file() and (out / "classifier_config.json").is_file()
    pixels = torch.rand(3, 3, 32, 32)
    trained = result.model.cpu().eval()
    with torch.no_grad():
        expected = trained(pixel_values=pixels).logits
    model, processor = hf_transfer.run.load_trained(out)
    assert type(processor).__name__.endswith("ImageProcessorPil") or hasattr(processor, "size")
    assert model.config.num_labels == 10
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).logits, expected, rtol=1e-4, atol=1e-5)

    # Without hf_transfer: PeftModel on the base built with the adapter's labels.
    script = r"""
import json, sys
import torch
from peft import PeftConfig, PeftModel
from transformers import AutoModelForImageClassification
folder = sys.argv[1]
labels = json.load(open(f"{folder}/classifier_config.json"))
base = AutoModelForImageClassification.from_pretrained(
    PeftConfig.from_pretrained(folder).base_model_name_or_path,
    id2label={int(k): v for k, v in labels["id2label"].items()}, ignore_mismatched_sizes=True)
model = PeftModel.from_pretrained(base, folder).eval()
torch.manual_seed(0)
with torch.no_grad():
    print(json.dumps(model(pixel_values=torch.load(sys.argv[2])).logits.tolist()))
assert "hf_transfer" not in sys.modules
"""
    torch.save(pixels, out.parent / "pixels.pt")
    done = subprocess.run([sys.executable, "-c", script, str(out), str(out.parent / "pixels.pt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    torch.testing.assert_close(torch.tensor(json.loads(done.stdout.strip().splitlines()[-1])), expected,
                               rtol=1e-4, atol=1e-5)


def test_the_cards_own_snippet_loads_a_three_class_adapter(tiny_model_dir, review_files, three_class_file, tmp_path):
    """The loading code the model card shows, run as written (the folder in place of the Hub id) in a fresh process
    without hf_transfer, gives the trained model's predictions under their class names."""
    import re

    result = hf_transfer.train(_recipe(tiny_model_dir, review_files, three_class_file, tmp_path / "run" / "out",
                                       class_names=THREE, **LORA))
    out = result.output_dir
    card = (out / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert "id2label = {0: 'negative', 1: 'neutral', 2: 'positive'}" in snippet
    code = snippet.replace("'path/to/this/folder'", repr(str(out)))
    code += ("import json, sys\nassert 'hf_transfer' not in sys.modules\n"
             f"print(json.dumps([p['label'] for p in classifier({TEXTS!r})]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = reference_logits(result.model, result.tokenizer).argmax(-1).tolist()
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [THREE[i] for i in expected]
