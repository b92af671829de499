"""Save a contrastive few-shot classifier as a SetFit model folder.

Why this format and not a transformers sequence classifier: the classifier is ``LogisticRegression`` on the
*mean-pooled, L2-normalised* token states. ``BertForSequenceClassification`` (and its siblings) read the first token
through the pooler (``tanh(W h_CLS + b)``), so no choice of their classifier weights reproduces the predictions; and
with normalisation before the head the classifier is not even linear in the pooled output. A sentence-transformers
folder (``modules.json``: ``Transformer`` -> ``Pooling`` (mean or cls) -> ``Normalize``) plus SetFit's
``model_head.pkl`` and ``config_setfit.json`` is the format the Hub already knows for exactly this model:

* ``setfit.SetFitModel.from_pretrained(folder)`` loads and predicts (the same predictions as in memory);
* ``sentence_transformers.SentenceTransformer(folder)`` gives the embeddings, ``transformers.AutoModel`` the encoder;
* ``model_head.safetensors`` holds the head as plain arrays (``weight`` ``(C, d)`` or ``(1, d)`` for two classes,
  ``bias``), for users who will not unpickle ``model_head.pkl``: the prediction is the argmax of
  ``e @ weight.T + bias`` (for two classes, class 1 where ``e @ weight.T + bias > 0``), ``e`` the normalised
  embedding.

The files are written in the classic sentence-transformers layout (as the packaged all-MiniLM-L6-v2 has them), which
every sentence-transformers version since 2.0 reads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..hub import discard_stage, finish_export, staging_dir
from ..outputs import atomic_write_json

HEAD_PICKLE = "model_head.pkl"
HEAD_WEIGHTS = "model_head.safetensors"


def write_sentence_transformer(folder: Path, encoder, tokenizer, *, pooling: str, normalize: bool,
                               max_length: int) -> None:
    """The encoder (LoRA merged in), its tokenizer and the sentence-transformers module files into ``folder``."""
    import copy

    if hasattr(encoder, "merge_and_unload"):
        encoder = copy.deepcopy(encoder).merge_and_unload()
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    atomic_write_json(folder / "modules.json", modules)
    atomic_write_json(folder / "sentence_bert_config.json",
                      {"max_seq_length": int(max_length), "do_lower_case": False})
    (folder / "1_Pooling").mkdir(exist_ok=True)
    atomic_write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": int(encoder.config.hidden_size),
        "pooling_mode_cls_token": pooling == "cls", "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False})


def write_head(folder: Path, head, labels: list[str] | None) -> None:
    """SetFit's ``model_head.pkl`` (joblib, as ``SetFitModel.save_pretrained`` writes it) and ``config_setfit.json``,
    plus the pickle-free ``model_head.safetensors``."""
    import joblib
    from safetensors.numpy import save_file

    joblib.dump(head, folder / HEAD_PICKLE)
    save_file({"weight": np.ascontiguousarray(head.coef_, dtype=np.float32),
               "bias": np.ascontiguousarray(head.intercept_, dtype=np.float32),
               "classes": np.ascontiguousarray(head.classes_, dtype=np.int64)}, str(folder / HEAD_WEIGHTS))
    # normalize_embeddings stays false: the Normalize module already normalises (SetFit would do it a second time).
    atomic_write_json(folder / "config_setfit.json", {"normalize_embeddings": False, "labels": labels})


def save_setfit(classifier, tokenizer, output_dir: str | os.PathLike, *, labels: list[str] | None, max_length: int,
                metrics: dict[str, Any], card: str, recipe_yaml: str = "") -> Path:
    """Write ``classifier`` (a :class:`~hf_transfer.meta.contrastive.ContrastiveClassifier`) as a SetFit folder with
    ``metrics.json``, ``recipe.yaml`` and the card ``card``, staged and moved into place atomically."""
    output_dir = Path(output_dir)
    stage = staging_dir(output_dir)
    try:
        write_sentence_transformer(stage, classifier.embedder.encoder, tokenizer,
                                   pooling=classifier.embedder.pooling, normalize=classifier.normalize,
                                   max_length=max_length)
        write_head(stage, classifier.head, labels)
    except BaseException:
        discard_stage(stage)
        raise
    finish_export(stage, output_dir, recipe_yaml=recipe_yaml, metrics=metrics, card=card)
    return output_dir


def few_shot_card(*, base_model: str, data: str, query_data: str | None, shots: int, result: dict[str, Any],
                  exported_episode: dict[str, Any], labels: list[str] | None, settings: dict[str, Any]) -> str:
    """The card of an exported few-shot classifier: K, the episodes and the 95% interval of the procedure, the
    exported episode's own rows and accuracy, and how to load it with and without SetFit."""
    from huggingface_hub import ModelCard

    from ..cards import PROJECT_URL, CardContent, EvalSet, card_metadata, display_path, hub_link
    from ..defaults import __version__

    ci = f"{result['accuracy']:.4f} ± {result['ci95']:.4f}"
    intro = (
        f"A few-shot text classifier: {hub_link(base_model)} adapted with contrastive pairs (SetFit's objective) on "
        f"**K = {shots} labelled rows per class** of `{display_path(data) or data}`, then a logistic-regression head, "
        f"with [hf-transfer]({PROJECT_URL}) {__version__}. The same procedure over {result['episodes']} seeded "
        f"episodes (each a new draw of K rows per class) scored **{ci}** accuracy (mean and 95% interval half width, "
        f"Student t) on {'`' + (display_path(query_data) or query_data) + '`' if query_data else 'held-out rows'}; "
        f"this folder is the classifier of episode {exported_episode['index']} (accuracy "
        f"{exported_episode['accuracy']:.4f}), whose rows are listed below."
    )
    usage = """```python
from setfit import SetFitModel
model = SetFitModel.from_pretrained("path/to/this/folder")
model.predict(["an example text"])
```

Without SetFit (no pickle): the embedding is the sentence-transformers model in this folder, and the head is in
`model_head.safetensors`:

```python
import numpy as np
from safetensors.numpy import load_file
from sentence_transformers import SentenceTransformer
embed = SentenceTransformer("path/to/this/folder").encode(["an example text"])   # mean-pooled, normalised
head = load_file("path/to/this/folder/model_head.safetensors")
scores = embed @ head["weight"].T + head["bias"]
pred = head["classes"][(scores[:, 0] > 0).astype(int)] if head["weight"].shape[0] == 1 else head["classes"][
    scores.argmax(1)]
```"""
    episode_rows = ", ".join(str(int(i)) for i in exported_episode["support"])
    section = (f"Shots: {shots} per class; {result['episodes']} episodes, seed {result.get('seed', 0)}; accuracy per "
               f"episode: {', '.join(f'{a:.4f}' for a in result['accuracies'])}.\n\nThe exported episode's labelled "
               f"rows (0-based line numbers of the data file): {episode_rows}.\n\nAdaptation settings: "
               + ", ".join(f"`{k}: {v}`" for k, v in sorted(settings.items())))
    metrics = {f"{shots}shot_accuracy": result["accuracy"], f"{shots}shot_ci95": result["ci95"],
               "episodes": result["episodes"], "exported_episode_accuracy": exported_episode["accuracy"]}
    evaluation = EvalSet("few-shot", query_data or data, {f"{shots}shot_accuracy": result["accuracy"]},
                         note=f"{result['episodes']} episodes of K = {shots}",
                         metric_notes={f"{shots}shot_accuracy": f"± {result['ci95']:.4f} at 95%, "
                                                                f"{result['episodes']} episodes"})
    content = CardContent(
        base_model=base_model, title=f"Few-shot classifier (K = {shots}, contrastive adaptation)", intro=intro,
        usage=usage, pipeline_tag="text-classification", library_name="setfit",
        tags=["hf-transfer", "setfit", "sentence-transformers", "few-shot", "contrastive"],
        data=[("labelled rows (K per class drawn from it)", data)] + ([("queries", query_data)] if query_data else []),
        evaluations=[evaluation], metrics=metrics, recipe_yaml="")
    rerun = (f"hf-transfer evaluate {base_model} --data {display_path(data) or data}"
             + (f" --query_data {display_path(query_data) or query_data}" if query_data else "")
             + f" --shots {shots} --episodes {result['episodes']} --seed {result.get('seed', 0)} --adapt contrastive"
             + " --export OUTPUT_DIR")
    data_rows = "\n".join(f"| {role} | {display_path(spec) or spec} |" for role, spec in content.data)
    result_rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                             for k, v in metrics.items())
    parts = [f"# {content.title}", intro, usage, "## Data\n\n| role | dataset |\n|---|---|\n" + data_rows,
             "## Episodes\n\n" + section, "## Results\n\n| metric | value |\n|---|---|\n" + result_rows,
             f"## Rerun\n\n```bash\n{rerun}\n```"]
    return str(ModelCard(f"---\n{card_metadata(content).to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n"))
