"""The contract every task follows: what a *task* (text classification, image classification, multi-label ...) owns.

The core (``run.train``, ``run.evaluate``, ``data``, ``backbones``, ``cards``, ``recipe``) names no task: it asks the
recipe's task (see :mod:`hf_transfer.tasks.registry`) for each thing below, and a new task is one module with a
:class:`Task` subclass and one :func:`~hf_transfer.tasks.register_task` line (docs/tasks.md).

Hooks, in the order a run calls them:

* recipe checks: :meth:`Task.check_data_args` (the data fields alone), :meth:`Task.check_recipe` (with the methods
  and training arguments), :attr:`Task.peft_task_type`;
* data: :meth:`Task.read_table`, :meth:`Task.input_columns`, :meth:`Task.check_inputs`, :meth:`Task.check_loaded`,
  :meth:`Task.label_space`, :meth:`Task.encode_labels`, :meth:`Task.load_processor`, :meth:`Task.process`,
  :meth:`Task.collator`, :meth:`Task.augment`;
* model: :meth:`Task.auto_class`, :meth:`Task.config_overrides`, :meth:`Task.build_model`;
* training: :meth:`Task.compute_metrics`, :meth:`Task.labelled_rows`, :meth:`Task.task_loss`,
  :meth:`Task.method_rows`, :meth:`Task.trainer_class`;
* export and use: :meth:`Task.card_fields`, :meth:`Task.load_trained`, :meth:`Task.evaluation_data` (with
  :meth:`Task.evaluation_labels` and :meth:`Task.evaluation_inputs`).

Every hook has the behaviour of single-label sequence classification of text as its default; the text task is the
base class almost as it is. Heavy libraries are imported inside the hooks, so that reading a recipe (and
``hf-transfer --help``) stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import RecipeError


@dataclass
class MethodRows:
    """The rows a method sees at one training step (what becomes ``StepBatch.logits/features/labels/domain/
    sample_weight``), as :meth:`Task.method_rows` makes them from a batch's outputs.

    For a sequence task a row is an example (``(B, C)`` logits, ``(B, D)`` features, ``(B,)`` labels and domains).
    A token task makes every labelled token a row: ``(T, C)`` token logits, ``(T, D)`` token features, the token's
    tag, the domain of the sentence it comes from, and a per-row weight (for example ``1 / tokens in its sentence``,
    so that long sentences do not outweigh short ones); every existing method then works on it unchanged."""

    logits: Any
    features: Any
    labels: Any
    domain: Any
    sample_weight: Any = None


class Task:
    """Base class of a registered task. Subclasses set the class attributes and override the hooks that differ."""

    #: registry name and recipe value (``task: text-classification``)
    name: ClassVar[str] = ""
    #: the Hub ``pipeline_tag`` of an exported model, and the ``transformers.pipeline`` task that loads it
    pipeline_tag: ClassVar[str] = "text-classification"
    #: the ``transformers`` Auto class the model is built with and exported as
    auto_class_name: ClassVar[str] = "AutoModelForSequenceClassification"
    #: PEFT's ``task_type`` default for a recipe's ``peft:`` block (``None``: the plain ``PeftModel``)
    peft_task_type: ClassVar[str | None] = "SEQ_CLS"
    #: whether ``streaming: true`` is supported
    supports_streaming: ClassVar[bool] = True
    #: whether the before/after t-SNE of features (``tsne_plot``) is drawn for this task
    supports_feature_plot: ClassVar[bool] = True
    #: ``{config field: value}`` set on the model config (e.g. ``problem_type``); saved with the model
    config_fields: ClassVar[dict[str, Any]] = {}
    #: whether inputs are token sequences (``max_length`` is checked against the model's positions)
    uses_tokens: ClassVar[bool] = True
    #: what ``card_fields`` calls the model in the card's first line ("A text classifier ...")
    card_kind: ClassVar[str] = "A text"

    # ---- recipe ----------------------------------------------------------------------------------------------

    def check_data_args(self, d: Any) -> None:
        """Refuse data fields this task cannot use (``d``: :class:`hf_transfer.recipe.DataArguments`). Runs when the
        recipe is read, before anything is loaded."""
        if d.image_column is not None:
            raise RecipeError(f"image_column: task {self.name} reads text_column, not images; drop image_column, or "
                              "set task: image-classification")
        if d.image_size is not None or d.image_augmentation:
            raise RecipeError("image_size / image_augmentation: set image_column too (they apply to images only)")
        columns = {"text_column": d.text_column, "text_pair_column": d.text_pair_column,
                   "label_column": d.label_column}
        for i, (name, column) in enumerate(columns.items()):
            for other, other_column in list(columns.items())[i + 1:]:
                if column is not None and column == other_column:
                    raise RecipeError(f"{other}: is the same column as {name} ({column!r}); each must name its own "
                                      "column")
        if d.streaming and not self.supports_streaming:
            raise RecipeError(f"streaming: not available for task {self.name}; set streaming: false")

    def check_recipe(self, *, data_args: Any, training_args: Any, methods: list[str],
                     method_configs: dict[str, Any] | None = None, selection_validators: list[str] | None = None
                     ) -> None:
        """Refuse what this task cannot train: a method (``methods``, their parsed ``method_configs``), a sampling
        strategy, a metric, a label-free validator. Runs once every field is parsed."""

    # ---- data ------------------------------------------------------------------------------------------------

    def read_table(self, spec: Any, d: Any, *, field: str, split: str = "train", config: str | None = None):
        """Load one table of the recipe (``source_data``, ``target_data``, ``eval_data``): a file, folder or Hub id
        through :func:`hf_transfer.data.load_table`. A task with a file format of its own (CoNLL ``.txt`` for
        tagging) reads it here."""
        from ..data import load_table

        return load_table(spec, field=field, split=split, config=config)

    def input_columns(self, d: Any) -> list[tuple[str, str]]:
        """``[(column, recipe option)]`` every labelled or unlabelled table must have (the label column aside)."""
        columns = [(d.text_column, "text_column")]
        if d.text_pair_column:
            columns.append((d.text_pair_column, "text_pair_column"))
        return columns

    def check_inputs(self, table: Any, d: Any, *, field: str, spec: str) -> None:
        """Check the input values of one table (every row's text is text), naming the first bad row. A table that
        lacks an optional column (a text pair in an unlabelled target) is left to :meth:`input_columns`."""
        from ..data import check_text_column

        check_text_column(table, d.text_column, field=field, spec=spec, option="text_column")
        if d.text_pair_column and d.text_pair_column in table.column_names:
            check_text_column(table, d.text_pair_column, field=field, spec=spec, option="text_pair_column")

    def check_loaded(self, tables: dict[str, tuple[Any, str]], d: Any) -> None:
        """A last check once every table is loaded (``{field: (table, spec)}``, a missing table is ``None``):
        e.g. decoding every image once, to fail before the model loads."""

    def label_space(self, table: Any, d: Any, *, num_labels: int | None, field: str, spec: str):
        """The classes (:class:`hf_transfer.data.LabelSpace`) from the source table, ``num_labels`` and
        ``class_names``."""
        from ..data import infer_label_space, with_class_names

        space = infer_label_space(table, d.label_column, num_labels=num_labels, field=field, spec=spec,
                                  class_names=d.class_names)
        return with_class_names(space, d)

    def encode_labels(self, table: Any, d: Any, space: Any, *, field: str, spec: str, column: str | None = None):
        """``table`` with a ``labels`` column in the model's form (here an int64 class id), every value checked."""
        from ..data import encode_labels

        return encode_labels(table, column or d.label_column, space, field=field, spec=spec)

    def load_processor(self, model_args: Any, d: Any):
        """The tokenizer (or image processor ...) that :meth:`process` and :meth:`collator` use, saved with the
        model."""
        from ..backbones import load_tokenizer

        return load_tokenizer(model_args.model_name_or_path, revision=model_args.revision,
                              trust_remote_code=model_args.trust_remote_code)

    def process(self, table: Any, processor: Any, d: Any, *, keep: tuple[str, ...] = ("labels",),
                desc: str = "Tokenizing"):
        """A loaded table as the model's rows (tokenised, not padded), keeping the ``keep`` columns."""
        from ..data import tokenize

        return tokenize(table, processor, text_column=d.text_column, text_pair_column=d.text_pair_column,
                        max_length=d.max_length, keep=keep, desc=desc)

    def collator(self, processor: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """The batch collator: source rows, then their paired target rows, with ``labels``, ``domain`` and
        ``sample_weight`` (see :func:`hf_transfer.data.add_batch_labels`)."""
        from ..data import TransferCollator

        return TransferCollator(processor)

    def augment(self, train: Any, d: Any, *, seed: int):
        """The training rows with this task's random augmentation (none for text)."""
        return train

    # ---- model -----------------------------------------------------------------------------------------------

    def auto_class(self):
        import transformers

        return getattr(transformers, self.auto_class_name)

    def config_overrides(self, model_args: Any, d: Any) -> dict[str, Any]:
        """Config fields the recipe changes (checked against the architecture by
        :func:`hf_transfer.backbones.load_classifier`)."""
        overrides = {}
        if model_args.classifier_hidden_size is not None:
            overrides["classifier_hidden_size"] = model_args.classifier_hidden_size
        return overrides

    def build_model(self, model_args: Any, d: Any, labels: Any):
        """The model to train: the pretrained backbone with a new head for ``labels`` (a LabelSpace)."""
        from ..backbones import load_classifier

        return load_classifier(
            model_args.model_name_or_path,
            num_labels=labels.num_labels,
            id2label=labels.id2label,
            auto_class=self.auto_class(),
            config_fields=self.config_fields,
            config_overrides=self.config_overrides(model_args, d),
            revision=model_args.revision,
            trust_remote_code=model_args.trust_remote_code,
        )

    def prepare_model(self, model: Any) -> None:
        """Adjust the built model before freezing plans and PEFT apply (e.g. keep frozen batch norms frozen)."""

    # ---- training --------------------------------------------------------------------------------------------

    def default_metrics(self) -> list[str]:
        from ..metrics import DEFAULT_CLASSIFICATION_METRICS

        return list(DEFAULT_CLASSIFICATION_METRICS)

    def compute_metrics(self, names: list[str], *, id2label: dict[int, str] | None = None):
        """The Trainer's ``compute_metrics`` (and ``hf-transfer evaluate``'s scorer, with ``compute`` and
        ``intervals``) for the recipe's metric names."""
        from ..metrics import build_compute_metrics

        return build_compute_metrics(names, id2label=id2label)

    def trainer_class(self, base: type) -> type:
        """The trainer class to train with: ``base`` (:class:`hf_transfer.trainer.TransferTrainer`), or a subclass
        for a task whose step differs beyond its loss (the loss itself is :meth:`task_loss`)."""
        return base

    def labelled_rows(self, labels: Any) -> Any:
        """Which rows of a training batch's ``labels`` carry a label, ``(B,)`` booleans (target and unlabelled rows
        hold -100). The trainer also requires ``domain == 0``."""
        from ..losses import single_label_rows

        return single_label_rows(labels)

    def task_loss(self, logits: Any, labels: Any, labelled: Any, row_weight: Any, *, global_batch: bool) -> Any:
        """The supervised loss of a batch: the mean over the ``labelled`` rows weighted by ``row_weight`` (0 for the
        rest; an instance-weighting method's weights otherwise). ``global_batch``: this process's share of the mean
        over every process's rows (:func:`hf_transfer.losses.weighted_cross_entropy`). Single-label cross-entropy."""
        from ..losses import IGNORE_INDEX, weighted_cross_entropy

        return weighted_cross_entropy(logits, labels.masked_fill(~labelled, IGNORE_INDEX), row_weight,
                                      global_batch=global_batch)

    def method_rows(self, *, logits: Any, features: Any, labels: Any, domain: Any, sample_weight: Any = None,
                    inputs: dict[str, Any] | None = None) -> MethodRows:
        """The rows the methods see at a training step, from the model's outputs on one batch. A sequence task's
        rows are its examples, as given."""
        return MethodRows(logits, features, labels, domain, sample_weight)

    # ---- export and use --------------------------------------------------------------------------------------

    def card_fields(self, *, peft_type: str | None, hub_model_id: str | None, merged: bool = False,
                    id2label: dict[int, str] | None = None) -> dict[str, Any]:
        """What the model card takes from the task: ``pipeline_tag``, ``kind`` (its first words) and ``usage`` (the
        loading snippet)."""
        from ..cards import usage_snippet

        return {"pipeline_tag": self.pipeline_tag, "kind": self.card_kind,
                "usage": usage_snippet(pipeline_tag=self.pipeline_tag, peft_type=peft_type, hub_model_id=hub_model_id,
                                       merged=merged, id2label=id2label)}

    def load_processor_from_folder(self, path: str):
        from ..backbones import load_tokenizer

        return load_tokenizer(path)

    def load_trained(self, model_dir: str | os.PathLike):
        """A trained folder of this task: ``(model in eval mode, processor)``; see
        :func:`hf_transfer.tasks.loading.load_trained`."""
        from .loading import load_model_folder

        path = Path(model_dir)
        model = load_model_folder(path, self.auto_class())
        return model.eval(), self.load_processor_from_folder(str(path))

    def evaluation_inputs(self, table: Any, processor: Any, settings: Any) -> Callable[[int, int], dict[str, Any]]:
        """For ``hf-transfer evaluate``: ``batch(start, stop)`` -> the model inputs of rows ``start:stop`` of a
        loaded table (``settings``: :class:`hf_transfer.evaluation.EvaluationSettings`)."""
        texts = table[settings.text_column]
        pairs = table[settings.text_pair_column] if settings.text_pair_column else None

        def batch_inputs(start: int, stop: int) -> dict[str, Any]:
            return dict(processor(texts[start:stop], pairs[start:stop] if pairs is not None else None,
                                  truncation=True, max_length=settings.max_length, padding=True, return_tensors="pt"))

        return batch_inputs

    def evaluation_columns(self, settings: Any) -> list[tuple[str, str]]:
        """``[(column, option)]`` the evaluated table needs besides the label column."""
        columns = [(settings.text_column, "text_column")]
        if settings.text_pair_column:
            columns.append((settings.text_pair_column, "text_pair_column"))
        return columns

    def read_evaluation_table(self, spec: Any, settings: Any, *, split: str = "train", config: str | None = None):
        """For ``hf-transfer evaluate``: the labelled table ``spec`` (``settings``:
        :class:`hf_transfer.evaluation.EvaluationSettings`), through :func:`hf_transfer.data.load_table`."""
        from ..data import load_table

        return load_table(spec, field="data", split=split, config=config)

    def evaluation_data(self, table: Any, processor: Any, settings: Any, id2label: dict[int, str], *, spec: str
                        ) -> tuple[Callable[[int, int], dict[str, Any]], Any]:
        """For ``hf-transfer evaluate``: ``(batch(start, stop), labels)`` of a loaded table, the model inputs of its
        rows and the labels its predictions are scored against (the scorer's ``compute(predictions, labels)``).
        Here :meth:`evaluation_labels` then :meth:`evaluation_inputs`; a task whose labels depend on the processor
        (sub-word tags) makes both at once."""
        table, labels = self.evaluation_labels(table, settings.label_column, id2label, spec=spec)
        return self.evaluation_inputs(table, processor, settings), labels

    def evaluation_labels(self, table: Any, column: str, id2label: dict[int, str], *, spec: str):
        """``(table with labels, labels array)`` of an evaluated table, in the trained model's classes."""
        import numpy as np

        from ..data import LabelSpace

        names = [id2label[i] for i in range(len(id2label))]
        space = LabelSpace(names, from_strings=any(isinstance(v, str) for v in table[column]))
        table = self.encode_labels(table, None, space, field="data", spec=spec, column=column)
        return table, np.asarray(table["labels"])
