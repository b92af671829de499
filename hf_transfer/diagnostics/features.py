"""Load a bounded sample of a domain and embed it with a model: the input of every other diagnostic.

Features are the mean-pooled last hidden state of the model's backbone (the sentence-embedding view, what
``instance_weighting`` estimates its weights on) or, for a trained classifier, the input of its classification head
(``kind="head_input"``). The forward pass is :func:`hf_transfer.embedding.embed`: batched, without
gradients, with a progress bar.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

FEATURE_KINDS = ("mean", "head_input")
#: a streamed domain is sampled through a shuffle buffer of this many times ``max_samples`` rows
STREAM_BUFFER_FACTOR = 10


@dataclass
class DomainSample:
    """Up to ``max_samples`` rows of one domain: texts, integer labels (``None`` when it has none) and its name."""

    name: str
    spec: str
    texts: list[str]
    labels: np.ndarray | None
    n_total: int = 0  # rows in the whole dataset, before sampling (a streamed one: the rows read, a lower bound)
    streamed: bool = False

    def __len__(self) -> int:
        return len(self.texts)


def domain_name(spec: str) -> str:
    """A short display name: ``../data/amazon/books.jsonl`` -> ``books``; ``fdu/books.train.jsonl`` -> ``books``."""
    name = Path(spec).name if Path(spec).suffix else spec.rstrip("/").split("/")[-1]
    for suffix in (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".train", ".test"):
        name = name.removesuffix(suffix)
    return name or spec


def load_domain(
    spec: str,
    *,
    field: str = "source",
    text_column: str = "text",
    label_column: str = "label",
    max_samples: int | None = 500,
    seed: int = 0,
    split: str = "train",
    name: str | None = None,
    streaming: bool = False,
) -> DomainSample:
    """Read a file, folder or Hub dataset id and keep a seeded random sample of at most ``max_samples`` rows.

    Labels are read when ``label_column`` exists and every kept row has one; they must be integers or strings
    (strings are mapped to ids in sorted order, the convention of :func:`hf_transfer.data.infer_label_space`).

    With ``streaming=True`` the dataset is never materialised: the sample is the first ``max_samples`` rows out of a
    seeded shuffle buffer of ``STREAM_BUFFER_FACTOR * max_samples`` rows, so at most that many rows are read (a file
    sorted by class in longer runs than that gives a one-class sample: shuffle it first). ``n_total`` is then the
    number of rows read, a lower bound of the dataset's size.
    """
    from ..data import load_table, require_column, take_rows

    if max_samples is not None and max_samples < 2:
        raise DataError(f"max_samples: must be at least 2, got {max_samples}")
    if streaming:
        if max_samples is None:
            raise DataError("max_samples: a streamed domain needs a bound; set max_samples")
        read = [0]  # rows pulled from the stream, counted as they pass

        def count(batch: dict[str, list]) -> dict[str, list]:
            read[0] += len(next(iter(batch.values()), []))
            return {}

        stream = load_table(spec, field=field, split=split, streaming=True).map(count, batched=True)
        stream = stream.shuffle(seed=seed, buffer_size=STREAM_BUFFER_FACTOR * max_samples)
        table = take_rows(stream, max_samples, field=field, spec=spec)
        require_column(table, text_column, field=field, spec=spec, option="text_column")
        n_total = read[0]
    else:
        table = load_table(spec, field=field, split=split)
        require_column(table, text_column, field=field, spec=spec, option="text_column")
        n_total = len(table)
        if max_samples is not None and len(table) > max_samples:
            table = table.shuffle(seed=seed).select(range(max_samples))
    texts = [t if isinstance(t, str) else "" for t in table[text_column]]
    labels = None
    if label_column in table.column_names:
        values = table[label_column]
        if all(v is not None for v in values):
            if any(isinstance(v, str) for v in values):
                names = sorted({str(v) for v in values})
                labels = np.array([names.index(str(v)) for v in values], dtype=np.int64)
            else:
                labels = np.asarray(values, dtype=np.int64)
    return DomainSample(name or domain_name(spec), spec, texts, labels, n_total, streamed=streaming)


def load_encoder(model_name_or_path: str):
    """``(model, tokenizer)`` for feature extraction: a sequence classifier (its head is ignored for ``"mean"``
    features), loaded through :func:`hf_transfer.backbones.load_classifier` so packaged offline copies resolve."""
    from transformers import AutoConfig

    from ..backbones import load_classifier, load_tokenizer, resolve_model_path

    try:
        num_labels = AutoConfig.from_pretrained(resolve_model_path(model_name_or_path)).num_labels
    except (OSError, ValueError):
        num_labels = 2  # load_classifier raises the friendly error below
    model = load_classifier(model_name_or_path, num_labels=num_labels)
    return model.eval(), load_tokenizer(model_name_or_path)


def extract_features(
    model,
    tokenizer,
    texts: list[str],
    *,
    kind: str = "mean",
    batch_size: int = 32,
    max_length: int = 128,
    device: str = "cpu",
    desc: str = "Embedding",
) -> np.ndarray:
    """Embed ``texts`` with ``model``: ``(n, d)`` float32 features, in order.

    Args:
        model: a transformers sequence classifier (or PEFT model on one).
        kind: ``"mean"`` (mean-pooled last hidden state) or ``"head_input"`` (what the classifier head receives).
        batch_size, max_length: of the forward passes; texts are truncated to ``max_length`` tokens.
    """
    from datasets import Dataset

    from ..data import TransferCollator, tokenize
    from ..embedding import embed

    if kind not in FEATURE_KINDS:
        raise ValueError(f"kind: unknown feature kind {kind!r}; choose one of {', '.join(FEATURE_KINDS)}")
    if not texts:
        raise DataError("texts: nothing to embed (0 rows)")
    table = tokenize(Dataset.from_dict({"text": list(texts)}), tokenizer, text_column="text", text_pair_column=None,
                     max_length=max_length, keep=(), desc="Tokenizing")
    model = model.to(device)
    return embed(model, table, TransferCollator(tokenizer), kind=kind, batch_size=batch_size, device=device,
                 desc=desc).astype(np.float32)
