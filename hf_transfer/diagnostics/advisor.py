"""Which transfer method to use, from measurements: the domain gap, the transferability scores, the data sizes and
whether target labels exist. The answer is a method registered in :mod:`hf_transfer.methods`, recipe settings,
and the reasons, each naming the measurement it rests on.

The rules, in order (the first that applies decides the method; later ones add settings):

1. **Enough target labels** (``n_target_labeled >= many_target_labels``, default 1,000, or the learning curve's
   power law says the labels at hand reach within ``plateau_margin`` of its ceiling): train on the target itself
   (``finetune`` with the target as ``source_data``); a source adds little when the target alone is near plateau.
2. **No measurable gap** (MMD permutation test ``p >= alpha`` or proxy A-distance below ``small_gap_pad``):
   ``finetune`` on the source; adaptation has nothing to align, and its extra loss only adds variance.
3. **A gap with overlapping supports** (PAD below ``large_gap_pad``, the domain classifier not near perfect):
   ``instance_weighting`` — the shift looks like covariate shift: re-weighting source rows corrects it without
   changing the representation, and it is cheap and stable (one classifier fit).
4. **A large gap** (PAD at or above ``large_gap_pad``): feature alignment. With few source rows (below
   ``small_source``) ``coral`` (no extra parameters, one covariance per batch); otherwise ``dann`` (the adversarial
   alignment that tolerates the largest shifts, with ``trade_off`` 0.1, the value that kept full fine-tuning of
   MiniLM stable in docs/domain_adaptation.md).

Settings added whatever the method: the best-scoring candidate model (by LogME) when several were scored; LoRA
(``peft_type: LORA``, r 8) when labelled rows are few (below ``lora_below``), since few rows cannot move all the
weights of an encoder without overfitting; ``selection_validators`` with ``metric_for_best_model: dev`` when a
gap exists and the target has no labels to pick a checkpoint with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Measurements:
    """What the advisor reads. Leave unknown values as ``None``; the rules that need them are skipped (and the
    table says so)."""

    n_source: int
    n_target_unlabeled: int = 0
    n_target_labeled: int = 0
    mmd2: float | None = None
    mmd_p_value: float | None = None
    pad: float | None = None
    domain_auc: float | None = None
    model_scores: dict[str, float] = field(default_factory=dict)  # model -> LogME on the target
    curve_ceiling: float | None = None  # the power law's a
    curve_accuracy_at_available: float | None = None  # the power law at n_target_labeled


@dataclass
class Thresholds:
    """The numbers the rules compare against (documented in the module docstring)."""

    alpha: float = 0.05
    small_gap_pad: float = 0.2
    large_gap_pad: float = 1.0
    many_target_labels: int = 1000
    plateau_margin: float = 0.01
    small_source: int = 1000
    lora_below: int = 2000


@dataclass
class Advice:
    """``method``: the recommended registered method; ``settings``: recipe fields to set; ``reasons``: one row per
    rule, ``(rule, measurement, verdict)``; ``table()``: the reasons as a markdown table."""

    method: str
    settings: dict[str, Any]
    reasons: list[tuple[str, str, str]]

    def table(self) -> str:
        lines = ["| rule | measured | verdict |", "|---|---|---|"]
        lines += [f"| {r} | {m} | {v} |" for r, m, v in self.reasons]
        settings = ", ".join(f"`{k}: {v}`" for k, v in self.settings.items())
        lines.append(f"| **recommendation** | method `{self.method}` | {settings or 'defaults'} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "not measured" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def advise(m: Measurements, thresholds: Thresholds | None = None) -> Advice:
    """Recommend a method and settings from ``m``; see the module docstring for the rules."""
    t = thresholds or Thresholds()
    reasons: list[tuple[str, str, str]] = []
    settings: dict[str, Any] = {}
    method: str | None = None

    # 1. target labels
    near_plateau = (
        m.curve_ceiling is not None and m.curve_accuracy_at_available is not None
        and m.curve_ceiling - m.curve_accuracy_at_available <= t.plateau_margin
    )
    if m.n_target_labeled >= t.many_target_labels or (m.n_target_labeled > 0 and near_plateau):
        method = "finetune"
        settings["source_data"] = "<the labelled target data>"
        why = (f"{m.n_target_labeled} labelled target rows >= {t.many_target_labels}"
               if m.n_target_labeled >= t.many_target_labels else
               f"learning curve within {t.plateau_margin} of its ceiling {_fmt(m.curve_ceiling)}")
        reasons.append(("target labels", why, "train on the target itself; the source adds little"))
    else:
        reasons.append(("target labels", f"{m.n_target_labeled} labelled target rows",
                        "too few to train on alone: transfer from the source"))

    # 2-4. the gap
    gap_known = m.mmd_p_value is not None or m.pad is not None
    not_significant = m.mmd_p_value is not None and m.mmd_p_value >= t.alpha
    no_gap = not_significant or (m.pad is not None and m.pad < t.small_gap_pad)
    measured = f"MMD^2 {_fmt(m.mmd2)} (p {_fmt(m.mmd_p_value)}), proxy A-distance {_fmt(m.pad)}"
    if method is None:
        if not gap_known:
            method = "finetune"
            reasons.append(("domain gap", "not measured", "fine-tune on the source; measure the gap to do better"))
        elif no_gap:
            method = "finetune"
            reasons.append(("domain gap", measured, f"no significant gap (p >= {t.alpha} or PAD < "
                            f"{t.small_gap_pad}): plain fine-tuning; alignment would only add variance"))
        elif m.n_target_unlabeled == 0:
            method = "finetune"
            reasons.append(("domain gap", measured, "a gap, but no unlabelled target rows to adapt with"))
        elif m.pad is not None and m.pad >= t.large_gap_pad:
            if m.n_source < t.small_source:
                method = "coral"
                reasons.append(("domain gap", measured, f"large gap (PAD >= {t.large_gap_pad}) and few source rows "
                                f"({m.n_source} < {t.small_source}): CORAL, no extra parameters to fit"))
            else:
                method = "dann"
                settings["dann.trade_off"] = 0.1
                reasons.append(("domain gap", measured, f"large gap (PAD >= {t.large_gap_pad}): adversarial feature "
                                "alignment (DANN)"))
        else:
            method = "instance_weighting"
            settings["instance_weighting.estimator"] = "density_ratio"
            reasons.append(("domain gap", measured, f"a significant gap with overlapping domains (PAD < "
                            f"{t.large_gap_pad}): re-weight source rows (covariate shift)"))
    else:
        reasons.append(("domain gap", measured if gap_known else "not measured", "not needed: training on target"))
    if method != "finetune" and m.n_target_labeled == 0 and gap_known and not no_gap:
        settings["selection_validators"] = ["iwv", "dev", "snd", "entropy"]
        settings["metric_for_best_model"] = "dev"
        reasons.append(("checkpoint choice", "no target labels", "pick checkpoints with the label-free DEV validator"))

    # model choice
    if m.model_scores:
        best = max(m.model_scores, key=m.model_scores.get)
        settings["model_name_or_path"] = best
        listing = ", ".join(f"{k} {v:.3f}" for k, v in sorted(m.model_scores.items(), key=lambda kv: -kv[1]))
        reasons.append(("model", f"LogME on the target: {listing}", f"use {best}, the highest LogME"))

    # PEFT
    labelled = m.n_target_labeled if settings.get("source_data") else m.n_source
    if labelled < t.lora_below:
        settings["peft.peft_type"] = "LORA"
        settings["peft.r"] = 8
        reasons.append(("size", f"{labelled} labelled training rows < {t.lora_below}",
                        "LoRA (r 8): few rows cannot move every weight without overfitting"))
    else:
        reasons.append(("size", f"{labelled} labelled training rows", "full fine-tuning"))
    return Advice(method, settings, reasons)
