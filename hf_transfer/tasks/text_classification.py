"""Text classification: one class per text (or text pair), ``AutoModelForSequenceClassification``.

The default task of a recipe without ``image_column``; every hook is :class:`~hf_transfer.tasks.base.Task`'s.
"""

from __future__ import annotations

from .base import Task
from .registry import register_task


class TextClassification(Task):
    """Single-label classification of a text or a text pair (``text_column``, ``text_pair_column``)."""

    name = "text-classification"
    pipeline_tag = "text-classification"
    auto_class_name = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"


register_task(TextClassification)
