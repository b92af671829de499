"""Few-shot evaluation: adapt on K labelled rows per class, score a query set, repeat over seeded episodes, report
the mean accuracy and its 95% confidence interval.

The interval is the Student-t one for a mean of ``n`` episode accuracies ``a_1..a_n``::

    mean +- t_{0.975, n-1} * s / sqrt(n),    s = sqrt(sum_i (a_i - mean)^2 / (n - 1))

(the few-shot literature often uses ``1.96`` in place of ``t``; with 20 episodes ``t = 2.093``, a slightly wider and
correct interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .episodes import EpisodeSampler
from .learner import EpisodicLearner

MIN_EPISODES = 2


def mean_confidence_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, half_width)`` of the Student-t confidence interval of the mean of ``values``."""
    from scipy.stats import t

    a = np.asarray(values, dtype=np.float64)
    if a.size < MIN_EPISODES:
        raise ValueError(f"a confidence interval needs at least {MIN_EPISODES} values, got {a.size}")
    mean = float(a.mean())
    sem = float(a.std(ddof=1)) / math.sqrt(a.size)
    return mean, float(t.ppf(0.5 + confidence / 2, a.size - 1)) * sem


@dataclass
class FewShotResult:
    """Accuracy over episodes: ``mean``, ``ci95`` (half width) and every episode's ``accuracies``."""

    shots: int
    adapt: str
    accuracies: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return mean_confidence_interval(self.accuracies)[0]

    @property
    def ci95(self) -> float:
        return mean_confidence_interval(self.accuracies)[1]

    def to_dict(self) -> dict[str, float | int | str | list[float]]:
        return {"shots": self.shots, "adapt": self.adapt, "episodes": len(self.accuracies), "accuracy": self.mean,
                "ci95": self.ci95, "accuracies": list(self.accuracies)}


class RowPool:
    """Tokenised rows of one table, padded into batches on demand, with their embeddings cached (per learner) for
    the methods that do not change the encoder between episodes. The cache assumes the learner's weights do not
    change while the pool is in use (it is an evaluation helper)."""

    def __init__(self, rows: list[dict], tokenizer, device: torch.device | str = "cpu"):
        self.rows, self.tokenizer, self.device = rows, tokenizer, device
        self.cache: dict[tuple[int, int], torch.Tensor] = {}

    def batch(self, index: Sequence[int]) -> dict[str, torch.Tensor]:
        keep = ("input_ids", "attention_mask", "token_type_ids")
        features = [{k: self.rows[int(i)][k] for k in keep if k in self.rows[int(i)]} for i in index]
        padded = self.tokenizer.pad(features, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in padded.items()}

    @torch.no_grad()
    def embed(self, learner: EpisodicLearner, index: Sequence[int], batch_size: int = 64) -> torch.Tensor:
        key = id(learner)
        missing = [int(i) for i in dict.fromkeys(int(i) for i in index) if (key, int(i)) not in self.cache]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start: start + batch_size]
            for i, e in zip(chunk, learner.embedder(**self.batch(chunk))):
                self.cache[key, i] = e
        return torch.stack([self.cache[key, int(i)] for i in index])


def episode_seed(seed: int, index: int) -> int:
    """The seed of episode ``index``'s own random draws (contrastive pairs, dropout), apart for every episode."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def evaluate_few_shot(
    learner: EpisodicLearner,
    support: RowPool,
    support_labels: Sequence[int],
    *,
    shots: int,
    adapt: str,
    episodes: int = 20,
    n_query: int = 16,
    n_way: int | None = None,
    query: RowPool | None = None,
    query_labels: Sequence[int] | None = None,
    seed: int = 0,
    unlabelled: RowPool | None = None,
) -> FewShotResult:
    """Few-shot accuracy of ``learner`` on one task over ``episodes`` seeded episodes.

    Support rows come from ``support``; query rows from ``query`` when given (a held-out test table), else from
    ``support`` disjoint from each episode's shots. Every method sees the same episodes for the same seed.
    ``unlabelled``: rows of the task without their labels, for ``contrastive``'s self-training (the learner's
    ``self_training_rounds``).
    """
    if episodes < MIN_EPISODES:
        raise ValueError(f"episodes: at least {MIN_EPISODES} for an interval, got {episodes}")
    sampler = EpisodeSampler([list(support_labels)], n_way=n_way, k_shot=shots, n_query=n_query, seed=seed,
                             query_labels=None if query is None else [list(query_labels)])
    query = query or support
    cached = adapt in ("protonet", "hypernet", "probe") or (adapt == "maml" and learner.config.inner_params == "head")
    was_training = learner.training
    learner.eval()
    result = FewShotResult(shots, adapt)
    try:
        for ep in sampler.take(episodes):
            s_labels = torch.as_tensor(ep.support_labels, device=support.device)
            if cached:
                # The encoder does not change: embed each row once, and hand the learner placeholder batches
                # that name which cached embeddings to use.
                s_emb, q_emb = support.embed(learner, ep.support), query.embed(learner, ep.query)
                lookup = {"support": s_emb, "query": q_emb}
                logits = learner.adapt_and_predict({"which": "support"}, s_labels, {"which": "query"}, ep.n_way,
                                                   adapt, embed=lambda b, lookup=lookup: lookup[b["which"]])
            else:
                extra = {}
                if adapt == "contrastive":
                    extra["seed"] = episode_seed(seed, ep.index)
                    if unlabelled is not None:
                        extra["unlabelled"] = unlabelled.batch(range(len(unlabelled.rows)))
                logits = learner.adapt_and_predict(support.batch(ep.support), s_labels, query.batch(ep.query),
                                                   ep.n_way, adapt, **extra)
            preds = logits.argmax(-1).cpu().numpy()
            result.accuracies.append(float((preds == ep.query_labels).mean()))
    finally:
        learner.train(was_training)
    return result
