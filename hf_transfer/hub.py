"""Write what a run leaves behind (model or adapter, tokenizer, metrics, recipe, model card) and push it.

Everything is written on the main process only, into a staging folder beside ``output_dir``, then moved in
file by file with ``os.replace`` (atomic on one filesystem). The files that make a folder loadable
(``config.json``, ``adapter_config.json``) move last, so a crash part-way never leaves a folder that loads as a
half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__

# Moved last: their presence is what makes `from_pretrained` treat the folder as a model.
_LOADABLE_MARKERS = ("config.json", "adapter_config.json")
EXPORT_IGNORE = ["checkpoint-*", "runs/*", "*.tmp", ".staging-*"]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


def publish_folder(staging: Path, destination: Path) -> None:
    """Move every file of ``staging`` into ``destination`` (creating it), loadability markers last."""
    destination.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name in _LOADABLE_MARKERS and p.parent == staging)
    for src in files:
        dst = destination / src.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    shutil.rmtree(staging, ignore_errors=True)


def staging_dir(destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".staging-{destination.name}-"))


@dataclass(frozen=True, repr=False)
class PushRequest:
    """Where and how to push the exported folder. The token never appears in its repr."""

    repo_id: str | None
    token: str | None
    private: bool | None

    def __repr__(self) -> str:
        return f"PushRequest(repo_id={self.repo_id!r}, private={self.private!r})"


def take_push_request(training_args) -> PushRequest | None:
    """Take the push settings out of ``TrainingArguments`` before a Trainer sees them.

    We push with our own export (model, card, recipe), so the Trainer must not push checkpoints itself; and the
    Trainer pickles its arguments into every checkpoint (``training_args.bin``), so a ``hub_token`` left there
    would be written to disk. Returns ``None`` when no push was asked for.
    """
    args = training_args
    request = PushRequest(args.hub_model_id, args.hub_token, args.hub_private_repo) if args.push_to_hub else None
    args.push_to_hub = False
    args.hub_token = None
    return request


def finish_export(stage: Path, output_dir: Path, *, recipe_yaml: str, metrics: dict[str, Any], card: str,
                  push: PushRequest | None = None) -> None:
    """The last steps every export shares: write the recipe, metrics and card into the staged folder, move it into
    place atomically, then push the published folder if asked. Call on the main process only."""
    atomic_write_text(stage / "recipe.yaml", recipe_yaml)
    atomic_write_json(stage / "metrics.json", metrics)
    atomic_write_text(stage / "README.md", card)
    publish_folder(stage, output_dir)
    if push is not None:
        url = push_folder(output_dir, push.repo_id or output_dir.name, token=push.token, private=push.private)
        print(f"hf-transfer: pushed to {url}")


def model_card(
    *,
    base_model: str,
    methods: list[str],
    metrics: dict[str, Any],
    recipe_yaml: str,
    datasets: dict[str, str | None],
    peft_type: str | None,
    hub_model_id: str | None = None,
    pipeline_tag: str = "text-classification",
) -> str:
    """A Hub model card (YAML front matter + markdown) with the metrics, datasets and the full recipe.

    ``pipeline_tag`` is ``"text-classification"`` or ``"image-classification"``; it sets the card's tag, its wording
    and the loading snippet."""
    import yaml

    hub_datasets = [v for v in datasets.values() if v and not _is_local(v)]
    meta: dict[str, Any] = {
        "library_name": "peft" if peft_type else "transformers",
        "base_model": base_model,
        "pipeline_tag": pipeline_tag,
        "tags": ["hf-transfer", "transfer-learning", *methods] + ([peft_type.lower()] if peft_type else []),
    }
    if hub_datasets:
        meta["datasets"] = hub_datasets
    adapter = f" ({peft_type} adapter)" if peft_type else ""
    method_names = " + ".join(methods)
    title = hub_model_id or f"{base_model.split('/')[-1]} transferred with hf-transfer"
    rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items()))
    data_rows = "\n".join(f"| {k} | {v if v else '—'} |" for k, v in datasets.items())
    load = (
        "from peft import AutoPeftModelForSequenceClassification\n"
        "model = AutoPeftModelForSequenceClassification.from_pretrained(MODEL)"
        if peft_type and pipeline_tag == "text-classification"
        else "from peft import AutoPeftModel\nmodel = AutoPeftModel.from_pretrained(MODEL)"
        if peft_type
        else f'from transformers import pipeline\nclassifier = pipeline("{pipeline_tag}", model=MODEL)'
    )
    kind = "An image" if pipeline_tag == "image-classification" else "A text"
    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# {title}

{kind} classifier transferred from [`{base_model}`](https://huggingface.co/{base_model}) with
[hf-transfer](https://pypi.org/project/hf-transfer-learning/) {__version__}, method: **{method_names}**{adapter}.
It is an ordinary {"PEFT adapter on a " if peft_type else ""}transformers model: hf-transfer is not needed to use it.

```python
{load.replace("MODEL", repr(hub_model_id or "path/to/this/folder"))}
```

## Data

| role | dataset |
|---|---|
{data_rows}

Target-domain labels, when present, were used for evaluation only, never for training.

## Results

| metric | value |
|---|---|
{rows}

## Recipe

Rerun with `hf-transfer train recipe.yaml` (the same file sits beside the model):

```yaml
{recipe_yaml.strip()}
```
"""


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _is_local(spec: str) -> bool:
    return os.path.exists(os.path.expanduser(spec)) or spec.startswith((".", "/", "~"))


def push_folder(folder: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool | None = None,
                commit_message: str = "Upload with hf-transfer") -> str:
    """Create ``repo_id`` if needed and upload the exported model folder (checkpoints excluded). Returns the URL."""
    from huggingface_hub import create_repo, upload_folder

    create_repo(repo_id, token=token, private=private, exist_ok=True)
    info = upload_folder(
        repo_id=repo_id, folder_path=str(folder), token=token, commit_message=commit_message,
        ignore_patterns=EXPORT_IGNORE,
    )
    return str(getattr(info, "commit_url", info))
