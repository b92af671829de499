"""Pre-training recipes: continued masked-language-model training on unlabelled text (``train_data`` present).

```yaml
model_name_or_path: sentence-transformers/all-MiniLM-L6-v2
train_data: [../shared/data/crossner/politics/train.txt, ../shared/data/crossner/politics/dev.txt]
eval_fraction: 0.05          # held-out texts for perplexity (or eval_data: FILE)
mlm_probability: 0.15
max_length: 128
max_steps: 1000
output_dir: outputs/pretrain/politics
```

A recipe is a pre-training recipe when it has ``train_data`` (:mod:`hf_transfer.families` finds the family by that
key). Its own fields are :class:`PretrainArguments`; the model fields (``model_name_or_path``, ``revision``,
``trust_remote_code``, ``overwrite_output_dir``), ``max_length``, ``peft:`` and every ``TrainingArguments`` field are
read as in every recipe. Fields of a task recipe that mean nothing here (``source_data``, ``method``, ``num_labels``
...) are refused with the field to use instead. Every problem is a one-line
:class:`~hf_transfer.errors.RecipeError` naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from ..errors import RecipeError, unknown_choice
from ..masking import Masking
from ..recipe import Recipe, _merge_dotted, _plain, check_peft_values, load_recipe
from ..tasklists.recipe import parse_family_fields

#: How ``.txt`` / ``.conll`` files are read (tables, folders and Hub ids are read by ``text_column`` whatever this is).
DATA_FORMATS = ("auto", "lines", "conll")
DOC = "recipes/pretrain/README.md"

#: The flat recipe fields a pre-training recipe uses besides ``TrainingArguments`` and ``peft:``.
SHARED_FIELDS = ("model_name_or_path", "revision", "trust_remote_code", "overwrite_output_dir", "max_length")
#: Flat fields with a particular hint; every other model, data or method field gets the generic one.
_HINTS = {
    "source_data": "the unlabelled text goes in train_data (labels, if any, are never read)",
    "target_data": "the unlabelled target-domain text goes in train_data",
    "method": "a pretrain recipe trains the masked-LM objective only; to add it to task training use `method: mlm` "
              "in a task recipe",
    "merge_adapter": "with a peft block the adapter is always merged into the exported model",
    "task": "the data format is data_format (auto, lines or conll)",
    "eval_config": "the Hub configuration of train_data and eval_data is data_config",
}


@dataclass
class PretrainArguments(Masking):
    """Unlabelled text, how it is read and held out, and how tokens are masked (the fields of :class:`Masking`)."""

    train_data: list[str] = field(
        default_factory=list,
        metadata={"help": "Unlabelled text, one or more of: a .txt file (one text a line, or CoNLL: see "
                          "data_format), a .conll file, a .jsonl/.json/.csv/.tsv/.parquet file or folder read by "
                          "text_column, or a Hub dataset id. Read in order and concatenated; labels are never read."},
    )
    eval_data: list[str] | None = field(
        default=None,
        metadata={"help": "Held-out text for the masked-LM loss and perplexity (same kinds as train_data). Default: "
                          "eval_fraction of train_data, or no evaluation."},
    )
    eval_fraction: float = field(
        default=0.0,
        metadata={"help": "Without eval_data: hold out this share of the train_data texts (a seeded draw) for the "
                          "perplexity. 0: no evaluation."},
    )
    text_column: str = field(
        default="text",
        metadata={"help": "Column of tables and Hub datasets holding the text (a column of word lists is joined "
                          "with spaces)."},
    )
    data_format: str = field(
        default="auto",
        metadata={"help": "How .txt files are read: lines (every non-blank line is one text), conll (one word and "
                          "its tag a line, blank lines between sentences: each sentence's words joined with spaces, "
                          "tags ignored; read by the token-classification task's reader), or auto (.conll files "
                          "and .txt files whose lines all look like 'word<TAB>tag' are CoNLL, other .txt files "
                          "lines)."},
    )
    data_split: str = field(default="train", metadata={"help": "Split of Hub datasets and folders in train_data."})
    eval_split: str = field(default="validation", metadata={"help": "Split of Hub datasets and folders in eval_data."})
    data_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration of the data."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on at most this many texts."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many texts."})
    eval_before_training: bool = field(
        default=True,
        metadata={"help": "With evaluation data: also score the starting model (base_eval_loss, base_perplexity), "
                          "on the same masked tokens, for a before/after comparison."},
    )

    def __post_init__(self):
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        if isinstance(self.eval_data, str):
            self.eval_data = [self.eval_data]
        if not self.train_data or any(not str(s).strip() for s in self.train_data):
            raise RecipeError("train_data: give one or more files, folders or Hub dataset ids of unlabelled text")
        if self.eval_data is not None and (not self.eval_data or any(not str(s).strip() for s in self.eval_data)):
            raise RecipeError("eval_data: give one or more files, folders or Hub dataset ids, or leave it out")
        if not 0 <= self.eval_fraction < 1:
            raise RecipeError(f"eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        if self.eval_fraction > 0 and self.eval_data:
            raise RecipeError("eval_fraction: eval_data is set already; use one of the two")
        if self.data_format not in DATA_FORMATS:
            raise unknown_choice("data_format", self.data_format, DATA_FORMATS)
        self.check_masking()
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise RecipeError(f"{name}: must be > 0, got {value}")
        if not self.text_column:
            raise RecipeError("text_column: must name a column, e.g. text")

    @property
    def has_eval(self) -> bool:
        return bool(self.eval_data) or self.eval_fraction > 0


@dataclass
class PretrainRecipe:
    """A pre-training recipe: the shared parts (model, ``max_length``, training) as a flat :class:`Recipe`, the
    pre-training fields and the ``peft:`` block (validated without a task type: the model is a masked-LM model)."""

    base: Recipe
    args: PretrainArguments
    peft: dict[str, Any] | None = None

    #: the registered family (hf_transfer.families)
    family: ClassVar[str] = "pretrain"

    @property
    def training(self):
        return self.base.training

    @property
    def model(self):
        return self.base.model

    @property
    def max_length(self) -> int:
        return self.base.data.max_length

    def to_dict(self) -> dict[str, Any]:
        """The flat recipe, as ``hf-transfer train`` reads it back. Tokens are never included."""
        m = self.base.model
        out: dict[str, Any] = {"model_name_or_path": m.model_name_or_path, "revision": m.revision,
                               "trust_remote_code": m.trust_remote_code, "max_length": self.max_length}
        if m.overwrite_output_dir:
            out["overwrite_output_dir"] = True
        out.update(dataclasses.asdict(self.args))
        if self.peft:
            out["peft"] = dict(self.peft)
        flat = self.base.to_dict()  # the training fields as given, secrets left out
        for name in self.base.training_fields:
            if name in flat:
                out[name] = _plain(flat[name])
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def load_pretrain_recipe(raw: dict[str, Any], overrides: dict[str, Any]) -> PretrainRecipe:
    """Parse a recipe with ``train_data`` (see the module docstring)."""
    from transformers import TrainingArguments

    from ..backbones import validate_peft_block
    from ..engine_rules import check_launched_engine
    from ..recipe import _field_names

    raw = _merge_dotted(dict(raw))
    for key, value in _merge_dotted(dict(overrides)).items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    peft_block = raw.pop("peft", None)
    args = parse_family_fields(raw, PretrainArguments, kind="pretrain", also_known=set(), doc=DOC)
    training_names = set(_field_names(TrainingArguments))
    for key in raw:
        if key not in training_names and key not in SHARED_FIELDS:
            hint = _HINTS.get(key, f"a pretrain recipe reads unlabelled text only; see {DOC} for its fields")
            raise RecipeError(f"{key}: not used in a pretrain recipe; {hint}")
    base = load_recipe({**raw, "target_data": None}, None)
    if peft_block is not None:
        peft_block = validate_peft_block(peft_block, task_type=None)
        check_peft_values(peft_block)
        if peft_block.get("task_type"):
            raise RecipeError(f"peft.task_type: not used in a pretrain recipe (the model is a masked-LM model); "
                              f"remove task_type {peft_block['task_type']!r}")
    check_launched_engine(recipe_kind="pretrain")  # DDP only: FSDP / DeepSpeed launches are refused with the reason
    return PretrainRecipe(base, args, peft_block)
