"""Model cards for every export, built on ``huggingface_hub.ModelCard`` / ``ModelCardData`` / ``EvalResult``.

Every family (plain transfer, multi-task and each of its tasks, meta-learning, lifelong) describes its export as a
:class:`CardContent` and :func:`build_card` turns it into a ``README.md`` the Hub understands:

* YAML metadata: ``model-index`` with one result per evaluated dataset (task type, dataset name, type and split,
  metric type and value, the values of ``metrics.json``), ``license`` inherited from the base model when its card
  is at hand, ``base_model`` (the Hub id, never a local folder), ``datasets`` (Hub ids only), ``pipeline_tag``,
  ``library_name`` and ``tags``;
* a body: title, how to load it, the data, the results and the recipe that made it.

Nothing local leaks into a card: data and model locations are shown relative to the working folder when they are
under it, else by their file name (:func:`display_path`); the embedded recipe is rewritten the same way
(:func:`portable_recipe_yaml`). The ``recipe.yaml`` saved beside the model keeps what a rerun needs instead
(relative paths, ``~`` for the home folder, the packaged demo data as the defaults they are).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

PROJECT_URL = "https://pypi.org/project/hf-transfer-learning/"

# Metric names as our metrics dicts spell them -> (Hub metric id, readable name, arguments of the metric).
_AVERAGED = re.compile(r"^(macro|micro|weighted|binary)_(f1|precision|recall)$")
_SHOTS = re.compile(r"^(\d+)shot_accuracy$")
_METRIC_IDS = {"accuracy": "accuracy", "f1": "f1", "precision": "precision", "recall": "recall", "mse": "mse",
               "mae": "mae", "pearson": "pearsonr", "spearman": "spearmanr",
               "matthews_correlation": "matthews_correlation"}
# Keys of a metrics dict that are not scores of the model on a dataset.
_NOT_A_SCORE = re.compile(r"(loss|runtime|per_second|train_rows|num_examples|_ci\d*|_(low|high|lower|upper))$")


@dataclass
class EvalSet:
    """One evaluation a card reports in its ``model-index``.

    Args:
        role: what the data is to this model (``"source"``, ``"target"``, a task name), shown in the dataset name.
        data: the recipe's spec of the data: a Hub dataset id, a file or a folder.
        metrics: metric name -> value, names as in ``metrics.json`` without the role prefix (``accuracy``,
            ``macro_f1``, ``mse``, ``2shot_accuracy`` ...). Keys that are not scores (losses, runtimes) are skipped.
        split, config: the split and configuration the data was read with.
        note: how the evaluated rows were chosen (``"10% of the rows, held out"``), shown in the dataset name.
        task_type: the Hub task id of the evaluation.
        metric_notes: metric name -> extra words for its readable name (a 95% interval ...).
    """

    role: str
    data: str | None
    metrics: dict[str, Any]
    split: str | None = None
    config: str | None = None
    note: str | None = None
    task_type: str = "text-classification"
    metric_notes: dict[str, str] = field(default_factory=dict)


@dataclass
class CardContent:
    """What one export's card says; :func:`build_card` lays it out.

    Args:
        base_model: ``model_name_or_path`` as the recipe gave it (a Hub id, a packaged name or a local folder).
        title: the card's heading (the Hub id when one is set).
        intro: the paragraph under the title (markdown).
        usage: how to load the model (markdown, code blocks included).
        pipeline_tag, library_name, tags: the card's metadata.
        data: ``(role, spec)`` rows of the data table; Hub dataset ids among them go into ``datasets``.
        evaluations: the ``model-index`` results.
        metrics: every metric of the run, for the results table (``metrics.json``).
        recipe_yaml: the resolved recipe, embedded made portable (:func:`portable_recipe_yaml`).
        hub_model_id: the Hub repository the model is pushed to, if any.
        sections: extra ``(heading, markdown)`` sections, placed before the results.
        data_note: a sentence under the data table.
    """

    base_model: str
    title: str
    intro: str
    usage: str
    pipeline_tag: str
    library_name: str
    tags: list[str]
    data: list[tuple[str, str | None]]
    evaluations: list[EvalSet]
    metrics: dict[str, Any]
    recipe_yaml: str
    hub_model_id: str | None = None
    sections: list[tuple[str, str]] = field(default_factory=list)
    data_note: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Where things are: Hub ids, local paths, what a card may show
# ---------------------------------------------------------------------------------------------------------------


def _looks_local(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.path.exists(os.path.expanduser(spec))


# A name ending like a data file is a file (perhaps not on this machine), never a Hub repository.
_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".txt", ".npz", ".yaml", ".yml")


def is_hub_id(spec: str | None) -> bool:
    """``spec`` names a Hub repository (``owner/name`` or a legacy bare name), not a local file or folder."""
    if not spec or _looks_local(spec) or spec.lower().endswith(_FILE_SUFFIXES):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


def _under(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def _packaged_demo_files() -> set[str]:
    from .defaults import DEFAULT_SOURCE, DEFAULT_TARGET

    return {os.path.realpath(DEFAULT_SOURCE), os.path.realpath(DEFAULT_TARGET)}


def _packaged_model_id(spec: str) -> str | None:
    """The Hub id whose packaged offline copy ``spec`` is (a site-packages folder), else ``None``."""
    from .backbones import PACKAGED_MODELS, resolve_model_path

    if spec in PACKAGED_MODELS:
        return spec
    if not os.path.isdir(spec):
        return None
    real = os.path.realpath(spec)
    for hub_id in PACKAGED_MODELS:
        copy = resolve_model_path(hub_id)
        if copy != hub_id and os.path.realpath(copy) == real:
            return hub_id
    return None


def display_path(spec: str | None) -> str | None:
    """How a data or model location appears in a card: a Hub id as it is, a packaged model's copy as its Hub id, a
    local path relative to the working folder when under it, else its file name. Never an absolute path."""
    if not spec or not _looks_local(spec):
        return spec
    packaged = _packaged_model_id(spec)
    if packaged:
        return packaged
    path = Path(os.path.abspath(os.path.expanduser(spec)))
    if os.path.realpath(path) in _packaged_demo_files():
        return path.name
    cwd = Path(os.getcwd())
    if _under(path, cwd) and "site-packages" not in path.parts and "dist-packages" not in path.parts:
        return str(path.relative_to(cwd)) or "."
    return path.name


def _rerun_path(spec: str) -> str:
    """A local path as the saved ``recipe.yaml`` keeps it: relative to the working folder when under it, ``~/...``
    under the home folder, a packaged model's copy as its Hub id, else unchanged (a rerun needs it)."""
    packaged = _packaged_model_id(spec)
    if packaged:
        return packaged
    path = Path(os.path.abspath(os.path.expanduser(spec)))
    cwd, home = Path(os.getcwd()), Path.home()
    if "site-packages" in path.parts or "dist-packages" in path.parts:
        return path.name
    if _under(path, cwd):
        return str(path.relative_to(cwd)) or "."
    if _under(path, home) and home != Path("/"):
        return str(Path("~") / path.relative_to(home))
    return spec


def portable_recipe_yaml(recipe_yaml: str, *, public: bool) -> str:
    """The resolved recipe without local detail.

    ``public=True`` (the card): every absolute path becomes what :func:`display_path` shows. ``public=False`` (the
    ``recipe.yaml`` beside the model, what ``hf-transfer train output_dir/recipe.yaml`` reruns): paths are kept
    relative to the working folder or ``~``, and the packaged demo data, which is the default of ``source_data`` /
    ``target_data``, is left out (a rerun reads the same files wherever the package is installed). Returns the text
    unchanged when nothing needed rewriting."""
    recipe = yaml.safe_load(recipe_yaml)
    if not isinstance(recipe, dict):
        return recipe_yaml
    demo = _packaged_demo_files()
    notes: list[str] = []
    dropped = [key for key in ("source_data", "target_data")
               if isinstance(recipe.get(key), str) and os.path.realpath(os.path.expanduser(recipe[key])) in demo]
    for key in dropped:
        notes.append(f"{key}: the packaged demo reviews ({Path(recipe.pop(key)).name}), the default")
    cwd = Path(os.getcwd())
    shortened = []

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        if not isinstance(value, str):
            return value
        absolute = os.path.isabs(os.path.expanduser(value))
        if not public:
            return _rerun_path(value) if absolute else value
        if not (absolute or value.startswith("../")):  # "../x" is outside the working folder too
            return value
        new = display_path(value)
        if new != value and not _under(Path(os.path.abspath(os.path.expanduser(value))), cwd):
            shortened.append(new)
        return new

    portable = rewrite(recipe)
    if not dropped and portable == recipe:
        return recipe_yaml
    if shortened:
        notes.append("paths outside the working folder are shown by file name")
    header = "".join(f"# {note}\n" for note in notes)
    return header + yaml.safe_dump(portable, sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------------------------------------------------
# What the base model says about itself
# ---------------------------------------------------------------------------------------------------------------


def hub_base_model(name_or_path: str) -> str | None:
    """The Hub id of the base model for the card's ``base_model``: the id itself, the id of a packaged copy, or
    ``None`` for a local folder or a packaged name that is not a Hub repository (``efficientnet-lite0``)."""
    from .backbones import PACKAGED_BUILDERS

    packaged = _packaged_model_id(name_or_path)
    if packaged:
        return packaged
    if name_or_path in PACKAGED_BUILDERS:  # `openai/whisper-tiny.en` is a Hub repository; `efficientnet-lite0` is not
        return name_or_path if "/" in name_or_path else None
    return name_or_path if is_hub_id(name_or_path) else None


_LICENSE_KEYS = ("license", "license_name", "license_link")


def inherited_license(name_or_path: str) -> dict[str, str]:
    """``license`` (and ``license_name`` / ``license_link``) from the base model's own card front matter: read from
    a local folder or a packaged copy, from the Hub cache, or (online only) from the Hub. ``{}`` when unknown."""
    from .backbones import PACKAGED_BUILDERS, resolve_model_path

    if name_or_path in PACKAGED_BUILDERS:  # built from a wheel's raw weights: no card to inherit from
        return {}
    folder = resolve_model_path(name_or_path)
    meta: dict[str, Any] | None = None
    if os.path.isdir(folder):
        meta = _front_matter(Path(folder) / "README.md")
    elif is_hub_id(name_or_path):
        meta = _hub_front_matter(name_or_path)
    if not meta:
        return {}
    return {key: str(meta[key]) for key in _LICENSE_KEYS if meta.get(key)}


def _front_matter(readme: Path) -> dict[str, Any] | None:
    if not readme.is_file():
        return None
    from huggingface_hub import metadata_load

    try:
        return metadata_load(readme)
    except (ValueError, yaml.YAMLError, UnicodeDecodeError):
        logger.warning("the model card %s has unreadable metadata; the license is not inherited", readme.name)
        return None


def _hub_front_matter(repo_id: str) -> dict[str, Any] | None:
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "README.md")
    if isinstance(cached, str):
        return _front_matter(Path(cached))
    if constants.HF_HUB_OFFLINE:
        return None
    from huggingface_hub import model_info

    try:
        data = model_info(repo_id, timeout=10).card_data
    except Exception as err:  # noqa: BLE001 - any Hub failure only costs the license line, never the export
        logger.info("could not read the card of %s from the Hub (%s); the license is not inherited", repo_id, err)
        return None
    return data.to_dict() if data is not None else None


# ---------------------------------------------------------------------------------------------------------------
# model-index
# ---------------------------------------------------------------------------------------------------------------


def metric_entry(name: str) -> tuple[str, str, dict[str, Any] | None] | None:
    """``(Hub metric id, readable name, metric arguments)`` for a metric name of ours, ``None`` for a key that is
    not a score (losses, runtimes, interval bounds)."""
    if _NOT_A_SCORE.search(name):
        return None
    if m := _AVERAGED.match(name):
        average, metric = m.groups()
        return metric, f"{average.capitalize()} {metric.upper() if metric == 'f1' else metric}", {"average": average}
    if m := _SHOTS.match(name):
        return "accuracy", f"{m.group(1)}-shot accuracy", {"shots": int(m.group(1))}
    if name.endswith("_accuracy"):  # final_accuracy (lifelong) ...
        return "accuracy", name.replace("_", " ").capitalize(), None
    metric_id = _METRIC_IDS.get(name, name)
    return metric_id, name.replace("_", " ").capitalize() if name not in ("mse", "mae") else name.upper(), None


def eval_results(evaluations: list[EvalSet]):
    """``huggingface_hub.EvalResult`` objects for the evaluations' scores (non-numeric, NaN values skipped). Two
    evaluations that the Hub would group together (same task, dataset type, config and split: e.g. the held-out
    source rows and the target rows of one file) are kept apart by their role as the dataset configuration."""
    from huggingface_hub import EvalResult

    results = []
    seen: dict[tuple, str] = {}
    for ev in evaluations:
        shown = display_path(ev.data) or ev.role
        dataset_type = ev.data if is_hub_id(ev.data) else Path(shown).name
        config = ev.config
        key = (ev.task_type, dataset_type, config, ev.split)
        if seen.get(key, ev.role) != ev.role:
            config = ev.role
            key = (ev.task_type, dataset_type, config, ev.split)
        seen[key] = ev.role
        name = f"{shown} ({ev.role}{'; ' + ev.note if ev.note else ''})"
        for metric, value in ev.metrics.items():
            entry = metric_entry(metric)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if entry is None or not numeric or not math.isfinite(value):
                continue  # the Hub's model-index takes finite numbers only
            metric_type, metric_name, args = entry
            if metric in ev.metric_notes:
                metric_name = f"{metric_name} ({ev.metric_notes[metric]})"
            results.append(EvalResult(
                task_type=ev.task_type, dataset_type=dataset_type, dataset_name=name, dataset_config=config,
                dataset_split=ev.split, metric_type=metric_type, metric_name=metric_name, metric_value=value,
                metric_args=args,
            ))
    return results


def role_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The metrics that start with ``prefix`` (``"target_"``, ``"books/"``), the prefix removed."""
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------------------------


def card_metadata(content: CardContent):
    """The card's ``huggingface_hub.ModelCardData``."""
    from huggingface_hub import ModelCardData

    hub_datasets = list(dict.fromkeys(spec for _, spec in content.data if is_hub_id(spec)))
    results = eval_results(content.evaluations)
    metric_ids = list(dict.fromkeys(r.metric_type for r in results))
    return ModelCardData(
        base_model=hub_base_model(content.base_model),
        datasets=hub_datasets or None,
        library_name=content.library_name,
        pipeline_tag=content.pipeline_tag,
        tags=list(dict.fromkeys(content.tags)),
        metrics=metric_ids or None,
        model_name=content.title if results else None,
        eval_results=results or None,
        **inherited_license(content.base_model),
    )


def build_card(content: CardContent) -> str:
    """The ``README.md`` of an export: metadata from :func:`card_metadata`, then title, introduction, how to load
    it, data, the family's own sections, results and the portable recipe. Parses with ``huggingface_hub.ModelCard``.
    """
    from huggingface_hub import ModelCard

    data_rows = "\n".join(f"| {role} | {_cell(display_path(spec))} |" for role, spec in content.data)
    result_rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in sorted(content.metrics.items()))
    parts = [
        f"# {content.title}",
        content.intro.strip(),
        content.usage.strip(),
    ]
    if content.data:
        parts.append("## Data\n\n| role | dataset |\n|---|---|\n" + data_rows
                     + (f"\n\n{content.data_note}" if content.data_note else ""))
    parts += [f"## {heading}\n\n{body.strip()}" for heading, body in content.sections]
    parts.append("## Results\n\n| metric | value |\n|---|---|\n" + result_rows)
    parts.append(
        "## Recipe\n\nRerun with `hf-transfer train recipe.yaml` (the same recipe sits beside the model, with the "
        "paths a rerun needs):\n\n```yaml\n" + portable_recipe_yaml(content.recipe_yaml, public=True).strip()
        + "\n```"
    )
    metadata = card_metadata(content).to_yaml()
    text = f"---\n{metadata}\n---\n\n" + "\n\n".join(parts) + "\n"
    return str(ModelCard(text))  # parse it back: a card the Hub cannot read fails here, not after a push


def _cell(value: str | None) -> str:
    return value.replace("|", "\\|") if value else "—"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return _cell(str(value))


def hub_link(base_model: str) -> str:
    """The base model as the card's text names it: a link to its Hub page when it is a Hub model, else its name."""
    hub = hub_base_model(base_model)
    return f"[`{hub}`](https://huggingface.co/{hub})" if hub else f"`{display_path(base_model)}`"


def where(hub_model_id: str | None, subfolder: str | None = None) -> str:
    """The ``from_pretrained`` argument a snippet shows: the Hub id, else a placeholder for the local folder."""
    if hub_model_id:
        return repr(hub_model_id)
    return repr("path/to/this/folder" + (f"/{subfolder}" if subfolder else ""))


# ---------------------------------------------------------------------------------------------------------------
# The single-task transfer card (plain transfer, and each task of a multi-task model)
# ---------------------------------------------------------------------------------------------------------------


def usage_snippet(*, pipeline_tag: str, peft_type: str | None, hub_model_id: str | None,
                  merged: bool = False, regression: bool = False, subfolder: str | None = None,
                  id2label: dict[int, str] | None = None) -> str:
    """How to load a single-task export without hf_transfer: ``pipeline`` for a plain model,
    ``AutoPeftModelForSequenceClassification`` for a text adapter, ``PeftModel`` on the base for an image adapter.
    ``subfolder``: where the export sits inside the Hub repository ``hub_model_id`` (a multi-task model's task).

    An adapter's base config does not know the run's classes (PEFT builds the base model from it alone), so the
    adapter snippets pass ``id2label``/``label2id`` written out from ``id2label``: with them any class count loads,
    with its class names."""
    model = where(hub_model_id)
    labels = {int(k): v for k, v in (id2label or {}).items()}
    label_code = (f"id2label = {labels!r}\n" if labels
                  else "id2label = ...  # the classes, as in classifier_config.json\n")
    label_kwargs = "id2label=id2label, label2id={name: i for i, name in id2label.items()}"
    extra = ", function_to_apply=\"none\"" if regression else ""
    if not peft_type and hub_model_id and subfolder:
        code = ("from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline\n"
                f"model = AutoModelForSequenceClassification.from_pretrained({model}, subfolder=\"{subfolder}\")\n"
                f"tokenizer = AutoTokenizer.from_pretrained({model}, subfolder=\"{subfolder}\")\n"
                f"classifier = pipeline(\"{pipeline_tag}\", model=model, tokenizer=tokenizer{extra})")
    elif not peft_type:
        code = f'from transformers import pipeline\nclassifier = pipeline("{pipeline_tag}", model={model}{extra})'
    elif pipeline_tag == "text-classification":
        code = ("from peft import AutoPeftModelForSequenceClassification\n"
                "from transformers import AutoTokenizer, pipeline\n" + label_code
                + f"model = AutoPeftModelForSequenceClassification.from_pretrained({model}, {label_kwargs})\n"
                f"tokenizer = AutoTokenizer.from_pretrained({model})\n"
                f"classifier = pipeline(\"{pipeline_tag}\", model=model, tokenizer=tokenizer)")
    else:
        code = ("from peft import PeftConfig, PeftModel\n"
                "from transformers import AutoImageProcessor, AutoModelForImageClassification\n"
                + label_code +
                f"config = PeftConfig.from_pretrained({model})\n"
                "base = AutoModelForImageClassification.from_pretrained(config.base_model_name_or_path, "
                f"{label_kwargs}, ignore_mismatched_sizes=True)\n"
                f"model = PeftModel.from_pretrained(base, {model})\n"
                f"processor = AutoImageProcessor.from_pretrained({model})")
    text = f"```python\n{code}\n```"
    if peft_type and merged:
        text += ("\n\nThe adapter merged into the base model is in `merged/`, a plain model that `pipeline"
                 f"(\"{pipeline_tag}\", model=...)` loads"
                 + (f" (`subfolder=\"merged\"` from {model})." if hub_model_id else "."))
    return text


def transfer_card(
    *,
    base_model: str,
    methods: list[str],
    metrics: dict[str, Any],
    recipe_yaml: str,
    evaluations: list[EvalSet],
    data: list[tuple[str, str | None]],
    peft_type: str | None,
    hub_model_id: str | None = None,
    pipeline_tag: str = "text-classification",
    merged: bool = False,
    regression: bool = False,
    subfolder: str | None = None,
    title: str | None = None,
    extra_tags: list[str] | None = None,
    id2label: dict[int, str] | None = None,
    data_note: str | None = "Target-domain labels, when present, were used for evaluation only, never for training.",
    usage: str | None = None,
    kind: str | None = None,
    sections: list[tuple[str, str]] | None = None,
) -> str:
    """The card of a single-task export (plain transfer, one task of a multi-task model). ``pipeline_tag`` is
    ``"text-classification"`` or ``"image-classification"``; it sets the tag, the wording and the loading snippet.
    ``subfolder``: where the export sits inside the Hub repository ``hub_model_id`` (``tasks/<name>``); ``title``
    replaces the default heading. ``usage`` and ``kind`` (a task's :meth:`~hf_transfer.tasks.Task.card_fields`)
    replace the loading snippet and the first words ("A text") that ``pipeline_tag`` otherwise decides."""
    from .defaults import __version__

    adapter = f" ({peft_type} adapter)" if peft_type else ""
    name = hub_base_model(base_model) or display_path(base_model) or "model"
    kind = kind or ("An image" if pipeline_tag == "image-classification" else "A text")
    what = "regressor" if regression else "classifier"
    intro = (
        f"{kind} {what} transferred from {hub_link(base_model)} with [hf-transfer]({PROJECT_URL}) {__version__}, "
        f"method: **{' + '.join(methods)}**{adapter}. It is an ordinary "
        f"{'PEFT adapter on a ' if peft_type else ''}transformers model: hf-transfer is not needed to use it."
    )
    content = CardContent(
        base_model=base_model,
        title=title or _default_title(hub_model_id, subfolder, name),
        intro=intro,
        usage=usage or usage_snippet(pipeline_tag=pipeline_tag, peft_type=peft_type, hub_model_id=hub_model_id,
                                     merged=merged, regression=regression, subfolder=subfolder, id2label=id2label),
        pipeline_tag=pipeline_tag,
        library_name="peft" if peft_type else "transformers",
        tags=["hf-transfer", "transfer-learning", *methods, *(extra_tags or [])]
        + ([peft_type.lower()] if peft_type else []),
        data=data,
        evaluations=evaluations,
        metrics=metrics,
        recipe_yaml=recipe_yaml,
        hub_model_id=hub_model_id,
        data_note=data_note,
        sections=list(sections or []),
    )
    return build_card(content)


def _default_title(hub_model_id: str | None, subfolder: str | None, base_name: str) -> str:
    if hub_model_id:
        return f"{hub_model_id}: {subfolder}" if subfolder else hub_model_id
    return f"{base_name.split('/')[-1]} transferred with hf-transfer"


def transfer_evaluations(recipe, metrics: dict[str, Any], *, task_type: str) -> list[EvalSet]:
    """The ``model-index`` results of a plain transfer run: the held-out source rows and the target (or
    ``eval_data``) rows, each with the metrics ``metrics.json`` holds for it."""
    d = recipe.data
    out = []
    source = role_metrics(metrics, "source_")
    if source:
        out.append(EvalSet("source", d.source_data, source, split=d.source_split, config=d.source_config,
                           note=f"{d.source_eval_fraction:.0%} of the rows, held out", task_type=task_type))
    target = role_metrics(metrics, "target_")
    if target:
        if d.eval_data:
            out.append(EvalSet("target", d.eval_data, target, split=d.eval_split, config=d.eval_config,
                               note="eval_data", task_type=task_type))
        else:
            out.append(EvalSet("target", d.target_data, target, split=d.target_split, config=d.target_config,
                               note="labels used for evaluation only", task_type=task_type))
    return out


#: card sections a method's ``prepare`` hook leaves beside the model: ``{method: [[heading, markdown], ...]}``
CARD_SECTIONS_FILE = "card_sections.json"


def write_card_section(output_dir: str | os.PathLike, method: str, heading: str, body: str) -> None:
    """Record a section (``## heading``) for the card of the model ``output_dir`` will hold; shown when ``method``
    is one of the run's methods (a stale entry of a method the next run drops is never shown)."""
    import json

    from .outputs import atomic_write_json

    path = Path(output_dir) / CARD_SECTIONS_FILE
    sections = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    sections[method] = [[heading, body]]
    atomic_write_json(path, sections)


def method_sections(output_dir: str | os.PathLike, methods: list[str]) -> list[tuple[str, str]]:
    """The sections :func:`write_card_section` recorded for ``methods``, in their order."""
    import json

    path = Path(output_dir) / CARD_SECTIONS_FILE
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return []
    if not isinstance(recorded, dict):
        return []
    return [(str(h), str(b)) for m in methods for h, b in (recorded.get(m) or [])]


def recipe_card(recipe, metrics: dict[str, Any], recipe_yaml: str, *, hub_model_id: str | None = None,
                id2label: dict[int, str] | None = None, task: Any = None) -> str:
    """The card of a plain transfer run (:func:`hf_transfer.run.train`), from its recipe, metrics and the trained
    model's ``id2label`` (written into an adapter's loading snippet). ``task`` (default: the recipe's,
    :class:`hf_transfer.tasks.Task`) gives the pipeline tag, the wording and the loading snippet."""
    d = recipe.data
    task = task if task is not None else d.resolved_task
    peft_type = recipe.peft["peft_type"] if recipe.peft else None
    merged = bool(recipe.peft and recipe.model.merge_adapter)
    fields = task.card_fields(peft_type=peft_type, hub_model_id=hub_model_id, merged=merged, id2label=id2label)
    task_type = fields["pipeline_tag"]
    evaluation = d.eval_data or (d.target_data if "target_accuracy" in metrics else None)
    return transfer_card(
        base_model=recipe.model.model_name_or_path,
        methods=list(recipe.methods.method),
        metrics=metrics,
        recipe_yaml=recipe_yaml,
        evaluations=transfer_evaluations(recipe, metrics, task_type=task_type),
        data=[("source (labelled)", d.source_data), ("target (unlabelled)", d.target_data),
              ("evaluation", evaluation)],
        peft_type=peft_type,
        hub_model_id=hub_model_id,
        pipeline_tag=task_type,
        merged=merged,
        id2label=id2label,
        usage=fields["usage"],
        kind=fields["kind"],
        sections=method_sections(recipe.training.output_dir, list(recipe.methods.method)),
    )
