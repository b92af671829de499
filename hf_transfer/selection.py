"""Label-free model selection during training: score every evaluation with the validators of
:mod:`hf_transfer.validators`, log the scores as eval metrics, and report at the end which step each would pick.

At each periodic evaluation (``eval_strategy: steps`` or ``epoch``) :class:`LabelFreeSelection` runs the model over

* the held-out **labelled source** slice (``source_eval_fraction`` of the source, never trained on), and
* up to ``selection_max_target_samples`` rows of the **unlabelled target** data (``target_data``; its labels, if
  any, were dropped at tokenisation and never reach this module),

capturing the logits and the features the classifier head receives, and computes

=========  ==========================================================================================================
key        score (every one higher-is-better, so ``greater_is_better`` stays true)
=========  ==========================================================================================================
``iwv``    ``-mean(w * loss)`` on the source slice, ``w = p_t(x)/p_s(x)`` (Sugiyama et al. 2007)
``dev``    IWV with DEV's control variate (You et al. 2019)
``snd``    soft neighbourhood density of the target predictions (Saito et al. 2021)
``entropy``  ``-mean H(p)`` of the target predictions (Morerio et al. 2018)
=========  ==========================================================================================================

They are logged as ``eval_iwv``, ``eval_dev``, ``eval_snd``, ``eval_entropy``, so ``metric_for_best_model: snd``
with ``load_best_model_at_end: true`` keeps the checkpoint SND prefers. The density ratios ``w`` come from a
logistic-regression domain classifier on the features (:func:`~hf_transfer.validators.domain_density_ratio`),
*cross-fitted*: the source slice is split in two, and each half is weighted by a classifier fitted on the other
half and the target rows, so no source row is weighted by a classifier that saw it. The classifier's
regularisation is chosen by cross-validated log-loss (:func:`choose_density_C`), since over-confident domain
probabilities make the ratios explode.

Several processes: each runs the model on its shard; features and logits are gathered
(``accelerator.gather_for_metrics``, which drops the rows padded in to even out the shards), the scores are
computed once on the main process and broadcast, so every process logs and compares the same numbers.

After training, :func:`selection_summary` reads the scores back from ``trainer.state.log_history`` (which survives
a resume) and reports ``selection/<validator>/step`` and, when the run has labelled evaluation data,
``selection/<validator>/target_accuracy`` and the oracle (best target accuracy over the evaluations).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .backbones import FeatureTap
from .data import MODEL_INPUT_KEYS, bounded_rows
from .validators import (
    cross_entropy_per_example,
    dev_score,
    domain_density_ratio,
    entropy_score,
    iwv_score,
    select_checkpoint,
    snd_score,
)

#: the validators, in the order they are logged; all higher-is-better
VALIDATORS = ("iwv", "dev", "snd", "entropy")
#: validators that need the labelled source slice (and a density ratio)
SOURCE_VALIDATORS = ("iwv", "dev")
TARGET_ACCURACY_KEY = "eval_target_accuracy"


def validator_metric(name: str) -> str | None:
    """``"snd"`` or ``"eval_snd"`` -> ``"snd"``; any other metric name -> ``None``."""
    bare = name[len("eval_"):] if name.startswith("eval_") else name
    return bare if bare in VALIDATORS else None


#: inverse regularisation strengths the domain classifier's C is chosen from (by cross-validated log-loss)
DENSITY_CS = (0.001, 0.01, 0.1, 1.0)


def choose_density_C(
    source_features: np.ndarray, target_features: np.ndarray, *, Cs=DENSITY_CS, seed: int = 0
) -> float:
    """The ``C`` of the logistic-regression domain classifier with the best 3-fold cross-validated log-loss.

    Density ratios are only as good as the classifier's probabilities: with a few hundred source rows in a
    384-dimensional feature space an unregularised classifier separates the domains almost perfectly and the ratios
    explode (a handful of rows carry all the weight), while too much regularisation flattens them to 1. The
    log-loss of held-out rows measures exactly the calibration the ratios need.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([source_features, target_features])
    y = np.concatenate([np.zeros(len(source_features)), np.ones(len(target_features))])
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    scores = []
    for C in Cs:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000, random_state=seed))
        scores.append(cross_val_score(clf, x, y, cv=folds, scoring="neg_log_loss").mean())
    return float(Cs[int(np.argmax(scores))])


def cross_fitted_density_ratio(
    source_features: np.ndarray,
    target_features: np.ndarray,
    *,
    folds: int = 2,
    C: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """``p_t(x)/p_s(x)`` at every source row, each estimated by a domain classifier that did not see that row.

    The source rows are split into ``folds`` random parts; part k is weighted by
    :func:`~hf_transfer.validators.domain_density_ratio` fitted on the other parts and all target rows. ``C``:
    the classifier's inverse regularisation; ``None`` chooses it with :func:`choose_density_C`.
    """
    n = len(source_features)
    if n < 2 * folds:
        raise ValueError(f"cross-fitting {folds} folds needs at least {2 * folds} source rows, got {n}")
    if C is None:
        C = choose_density_C(source_features, target_features, seed=seed)
    order = np.random.default_rng(seed).permutation(n)
    weights = np.empty(n, dtype=np.float64)
    for part in np.array_split(order, folds):
        rest = np.setdiff1d(order, part)
        weights[part] = domain_density_ratio(
            source_features[rest], target_features, source_features[part], C=C, random_state=seed
        )
    return weights


def compute_scores(
    *,
    target_logits: Any,
    source_logits: Any = None,
    source_labels: Any = None,
    source_features: Any = None,
    target_features: Any = None,
    validators: Sequence[str] = VALIDATORS,
    snd_temperature: float = 0.05,
    density_C: float | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """The validators' scores from model outputs (numpy arrays or tensors); no target labels involved.

    ``iwv`` and ``dev`` are computed only when the source logits, labels and both domains' features are given;
    the others need only ``target_logits``. ``density_C``: the domain classifier's inverse regularisation (``None``:
    chosen by cross-validation, :func:`choose_density_C`). Returns ``{name: score}``, higher is better for every
    name.
    """
    scores: dict[str, float] = {}
    if "entropy" in validators:
        scores["entropy"] = entropy_score(target_logits, logits=True)
    if "snd" in validators:
        scores["snd"] = snd_score(target_logits, logits=True, temperature=snd_temperature)
    wanted = [v for v in SOURCE_VALIDATORS if v in validators]
    have_source = all(x is not None for x in (source_logits, source_labels, source_features, target_features))
    if wanted and have_source:
        source_features = np.asarray(source_features, dtype=np.float64)
        target_features = np.asarray(target_features, dtype=np.float64)
        weights = cross_fitted_density_ratio(source_features, target_features, C=density_C, seed=seed)
        losses = cross_entropy_per_example(source_logits, source_labels, logits=True)
        if "iwv" in wanted:
            scores["iwv"] = iwv_score(losses, weights)
        if "dev" in wanted:
            scores["dev"] = dev_score(losses, weights)
    return {name: scores[name] for name in VALIDATORS if name in scores}


@torch.no_grad()
def collect_outputs(trainer, dataset, feature_module: nn.Module) -> dict[str, torch.Tensor]:
    """Run ``trainer.model`` over ``dataset`` (sharded across processes) and return the gathered
    ``features``, ``logits`` and, when the rows have them, ``labels``, on the CPU, in dataset order."""
    from torch.utils.data import DataLoader

    accelerator = trainer.accelerator
    loader = DataLoader(dataset, batch_size=trainer.args.eval_batch_size, collate_fn=trainer.data_collator)
    loader = accelerator.prepare_data_loader(loader)
    # The plain module: no DDP collective per forward. (Under FSDP the Trainer keeps the sharded module here, whose
    # forward gathers its parameters; every process runs the same number of batches, so that stays in step.)
    model = trainer.model
    was_training = model.training
    model.eval()
    tap = FeatureTap(feature_module)
    parts: dict[str, list[torch.Tensor]] = {"features": [], "logits": [], "labels": []}
    try:
        for batch in loader:
            inputs = {k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}
            with trainer.autocast_smart_context_manager():
                logits = model(**inputs).logits
            out = {"features": tap.pop().float().contiguous(), "logits": logits.float().contiguous()}
            if "labels" in batch:
                out["labels"] = batch["labels"]
            out = accelerator.gather_for_metrics(out)
            for key, value in out.items():
                parts[key].append(value.cpu())
    finally:
        tap.remove()
        model.train(was_training)
    return {key: torch.cat(values) for key, values in parts.items() if values}


class LabelFreeSelection:
    """Computes the validators' scores at each evaluation; the hook :class:`~hf_transfer.trainer.TransferTrainer`
    calls as ``extra_eval_metrics(trainer)``.

    Args:
        target: tokenised unlabelled target rows (already capped by the caller).
        source: tokenised held-out labelled source rows, or ``None`` (then ``iwv`` and ``dev`` are skipped).
        feature_module: the module whose input is the feature (the classifier head's input).
        validators: which of :data:`VALIDATORS` to compute.
        snd_temperature, density_C, seed: passed to :func:`compute_scores`.
    """

    def __init__(
        self,
        *,
        target,
        source=None,
        feature_module: nn.Module,
        validators: Sequence[str] = VALIDATORS,
        snd_temperature: float = 0.05,
        density_C: float | None = None,
        seed: int = 0,
    ):
        unknown = [v for v in validators if v not in VALIDATORS]
        if unknown:
            raise ValueError(f"unknown validators {unknown}; choose from {list(VALIDATORS)}")
        self.target = target
        self.source = source
        self.feature_module = feature_module
        self.validators = tuple(validators)
        self.snd_temperature = snd_temperature
        self.density_C = density_C
        self.seed = seed

    @property
    def active_validators(self) -> tuple[str, ...]:
        """The validators that can be computed with the data given (IWV/DEV need the source slice)."""
        usable = len(self.target) >= 3
        return tuple(
            v for v in self.validators
            if usable and (v not in SOURCE_VALIDATORS or (self.source is not None and len(self.source) >= 4))
        )

    def __call__(self, trainer) -> dict[str, float]:
        validators = self.active_validators
        if not validators:
            return {}
        need_source = any(v in SOURCE_VALIDATORS for v in validators)
        target = collect_outputs(trainer, self.target, self.feature_module)
        source = collect_outputs(trainer, self.source, self.feature_module) if need_source else {}
        scores: dict[str, float] = {}
        if trainer.is_world_process_zero():  # sklearn and the n x n SND matrix once, not on every process
            scores = compute_scores(
                target_logits=target["logits"].numpy(),
                target_features=target["features"].numpy(),
                source_logits=source["logits"].numpy() if source else None,
                source_labels=source["labels"].numpy() if source else None,
                source_features=source["features"].numpy() if source else None,
                validators=validators,
                snd_temperature=self.snd_temperature,
                density_C=self.density_C,
                seed=self.seed,
            )
        if trainer.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            scores = broadcast_object_list([scores], from_process=0)[0]
        return scores


def selection_summary(
    log_history: Sequence[Mapping[str, Any]],
    validators: Sequence[str] = VALIDATORS,
    *,
    accuracy_key: str = TARGET_ACCURACY_KEY,
) -> dict[str, float | int]:
    """Which step each validator picks, read from a Trainer's ``log_history``, and the target accuracy there.

    Returns ``selection/<validator>/step`` (and ``/score``) for every validator that was logged, and, when
    ``accuracy_key`` was logged at the evaluations, ``selection/<validator>/target_accuracy`` and
    ``selection/oracle/{step,target_accuracy}`` (the best target accuracy over the evaluations: what a selector
    with target labels would reach). A later entry for the same step (a resumed run re-evaluating) wins.
    """
    scores: dict[str, dict[int, float]] = {v: {} for v in validators}
    accuracy: dict[int, float] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        for name in validators:
            value = entry.get(f"eval_{name}")
            if value is not None:
                scores[name][int(step)] = float(value)
        if entry.get(accuracy_key) is not None:
            accuracy[int(step)] = float(entry[accuracy_key])
    picks = select_checkpoint({name: by_step for name, by_step in scores.items() if by_step})
    out: dict[str, float | int] = {}
    for name in validators:
        if name not in picks:
            continue
        step = picks[name]
        out[f"selection/{name}/step"] = step
        out[f"selection/{name}/score"] = scores[name][step]
        if step in accuracy:
            out[f"selection/{name}/target_accuracy"] = accuracy[step]
    finite = {s: a for s, a in accuracy.items() if math.isfinite(a)}
    if finite and picks:
        best = max(sorted(finite), key=lambda s: finite[s])  # ties: the earliest step
        out["selection/oracle/step"] = best
        out["selection/oracle/target_accuracy"] = finite[best]
    return out


def build_selection(recipe, model: nn.Module, data, *, feature_module: nn.Module | None = None):
    """The :class:`LabelFreeSelection` a recipe asks for, or ``None``: only when the run has target data, evaluates
    periodically and lists validators. Raises a :class:`~hf_transfer.errors.RecipeError` when
    ``metric_for_best_model`` names a validator that will not be computed, or asks to minimise one."""
    from transformers.trainer_utils import IntervalStrategy

    from .backbones import find_feature_module
    from .errors import RecipeError

    args, validators = recipe.training, list(recipe.methods.selection_validators)
    periodic = args.eval_strategy != IntervalStrategy.NO
    chosen = validator_metric(args.metric_for_best_model or "")
    if chosen is not None:
        missing = (
            "target_data is not set" if data.target is None
            else "eval_strategy is 'no'; set it to steps or epoch" if not periodic
            else f"it is not in selection_validators {validators}" if chosen not in validators
            else "it needs the held-out source slice; set source_eval_fraction > 0"
            if chosen in SOURCE_VALIDATORS and data.source_eval is None
            else None
        )
        if missing:
            raise RecipeError(f"metric_for_best_model: {chosen!r} is a label-free validator, but {missing}")
        if not args.greater_is_better:
            raise RecipeError(
                f"greater_is_better: every label-free validator is higher-is-better; set it to true for {chosen!r}"
            )
    if data.target is None or not periodic or not validators:
        return None
    if feature_module is None:
        _, feature_module = find_feature_module(model, data.labels.num_labels, recipe.model.feature_module)
    # A seeded sample of a target table; the first rows of a streamed one (never the whole stream).
    target = bounded_rows(data.target, recipe.methods.selection_max_target_samples, seed=args.seed,
                          field="target_data", spec=recipe.data.target_data or "")
    return LabelFreeSelection(
        target=target, source=data.source_eval, feature_module=feature_module, validators=validators, seed=args.seed
    )
