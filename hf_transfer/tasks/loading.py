"""Load a model folder written by a run (a plain model, or a PEFT adapter on its base model) with a task's Auto
class; :func:`hf_transfer.tasks.load_trained` picks the task of a folder and calls it.

In the tasks package, below both the methods and the diagnostics, so that both can load a trained model without
importing the training entry point (:mod:`hf_transfer.run`, which re-exports these names).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

#: Beside an adapter: the config of the classifier it was trained as (labels, and any size a recipe changed), which
#: the base model's own config lacks. Loaders pass its labels to ``from_pretrained`` (see :func:`_load_adapter`).
CLASSIFIER_CONFIG = "classifier_config.json"


def save_classifier_config(model, folder: Path) -> None:
    """Write the trained classifier's config (the base config with this run's ``num_labels``, ``id2label``,
    ``label2id``) as :data:`CLASSIFIER_CONFIG`. Not ``config.json``: transformers would then take the adapter folder
    for a full model and look for base weights in it."""
    from ..hub import atomic_write_text

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    atomic_write_text(Path(folder) / CLASSIFIER_CONFIG, inner.config.to_json_string())


def load_model_folder(path: Path, auto_class):
    """The model of a trained folder, built with ``auto_class``: a plain model, or a PEFT adapter on its base."""
    if (path / "adapter_config.json").is_file():
        return _load_adapter(path, auto_class)
    if (path / "config.json").is_file():
        return auto_class.from_pretrained(str(path))
    raise UserError(f"model: {str(path)!r} has neither config.json nor adapter_config.json; is it a trained model?")


def _load_adapter(path: Path, auto_class):
    """The base model (its packaged copy offline) built as the classifier the adapter was trained on, from
    :data:`CLASSIFIER_CONFIG` (labels, sizes), then the adapter on it. Without that file (older exports) the base
    config is used as it is."""
    import json

    from peft import PeftConfig, PeftModel
    from transformers import AutoConfig

    from ..backbones import _load_error, resolve_model_path

    base_id = PeftConfig.from_pretrained(str(path)).base_model_name_or_path
    base_path = resolve_model_path(base_id)
    try:
        if (path / CLASSIFIER_CONFIG).is_file():
            values = json.loads((path / CLASSIFIER_CONFIG).read_text(encoding="utf-8"))
            config = AutoConfig.for_model(values.pop("model_type"), **values)
        else:
            config = AutoConfig.from_pretrained(base_path)
        # The new head is not in the base checkpoint (or has the base's class count); the adapter brings it.
        base = auto_class.from_pretrained(base_path, config=config, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as err:
        raise _load_error(base_id, err) from None
    return PeftModel.from_pretrained(base, str(path))
