"""Recipes: one flat YAML file (plus command-line overrides) parsed into dataclasses.

A recipe's top-level keys are the fields of :class:`ModelArguments`, :class:`DataArguments`,
:class:`MethodArguments` and ``transformers.TrainingArguments``, plus blocks (nested mappings) for PEFT
(``peft:``) and for each method (``dann:``, ``mmd:`` ...). Every field can be overridden on the command line:
``--learning_rate 3e-5``, ``--peft.r 16``, ``--dann.trade_off 0.5``.

Values from YAML and from the command line go through the same converters (those ``HfArgumentParser`` builds from
the dataclass types), so a wrong type is caught the same way wherever it comes from. Every problem is a
:class:`~hf_transfer.errors.RecipeError` naming the key and, for unknown keys, the nearest valid one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import yaml
from transformers import HfArgumentParser, TrainingArguments

from .defaults import DEFAULT_MAX_LENGTH, DEFAULT_MODEL, DEFAULT_SOURCE, DEFAULT_TARGET, RESOURCES  # noqa: F401  (also named here)
from .errors import RecipeError, nearest, unknown_choice, unknown_field_fix
from .families import DEFAULT_FAMILY, family_for_keys
from .methods import MethodConfig, available_methods, get_method_spec

DEFAULT_OUTPUT_DIR = "outputs/hf-transfer"
# With no recipe at all (`hf-transfer train`, `make demo`, `hf_transfer.train()`), a short real job: about two minutes
# on two CPU cores. Any of these can still be overridden.
EMBEDDED_DEFAULTS: dict[str, Any] = {
    "max_length": 128,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "learning_rate": 1e-4,
    "warmup_steps": 10,
    "max_steps": 100,
    "train_sampling_strategy": "group_by_length",
    "logging_steps": 20,
    "save_strategy": "no",
}


@dataclass
class ModelArguments:
    """Which pretrained model to start from and which of its parameters train."""

    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "Hub id or local folder. Hub ids with a packaged offline copy resolve to it."},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run model code from the Hub repository. Off unless you trust it."}
    )
    num_labels: int | None = field(
        default=None, metadata={"help": "Number of classes; inferred from the source labels when unset."}
    )
    freeze_backbone: bool = field(
        default=False,
        metadata={"help": "Linear probe: train only the new classification head on a frozen backbone."},
    )
    trainable_layers: int | None = field(
        default=None,
        metadata={"help": "Train only the top N encoder layers (and the head); the rest stays frozen."},
    )
    cache_frozen: str = field(
        default="auto",
        metadata={
            "help": "With freeze_backbone or trainable_layers: compute the frozen layers' outputs for each row once "
            "and train only the top (auto: where that holds, else off with the reason logged; true: on or an "
            "error saying why not; false: off). See docs/recipes.md.",
            "choices": ["auto", "true", "false"],
        },
    )
    gradual_unfreezing_steps: int | None = field(
        default=None,
        metadata={
            "help": "Gradual unfreezing (ULMFiT): start with the head only and unfreeze one more encoder layer, "
            "from the top down, every this many optimizer steps."
        },
    )
    layerwise_lr_decay: float = field(
        default=1.0,
        metadata={
            "help": "Layer-wise learning-rate decay: layer l from the top trains at learning_rate * decay**l; "
            "the head at learning_rate. 1.0 disables it."
        },
    )
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "With PEFT: also write the adapter merged into the base model, as a plain model."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace whatever output_dir holds (another export, other files) with this run's export. "
                  "Without it such an output_dir is refused; rerunning the same recipe into its own folder, or "
                  "resuming, needs no overwrite."},
    )
    feature_module: str | None = field(
        default=None,
        metadata={
            "help": "Name of the module whose *input* is the feature that methods align. Default: the final "
            "linear layer of the classification head, found automatically."
        },
    )
    classifier_hidden_size: int | None = field(
        default=None,
        metadata={
            "help": "Images, efficientnet-lite0: put one hidden layer (ReLU, dropout) of this width between the "
            "pooled features and the new classification layer. Other architectures keep their own head."
        },
    )

    def __post_init__(self):
        if self.num_labels is not None and self.num_labels < 2:
            raise RecipeError(f"num_labels: must be at least 2, got {self.num_labels}")
        if self.trainable_layers is not None and self.trainable_layers < 0:
            raise RecipeError(f"trainable_layers: must be >= 0, got {self.trainable_layers}")
        if self.classifier_hidden_size is not None and self.classifier_hidden_size <= 0:
            raise RecipeError(f"classifier_hidden_size: must be > 0, got {self.classifier_hidden_size}")
        if self.gradual_unfreezing_steps is not None and self.gradual_unfreezing_steps <= 0:
            raise RecipeError(f"gradual_unfreezing_steps: must be > 0, got {self.gradual_unfreezing_steps}")
        if not 0 < self.layerwise_lr_decay <= 1:
            raise RecipeError(f"layerwise_lr_decay: must be in (0, 1], got {self.layerwise_lr_decay}")
        from .frozen_prefix import normalise_setting

        self.cache_frozen = normalise_setting(self.cache_frozen)
        plans = [self.freeze_backbone, self.trainable_layers is not None, self.gradual_unfreezing_steps is not None]
        if sum(plans) > 1:
            raise RecipeError(
                "freeze_backbone, trainable_layers and gradual_unfreezing_steps: choose one freezing plan, not several"
            )


@dataclass
class DataArguments:
    """Where the labelled source, unlabelled target and evaluation data come from, and how to read them."""

    source_data: str = field(
        default=DEFAULT_SOURCE,
        metadata={"help": "Labelled source data: a JSON Lines / CSV / Parquet file, a folder, or a Hub dataset id; a "
                  "YAML list of them is read as one table (their rows in order; labels: the union)."},
    )
    source_split: str = field(default="train", metadata={"help": "Split of source_data to train on."})
    source_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration of source_data."})
    target_data: str | None = field(
        default=DEFAULT_TARGET,
        metadata={
            "help": "Target-domain data. Adaptation methods use its texts without labels; its labels, if any, are "
            "never used in training. Set to null for plain supervised transfer."
        },
    )
    target_split: str = field(default="train", metadata={"help": "Split of target_data."})
    target_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration of target_data."})
    eval_data: str | None = field(
        default=None,
        metadata={"help": "Labelled target data used only for evaluation. Default: target_data, if it has labels."},
    )
    eval_split: str = field(default="train", metadata={"help": "Split of eval_data."})
    eval_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration of eval_data."})
    task: str | None = field(
        default=None,
        metadata={
            "help": "What the model learns (docs/tasks.md): text-classification, image-classification, "
            "multi-label-classification (label_column holds a list of classes per row), audio-classification "
            "(audio_column). Default: inferred, "
            "image-classification when image_column is set, else text-classification."
        },
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the input text."})
    text_pair_column: str | None = field(
        default=None, metadata={"help": "Optional second text column (sentence-pair tasks)."}
    )
    image_column: str | None = field(
        default=None,
        metadata={
            "help": "Column holding the input image; setting it makes the task image classification (text_column "
            "is then unused). For a .npz file the images are under the key `x` (`<config>_x` when the split's "
            "*_config names a prefix) and the column is called `image`."
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Images: resize to image_size x image_size instead of the image processor's own size (small "
            "images such as 16x16 digits are upsampled). Convolutional models only; ViT-type models need their "
            "pretrained size."
        },
    )
    image_augmentation: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Images: random augmentations of the labelled source rows in training, any of hflip, shift, "
            "brightness (NumPy/PIL; no torchvision)."
        },
    )
    audio_column: str = field(
        default="audio",
        metadata={
            "help": "task: audio-classification: the column holding each clip (a file path, relative to the table's "
            "folder, or a Hub dataset's Audio column). Folders of class sub-folders or with a metadata.csv put the "
            "clips here themselves (docs/tasks.md)."
        },
    )
    max_audio_seconds: int | None = field(
        default=None,
        metadata={
            "help": "task: audio-classification: pad or cut every clip to this many seconds (1 to the model's "
            "window; Whisper's is 30). A Whisper encoder is shortened to match, so short clips cost what they "
            "last. Default: the model's own window."
        },
    )
    label_column: str = field(default="label", metadata={"help": "Column holding the class label."})
    class_names: list[str] | None = field(
        default=None,
        metadata={"help": "Names of integer class ids 0..n-1 (e.g. [negative, positive]), shown by pipeline()."},
    )
    max_length: int = field(default=DEFAULT_MAX_LENGTH, metadata={"help": "Truncate inputs to this many tokens."})
    source_eval_fraction: float = field(
        default=0.1,
        metadata={"help": "Fraction of the source held out (never trained on) to report source_accuracy."},
    )
    max_source_samples: int | None = field(default=None, metadata={"help": "Use at most this many source rows."})
    max_target_samples: int | None = field(default=None, metadata={"help": "Use at most this many target rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many rows."})
    metrics: list[str] = field(
        default_factory=lambda: ["accuracy", "macro_f1"],
        metadata={
            "help": "Metrics of every evaluation (reported as <set>_<name>, e.g. target_macro_f1) and of "
            "`hf-transfer evaluate`: accuracy; macro_, micro_, weighted_ or binary_ + f1, precision or recall (f1, "
            "precision and recall alone mean macro); seqeval (entities, for tagging); shipped as local `evaluate` "
            "modules, so they work offline. Any other name is an `evaluate` Hub metric (needs the Hub)."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read source_data and target_data as streams (datasets IterableDataset; local files and Hub "
            "ids) instead of loading them whole, so memory stays flat however large they are. Needs max_steps. "
            "Classes, the held-out source slice and instance-weight estimation use the first "
            "streaming_sample_size rows; every later row is checked as it is read. eval_data is still read whole. "
            "See docs/streaming.md."
        },
    )
    streaming_sample_size: int = field(
        default=2000,
        metadata={
            "help": "With streaming: rows read up front from the head of each streamed side, where a bounded sample "
            "is needed (label classes, the held-out source slice, instance-weight estimation, the target "
            "evaluation when eval_data is not set)."
        },
    )
    streaming_shuffle_buffer: int = field(
        default=10000,
        metadata={
            "help": "With streaming: raw rows held in each side's shuffle buffer, before tokenisation (memory grows "
            "with it). Each pass over the data is reshuffled, seeded from `seed`. 0 reads the rows in data order."
        },
    )

    def __post_init__(self):
        if self.max_length <= 0:
            raise RecipeError(f"max_length: must be > 0, got {self.max_length}")
        if self.class_names is not None:
            repeated = sorted({name for name in self.class_names if self.class_names.count(name) > 1})
            if repeated:
                raise RecipeError(f"class_names: {', '.join(map(repr, repeated))} given more than once; "
                                  "give each class one distinct name")
        if self.image_size is not None and self.image_size < 8:
            raise RecipeError(f"image_size: must be >= 8 pixels, got {self.image_size}")
        if [a.lower() for a in self.image_augmentation] == ["none"]:
            self.image_augmentation = []  # `--image_augmentation none` on the command line
        from .vision.data import AUGMENTATIONS

        for name in self.image_augmentation:
            if name not in AUGMENTATIONS:
                raise unknown_choice("image_augmentation", name, AUGMENTATIONS)
        if not 0 <= self.source_eval_fraction < 1:
            raise RecipeError(f"source_eval_fraction: must be in [0, 1), got {self.source_eval_fraction}")
        from .metrics.registry import check_metric_names

        self.metrics = check_metric_names(self.metrics)
        for name in ("max_source_samples", "max_target_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise RecipeError(f"{name}: must be > 0, got {value}")
        if self.streaming_sample_size < 10:
            raise RecipeError(f"streaming_sample_size: must be >= 10 rows, got {self.streaming_sample_size}")
        if self.streaming_shuffle_buffer < 0:
            raise RecipeError(f"streaming_shuffle_buffer: must be >= 0 (0: no shuffling), got "
                              f"{self.streaming_shuffle_buffer}")
        self.resolved_task.check_data_args(self)  # unknown task: the nearest name; fields the task cannot use

    @property
    def resolved_task(self):
        """The registered task (:class:`hf_transfer.tasks.Task`) these data fields mean: ``task``, or the one
        inferred from ``image_column``."""
        from .tasks import task_for_data

        return task_for_data(self)


@dataclass
class MethodArguments:
    """Which transfer objective(s) to train with, and how checkpoints are scored without target labels."""

    method: list[str] = field(
        default_factory=lambda: ["finetune"],
        metadata={"help": "Method name, or a list of names whose losses add up (e.g. [dann, entropy])."},
    )
    selection_validators: list[str] = field(
        default_factory=lambda: ["iwv", "dev", "snd", "entropy"],
        metadata={
            "help": "Label-free validators scored at each periodic evaluation when target_data is set (logged as "
            "eval_<name>; all higher-is-better): iwv, dev, snd, entropy. [] or none turns the scoring off."
        },
    )
    selection_max_target_samples: int = field(
        default=2000,
        metadata={"help": "Score the label-free validators on at most this many target rows (cost grows with it)."},
    )
    tsne_plot: bool = field(
        default=True,
        metadata={"help": "With target_data (text models): write diagnostics_tsne.png beside the model, a t-SNE of "
                          "source vs target features before and after training (a second or two on a CPU)."},
    )
    tsne_rows: int = field(
        default=100, metadata={"help": "Rows per domain in the before/after t-SNE (a seeded sample)."}
    )

    def __post_init__(self):
        from .selection import VALIDATORS

        if [v.lower() for v in self.selection_validators] == ["none"]:
            self.selection_validators = []  # `--selection_validators none` on the command line
        for name in self.selection_validators:
            if name not in VALIDATORS:
                raise unknown_choice("selection_validators", name, VALIDATORS)
        if self.tsne_rows < 2:
            raise RecipeError(f"tsne_rows: must be >= 2, got {self.tsne_rows}")
        if self.selection_max_target_samples < 3:
            raise RecipeError(
                f"selection_max_target_samples: must be >= 3, got {self.selection_max_target_samples}"
            )


@dataclass
class Recipe:
    """A fully resolved recipe: what ``hf-transfer train`` runs and what is saved beside the model."""

    model: ModelArguments
    data: DataArguments
    methods: MethodArguments
    training: TrainingArguments
    method_configs: dict[str, MethodConfig]
    peft: dict[str, Any] | None = None
    #: the TrainingArguments fields the recipe and overrides set, as given (after type conversion)
    training_fields: dict[str, Any] = field(default_factory=dict)
    #: the registered family (hf_transfer.families) that trains a flat recipe
    family: ClassVar[str] = DEFAULT_FAMILY

    @property
    def needs_target(self) -> bool:
        return any(get_method_spec(name).needs_target for name in self.methods.method)

    def to_dict(self) -> dict[str, Any]:
        """The flat recipe: every field of our dataclasses, the training fields that differ from their defaults,
        and the blocks. Tokens are never included."""
        out: dict[str, Any] = {}
        for args in (self.model, self.data, self.methods):
            out.update(dataclasses.asdict(args))
        for name in IN_MEMORY_FIELDS:  # an in-memory Dataset is written as its description, a plain string
            if hasattr(out.get(name), "specs"):  # several files (hf_transfer.data.DataFiles): the list
                out[name] = list(out[name].specs)
            elif isinstance(out.get(name), str):
                out[name] = str(out[name])
        if self.peft:
            out["peft"] = dict(self.peft)
        for name, config in self.method_configs.items():
            out[name] = dataclasses.asdict(config)
        # Training fields as given (TrainingArguments rewrites some in __post_init__); the rest are the defaults.
        for name, value in self.training_fields.items():
            if name not in _SECRET_FIELDS:
                out[name] = _plain(value)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


_SECRET_FIELDS = {"hub_token"}


def _plain(value: Any) -> Any:
    """Enums and other wrappers to YAML-friendly values."""
    if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


_FLAT_CLASSES = (ModelArguments, DataArguments, MethodArguments, TrainingArguments)
#: data fields that also take a ``datasets.Dataset`` / ``DatasetDict`` from Python
IN_MEMORY_FIELDS = ("source_data", "target_data", "eval_data")


@cache
def _parser(*classes: type) -> HfArgumentParser:
    return HfArgumentParser(classes)


def _field_names(*classes: type) -> list[str]:
    return [f.name for cls in classes for f in dataclasses.fields(cls) if f.init]


@cache
def _nullable_fields() -> frozenset[str]:
    """Our fields that accept None although their default is set (``target_data``: ``str | None``). Read from the
    class annotations: HfArgumentParser rewrites ``field.type`` of optional fields to the bare type."""
    return frozenset(name for cls in (ModelArguments, DataArguments, MethodArguments)
                     for name, annotation in cls.__annotations__.items() if "None" in str(annotation))


class BareFlag(str):
    """The value of a command-line flag given without one (``--bf16``): ``"true"`` to every reader, so that boolean
    fields read it as true, but recognisable, so that a field that needs a value (``--output_dir`` at the end of the
    line) is refused instead of being set to the text ``true``."""


def is_secret_field(name: str) -> bool:
    """Fields whose values are never shown in a message: ``hub_token`` and any other ``*token*`` field that holds
    text (boolean flags such as ``include_tokens_per_second`` are not secrets)."""
    return name in _SECRET_FIELDS or ("token" in name.lower() and not name.startswith("include_"))


def _shown(key: str, value: Any) -> str:
    """``repr(value)`` for a message, or a placeholder for a secret field."""
    return "<hidden>" if is_secret_field(key.rsplit(".", 1)[-1]) else repr(value)


def redact(message: str, secrets: Any) -> str:
    """``message`` with every text value in ``secrets`` (values of secret fields) replaced by a placeholder."""
    for secret in secrets:
        for text in (secret if isinstance(secret, list) else [secret]):
            if isinstance(text, str) and text:
                message = message.replace(text, "<hidden>")
    return message


def _accepts_mapping(parser: HfArgumentParser, key: str) -> bool:
    """Whether a field's declared type admits a mapping (``lr_scheduler_kwargs``, ``fsdp_config`` ...). Read from
    the class annotations: HfArgumentParser rewrites ``field.type`` of such fields to ``str``."""
    for cls in parser.dataclass_types:
        for klass in cls.__mro__:
            annotation = getattr(klass, "__annotations__", {}).get(key)
            if annotation is not None:
                return "dict" in str(annotation)
    return False


def _coerce(parser: HfArgumentParser, key: str, value: Any, where: str) -> Any:
    """Convert a YAML or command-line value with the converter argparse would use for that field."""
    action = parser._option_string_actions.get(f"--{key}")
    if action is None:  # pragma: no cover - callers check names first
        raise RecipeError(f"{where}{key}: unknown field")
    convert = action.type or str
    if isinstance(value, BareFlag) and getattr(convert, "__name__", "") != "string_to_bool":
        raise RecipeError(f"{where}{key}: needs a value (--{key} VALUE); only true/false fields can be given alone")
    if value is None or (value == "null" and (action.default is None or key in _nullable_fields())):
        return None  # `--source_config null` on the command line, as `null` in YAML: unset an optional field
    if isinstance(value, dict):
        if _accepts_mapping(parser, key):
            return value  # dict-valued fields (lr_scheduler_kwargs, fsdp_config ...) pass through
        raise RecipeError(f"{where}{key}: expected a single value, got a mapping; write `{key}: VALUE`")
    if convert is dict and isinstance(value, str):  # a mapping given on the command line, as YAML/JSON text
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = None
        if not isinstance(parsed, dict):
            raise RecipeError(f"{where}{key}: expected a mapping such as {{name: value}}, got {value!r}")
        return parsed
    is_list = action.nargs in ("+", "*")
    values = value if isinstance(value, list) else [value]
    if is_list and len(values) == 1 and isinstance(values[0], str) and "," in values[0]:
        values = [v.strip() for v in values[0].split(",") if v.strip()]
    if not is_list and isinstance(value, list):
        raise RecipeError(f"{where}{key}: expected a single value, got a list {_shown(key, value)}")
    converted = []
    for v in values:
        text = ("true" if v else "false") if isinstance(v, bool) else str(v)
        try:
            item = convert(text)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            type_name = getattr(convert, "__name__", "value")
            type_name = {"string_to_bool": "true/false"}.get(type_name, type_name)
            raise RecipeError(f"{where}{key}: expected {type_name}, got {_shown(key, v)}") from None
        if action.choices is not None and item not in action.choices:
            raise unknown_choice(f"{where}{key}", text, [str(c) for c in action.choices])
        converted.append(item)
    return converted if is_list else converted[0]


def parse_cli_overrides(tokens: list[str]) -> dict[str, Any]:
    """``["--learning_rate", "3e-5", "--method", "dann", "entropy", "--bf16"]`` -> a dict of strings.

    A flag with no value means ``true`` (a :class:`BareFlag`, which fields that need a value refuse); several
    values make a list. ``--key=value`` also works.
    """
    overrides: dict[str, Any] = {}
    key: str | None = None
    last = ""  # the last field named, so that a stray value after a secret field is not echoed
    for token in tokens:
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            if not name:
                raise RecipeError(f"command line: stray {token!r}")
            key = last = name.replace("-", "_") if "." not in name else name
            overrides[key] = value if eq else None
            if eq:
                key = None
        elif key is None:
            raise RecipeError(f"command line: value {_shown(last, token)} has no --field before it")
        elif overrides[key] is None:
            overrides[key] = token
        elif isinstance(overrides[key], list):
            overrides[key].append(token)
        else:
            overrides[key] = [overrides[key], token]
    return {k: (BareFlag("true") if v is None else v) for k, v in overrides.items()}


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str) and key in seen:
                raise RecipeError(f"{key}: given twice in the recipe (lines {seen[key]} and {line}); keep one")
            if isinstance(key, str):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"recipe {str(path)!r}: is a folder; pass the path of a .yaml recipe file")
    if not path.is_file():
        raise RecipeError(f"recipe {str(path)!r}: file not found; pass the path of a .yaml recipe")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise RecipeError(f"recipe {str(path)!r}: line {line} is not UTF-8 (byte {err.object[err.start]:#04x}); "
                          "save the recipe as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"recipe {str(path)!r}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {str(path)!r}: expected a mapping of field: value, got {type(data).__name__}")
    return data


def _merge_dotted(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"peft.r": 16}`` -> ``{"peft": {"r": 16}}``, merged into blocks that already exist."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if "." in key:
            block, sub = key.split(".", 1)
            target = out.setdefault(block, {})
            if not isinstance(target, dict):
                raise RecipeError(f"{key}: {block!r} is not a block")
            target[sub] = value
        else:
            out[key] = value
    return out


def load_recipe(
    recipe: str | os.PathLike | dict[str, Any] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Recipe:
    """Read a recipe from a YAML path (or a dict, or nothing for the embedded defaults) and apply overrides.

    Args:
        recipe: path to a YAML recipe, a mapping with the same keys, or ``None``.
        overrides: command-line tokens (``["--learning_rate", "3e-5"]``) or a mapping (``{"learning_rate": 3e-5}``,
            ``{"peft.r": 16}``); they win over the recipe.

    Returns:
        a :class:`Recipe`, or a :class:`~hf_transfer.multitask.recipe.MultiTaskRecipe` when the recipe has ``tasks``.

    Raises:
        RecipeError: unknown key, wrong type, bad value, malformed YAML or missing recipe file.
    """
    if isinstance(overrides, list):
        overrides = parse_cli_overrides(overrides)
    overrides = dict(overrides or {})
    raw: dict[str, Any] = {}
    if recipe is None:
        raw = dict(EMBEDDED_DEFAULTS)
        if "source_data" not in overrides:
            raw["class_names"] = ["negative", "positive"]  # the shipped reviews: 0 negative, 1 positive
    elif isinstance(recipe, dict):
        raw = dict(recipe)
    else:
        raw = _load_yaml(recipe)
    for key in [*raw, *overrides]:
        if not isinstance(key, str):  # `1: 2` or `null: x` in YAML
            shown = "null" if key is None else repr(key)
            raise RecipeError(f"{shown}: not a field name; recipe keys are field names such as learning_rate (quote "
                              "a key that YAML reads as a number or null)")
    flat_names = set(_field_names(*_FLAT_CLASSES))
    method_names = available_methods()
    block_names = {"peft", *method_names}
    keys = [*raw, *overrides]
    if any(key.split(".", 1)[0] not in flat_names | block_names for key in keys):
        # A key no flat recipe has: a family's (`tasks`, `meta_method` ...; hf_transfer/families.py), or a typo,
        # refused below with the nearest name.
        family = family_for_keys(keys)
        if family is not None:
            if recipe is None:
                raw.pop("class_names", None)  # the embedded demo's labels; classes are per task in a family's lists
            return family.load_recipe(raw, overrides)
    raw = _merge_dotted(raw)
    for key, value in _merge_dotted(overrides).items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value

    for key in raw:
        if key not in flat_names and key not in block_names:
            fix = unknown_field_fix(key, sorted(flat_names | block_names),
                                    fallback="see `hf-transfer train --help` for the fields")
            raise RecipeError(f"{key}: unknown recipe field; {fix}")

    parser = _parser(*_FLAT_CLASSES)
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "source_data" and isinstance(value, (list, tuple)) and all(
                isinstance(v, (str, os.PathLike)) for v in value):  # an empty list: data_files says what it needs
            # Several files read as one table (hf_transfer.data.DataFiles): e.g. two label sets trained as their union.
            from .data import data_files

            flat[key] = data_files(value, field=key)
        elif key in IN_MEMORY_FIELDS and value is not None and not isinstance(value, (str, os.PathLike)):
            # A datasets.Dataset / DatasetDict from Python (hf_transfer.train(source_data=ds)): kept as the table;
            # any other object is refused with the types that work.
            from .data import in_memory_data

            split = raw.get(key.replace("_data", "_split"), "train")
            flat[key] = in_memory_data(value, field=key, split=split)
        elif key in flat_names:
            flat[key] = _coerce(parser, key, value, where="")
    if isinstance(flat.get("method"), str):
        flat["method"] = [flat["method"]]
    for name in flat.get("method") or ["finetune"]:
        get_method_spec(name)  # unknown method -> RecipeError with the nearest name
    flat.setdefault("output_dir", DEFAULT_OUTPUT_DIR)
    training_names = set(_field_names(TrainingArguments))
    training_fields = {k: v for k, v in flat.items() if k in training_names}
    if _launched_without_gpu() and "use_cpu" not in flat:
        # Accelerate picks its multi-process CPU (gloo) mode only when told to use the CPU; a multi-GPU launch config
        # on a CPU-only machine would otherwise start processes that each train alone. TrainingArguments creates the
        # distributed state, so this must be decided here. Not recorded: the recipe stays portable.
        flat["use_cpu"] = True
    try:
        model_args, data_args, method_args, training_args = parser.parse_dict(flat)
    except RecipeError:
        raise
    except (ValueError, TypeError) as err:
        secrets = [value for name, value in flat.items() if is_secret_field(name)]
        raise RecipeError(redact(f"training arguments: {err}", secrets)) from None
    check_training_values(training_args)
    if data_args.class_names and model_args.num_labels and len(data_args.class_names) != model_args.num_labels:
        raise RecipeError(f"class_names: {len(data_args.class_names)} names for num_labels={model_args.num_labels}; "
                          "give one name per class, or drop num_labels")

    if data_args.streaming and training_args.max_steps <= 0:
        # A stream has no length: the Trainer cannot count epochs, and the learning-rate schedule needs an end.
        raise RecipeError(
            "max_steps: streaming: true reads the data as a stream of unknown length, so num_train_epochs cannot "
            "end training; set max_steps > 0 (e.g. --max_steps 1000)"
        )
    if data_args.streaming and training_args.dataloader_num_workers > 0:
        # datasets hands each worker its own shards of a stream; a single-file stream has one shard, and a side with
        # fewer shards than workers would leave the other side's rows unpaired and untrained.
        raise RecipeError(
            "dataloader_num_workers: with streaming: true rows are read, tokenised and paired in the training "
            "process; set dataloader_num_workers: 0"
        )
    method_configs = {}
    for name in method_args.method:
        block = raw.get(name) or {}
        if not isinstance(block, dict):
            raise RecipeError(f"{name}: expected a block of the method's fields, got {block!r}")
        method_configs[name] = _parse_block(name, get_method_spec(name).config_class, block)
    for name in method_names:
        if name in raw and name not in method_args.method:
            raise RecipeError(
                f"{name}: a block for a method that is not in `method` {method_args.method}; add it there"
            )

    task = data_args.resolved_task
    task.check_recipe(data_args=data_args, training_args=training_args, methods=list(method_args.method),
                      method_configs=method_configs, selection_validators=list(method_args.selection_validators))
    peft_block = raw.get("peft")
    if peft_block is not None:
        from .backbones import validate_peft_block

        peft_block = validate_peft_block(peft_block, task_type=task.peft_task_type)
        check_peft_values(peft_block)
    from .engine_rules import check_launched_engine

    # Under an FSDP / DeepSpeed launch: refuse what cannot run.
    check_launched_engine(method_configs=method_configs,
                          merge_adapter=peft_block is not None and model_args.merge_adapter)
    return Recipe(model_args, data_args, method_args, training_args, method_configs, peft_block, training_fields)


def _matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (as YAML gives it) fits a dataclass field annotation: int, float, bool, str, list[...],
    dict, Literal, unions of these. Anything else (enums, classes) is not checked here."""
    import enum
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        # A literal with a placeholder (PEFT's 'pissa_niter_[number of iters]') admits any text.
        return value in args or (isinstance(value, str) and any("[" in str(a) for a in args))
    if origin in (list, tuple, set) or annotation in (list, tuple, set):
        return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, (str, annotation))
    return True


def check_peft_values(block: dict[str, Any]) -> None:
    """Refuse ``peft:`` values of the wrong type (``r: abc``) or range (``r: 0``, a dropout outside [0, 1)), which
    the PEFT config classes accept and the model fails on only when it is wrapped or trained."""
    import typing

    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    try:
        hints = typing.get_type_hints(PEFT_TYPE_TO_CONFIG_MAPPING[block["peft_type"]])
    except Exception:  # noqa: BLE001 - unresolvable annotations: leave the types to PEFT
        hints = {}
    for key, value in block.items():
        if key not in ("peft_type", "task_type") and key in hints and not _matches(value, hints[key]):
            expected = str(hints[key]).replace("typing.", "").replace("<class '", "").replace("'>", "")
            raise RecipeError(f"peft.{key}: expected {expected}, got {value!r}")
        is_rank = key == "r" or key.endswith("_r")
        if is_rank and isinstance(value, int) and value < 1:
            raise RecipeError(f"peft.{key}: must be >= 1 (the adapter's rank, e.g. 8), got {value}")
        if key.endswith("dropout") and isinstance(value, (int, float)) and not 0 <= value < 1:
            raise RecipeError(f"peft.{key}: must be in [0, 1), got {value}")


def check_training_values(args: TrainingArguments) -> None:
    """Refuse ``TrainingArguments`` values that would fail only once training runs (a negative or NaN learning
    rate, a batch of 0 rows, seed -1) or that would train nothing (``max_steps`` unset and ``num_train_epochs`` 0).
    Machine-dependent checks (fp16 without a GPU, ``report_to`` integrations) are in :mod:`hf_transfer.preflight`."""
    import math

    lr = args.learning_rate
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise RecipeError(f"learning_rate: must be a finite number >= 0 such as 2e-5, got {lr}")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = getattr(args, name)
        if value < 1:
            raise RecipeError(f"{name}: must be >= 1, got {value}")
    for name in ("seed", "data_seed"):
        value = getattr(args, name)
        if value is not None and not 0 <= value < 2**32:
            raise RecipeError(f"{name}: must be in 0..2**32-1 (a random-number seed), got {value}")
    if not math.isfinite(args.num_train_epochs) or args.num_train_epochs < 0:
        raise RecipeError(f"num_train_epochs: must be a finite number >= 0, got {args.num_train_epochs}")
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise RecipeError(
            f"max_steps: with max_steps {args.max_steps} and num_train_epochs {args.num_train_epochs} nothing would "
            "train; set max_steps > 0 or num_train_epochs > 0"
        )
    if not math.isfinite(args.weight_decay) or args.weight_decay < 0:
        raise RecipeError(f"weight_decay: must be a finite number >= 0, got {args.weight_decay}")


def _launched_without_gpu() -> bool:
    import torch

    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1 and int(os.environ.get("WORLD_SIZE", 1)) > 1
    return launched and not torch.cuda.is_available()


def _parse_block(name: str, config_class: type, block: dict[str, Any]):
    names = _field_names(config_class)
    for key in block:
        if key not in names:
            hint = nearest(key, names)
            fix = f"did you mean {name}.{hint}?" if hint else f"fields: {', '.join(names)}"
            raise RecipeError(f"{name}.{key}: unknown field of method {name!r}; {fix}")
    parser = _parser(config_class)
    values = {k: _coerce(parser, k, v, where=f"{name}.") for k, v in block.items()}
    try:
        (config,) = parser.parse_dict(values)
    except RecipeError:
        raise
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{name}: {err}") from None
    return config
