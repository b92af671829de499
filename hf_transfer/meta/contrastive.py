"""Contrastive-pair adaptation (the idea of SetFit, Tunstall et al. 2022): fine-tune a sentence encoder on pairs made
from the few labelled rows, then fit a logistic-regression head on the adapted embeddings.

From ``n`` labelled rows:

* **pairs** (:func:`contrastive_pairs`): every unordered pair of two different rows is a *positive* (same class,
  target similarity 1) or a *negative* (target 0). Both lists are shuffled with the seed and ``iterations * n`` of each
  are taken, cycling through a list when it is shorter (SetFit's ``num_iterations``), so positives and negatives are
  balanced whatever the class sizes. A row is never paired with itself (its cosine is 1 whatever the weights: a pair
  that teaches nothing);
* **encoder** (:func:`contrastive_train`): a copy of the encoder (every weight, or a LoRA adapter) trains for one
  pass over the pairs with the cosine-similarity loss ``(cos(e_a, e_b) - target)^2`` averaged over a batch
  (sentence-transformers' ``CosineSimilarityLoss``, SetFit's default), AdamW, linear warm-up over the first 10% of
  the steps then linear decay, gradients clipped at norm 1. Pairs share rows, so a step embeds each distinct row of
  its batch once (at most ``n`` rows, not ``2 * batch_size``);
* **head** (:func:`fit_head`): scikit-learn's ``LogisticRegression`` on the adapted embeddings, L2-normalised by
  default (the cosine loss trains directions only; SetFit's MiniLM ends with a ``Normalize`` module too);
* **self-training** (optional, :func:`self_train`): with unlabelled rows of the task, the head labels them, the rows
  it is most confident about in each class join the labelled ones and the head is fitted again.

:class:`ContrastiveClassifier` holds the result (encoder, head, whether embeddings are normalised) and predicts;
:mod:`~hf_transfer.meta.setfit_export` saves it as a SetFit / sentence-transformers folder.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .protonet import Embedder

CONTRASTIVE_PARAMS = ("all", "lora")
WARMUP_FRACTION = 0.1  # SetFit's warmup_proportion
_SALT = 0xC0517  # keeps pair streams apart from episode streams that share the seed

Batch = dict[str, torch.Tensor]


def contrastive_pairs(labels: Sequence[int], *, iterations: int, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced positive / negative pairs of row indices (see the module docstring).

    Returns:
        ``(first, second, target)``: ``(2 * iterations * n,)`` row indices into ``labels`` and float targets (1 for a
        positive pair, 0 for a negative), shuffled together; the same for the same ``seed``.

    Raises:
        ValueError: when ``iterations < 1``, or there is no positive pair (every class has a single row) or no
            negative pair (a single class).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if iterations < 1:
        raise ValueError(f"contrastive_iterations: must be >= 1, got {iterations}")
    first, second = np.triu_indices(len(labels), k=1)  # i < j: each unordered pair once, never (i, i)
    same = labels[first] == labels[second]
    rng = np.random.default_rng([int(seed), _SALT])
    positives = rng.permutation(np.flatnonzero(same))
    negatives = rng.permutation(np.flatnonzero(~same))
    if positives.size == 0:
        raise ValueError("contrastive pairs: no class has two labelled rows, so there is no positive pair; give at "
                         "least 2 rows of some class (shots >= 2)")
    if negatives.size == 0:
        raise ValueError("contrastive pairs: every labelled row has the same class, so there is no negative pair; "
                         "give rows of at least 2 classes")
    count = iterations * len(labels)
    chosen = np.concatenate([positives[np.arange(count) % positives.size],
                             negatives[np.arange(count) % negatives.size]])
    target = np.concatenate([np.ones(count), np.zeros(count)])
    order = rng.permutation(chosen.size)
    return first[chosen[order]], second[chosen[order]], target[order].astype(np.float32)


def select_rows(batch: Batch, rows: Sequence[int] | torch.Tensor) -> Batch:
    """The ``rows`` of a padded batch, with the padding columns no selected row needs cut off."""
    index = torch.as_tensor(rows, dtype=torch.long, device=batch["input_ids"].device)
    out = {k: v[index] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if "attention_mask" in out:
        width = max(int(out["attention_mask"].sum(1).max()), 1)
        out = {k: v[:, :width] if v.dim() == 2 else v for k, v in out.items()}
    return out


@torch.no_grad()
def embed_rows(embedder: Embedder, batch: Batch, *, chunk: int = 64) -> torch.Tensor:
    """``(B, d)`` embeddings of a padded batch, ``chunk`` rows at a time (a whole test table in one forward pass
    would need its attention maps all at once)."""
    size = batch["input_ids"].shape[0]
    parts = [embedder(**select_rows(batch, range(start, min(start + chunk, size))))
             for start in range(0, size, chunk)]
    return torch.cat(parts) if parts else torch.empty(0)


def trainable_copy(embedder: Embedder, params: str, *, lora_r: int = 8) -> Embedder:
    """A copy of ``embedder`` whose weights to adapt require gradients: ``all`` every encoder weight; ``lora`` a LoRA
    adapter (the encoder's own when it has one, else a new one of rank ``lora_r`` with PEFT's default target modules
    for the architecture)."""
    if params not in CONTRASTIVE_PARAMS:
        raise ValueError(f"contrastive_params: unknown {params!r}; choose one of {', '.join(CONTRASTIVE_PARAMS)}")
    adapted = copy.deepcopy(embedder)
    if params == "all":
        adapted.requires_grad_(True)
        return adapted
    if not hasattr(adapted.encoder, "peft_config"):
        from peft import LoraConfig, get_peft_model

        adapted.encoder = get_peft_model(adapted.encoder, LoraConfig(r=lora_r, lora_alpha=2 * lora_r,
                                                                     lora_dropout=0.0))
    else:  # the encoder's own adapter trains; its base stays frozen
        for name, p in adapted.encoder.named_parameters():
            p.requires_grad_("lora_" in name)
    return adapted


def contrastive_train(embedder: Embedder, support: Batch, labels: Sequence[int] | torch.Tensor, *,
                      iterations: int = 5, batch_size: int = 16, lr: float = 2e-5, epochs: int = 1,
                      params: str = "all", lora_r: int = 8, seed: int = 0) -> tuple[Embedder, list[float]]:
    """Fine-tune a copy of ``embedder`` on the contrastive pairs of the labelled rows of ``support`` (see the module
    docstring); ``embedder`` itself is unchanged. Returns the adapted copy (in eval mode) and the loss of every step.
    Dropout draws from a torch generator seeded with ``seed``; the global RNG is left as it was."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    first, second, target = contrastive_pairs(labels, iterations=iterations, seed=seed)
    adapted = trainable_copy(embedder, params, lora_r=lora_r)
    trainable = [p for p in adapted.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    per_epoch = math.ceil(len(target) / batch_size)
    total = per_epoch * epochs
    warmup = math.ceil(WARMUP_FRACTION * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / (warmup + 1) if step < warmup else max(total - step, 0) / max(
            total - warmup, 1))
    device = support["input_ids"].device
    losses = []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        adapted.train()
        for epoch in range(epochs):
            # Each epoch visits the pairs in a new seeded order (one pass: the order contrastive_pairs gave).
            order = np.arange(len(target)) if epoch == 0 else np.random.default_rng([seed, epoch]).permutation(
                len(target))
            for start in range(0, len(order), batch_size):
                idx = order[start: start + batch_size]
                rows, inverse = np.unique(np.concatenate([first[idx], second[idx]]), return_inverse=True)
                emb = adapted(**select_rows(support, rows))
                a, b = inverse[: len(idx)], inverse[len(idx):]
                cos = F.cosine_similarity(emb[a], emb[b], dim=-1)
                loss = F.mse_loss(cos, torch.as_tensor(target[idx], device=cos.device, dtype=cos.dtype))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
    adapted.eval()
    adapted.requires_grad_(False)
    return adapted, losses


def normalized(embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
    """Embeddings as float64 numpy rows of unit L2 norm (what the head of a normalising classifier reads)."""
    return _features(embeddings, True)


def _features(embeddings: torch.Tensor | np.ndarray, normalize: bool) -> np.ndarray:
    x = embeddings.detach().float().cpu().numpy() if isinstance(embeddings, torch.Tensor) else np.asarray(
        embeddings, dtype=np.float32)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x.astype(np.float64)


def fit_head(embeddings: torch.Tensor | np.ndarray, labels: Sequence[int], *, normalize: bool = True):
    """scikit-learn's ``LogisticRegression`` (SetFit's default head: L2 penalty, ``C = 1``, lbfgs) on the embeddings,
    L2-normalised first when ``normalize``."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000).fit(_features(embeddings, normalize), np.asarray(labels))


def self_train(head, labelled: np.ndarray, labels: Sequence[int], unlabelled: np.ndarray, *, fraction: float = 0.5,
               rounds: int = 1):
    """Fit the head again on the labelled features plus pseudo-labelled rows, ``rounds`` times: of the unlabelled
    rows the head assigns to each class, the ``fraction`` it is most confident about (highest probability; at least
    one row) join with that class as their label. Chosen per class, so the pseudo-labels keep the head's class balance
    instead of drifting to the class it favours; ranked, not thresholded, because a logistic regression on unit-norm
    features gives compressed probabilities (with ``C = 1`` rarely above 0.9). Features are already as the head
    reads them. Returns the last head."""
    from sklearn.linear_model import LogisticRegression

    if not 0 < fraction <= 1:
        raise ValueError(f"self_training_fraction: must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    for _ in range(rounds):
        proba = head.predict_proba(unlabelled)
        predicted = proba.argmax(1)
        chosen = []
        for c in np.unique(predicted):
            rows = np.flatnonzero(predicted == c)
            keep = max(1, int(round(fraction * rows.size)))
            chosen.append(rows[np.argsort(-proba[rows, c], kind="stable")[:keep]])
        chosen = np.concatenate(chosen)
        x = np.concatenate([labelled, unlabelled[chosen]])
        y = np.concatenate([labels, head.classes_[predicted[chosen]]])
        head = LogisticRegression(max_iter=1000).fit(x, y)
    return head


@dataclass
class ContrastiveClassifier:
    """An adapted encoder and its logistic-regression head: ``logits`` / ``predict`` on padded batches.

    Attributes:
        embedder: the adapted encoder (eval mode).
        head: the fitted ``sklearn.linear_model.LogisticRegression`` (classes ``0..N-1``).
        normalize: whether embeddings are L2-normalised before the head.
        losses: the contrastive loss of every training step.
    """

    embedder: Embedder
    head: object
    normalize: bool = True
    losses: list[float] | None = None

    def features(self, batch: Batch) -> np.ndarray:
        return _features(embed_rows(self.embedder, batch), self.normalize)

    def logits(self, batch: Batch) -> torch.Tensor:
        """``(B, N)`` log-probabilities of the head (their argmax is the head's prediction)."""
        proba = self.head.predict_proba(self.features(batch))
        full = np.full((proba.shape[0], int(self.head.classes_.max()) + 1), 0.0)
        full[:, self.head.classes_] = proba
        with np.errstate(divide="ignore"):
            return torch.as_tensor(np.log(full), dtype=torch.float32)

    def predict(self, batch: Batch) -> np.ndarray:
        return self.head.predict(self.features(batch))


def contrastive_adapt(embedder: Embedder, support: Batch, labels: Sequence[int] | torch.Tensor, *,
                      iterations: int = 5, batch_size: int = 16, lr: float = 2e-5, epochs: int = 1,
                      params: str = "all", lora_r: int = 8, normalize: bool = True, seed: int = 0,
                      unlabelled: Batch | None = None, self_training_rounds: int = 0,
                      self_training_fraction: float = 0.5) -> ContrastiveClassifier:
    """Contrastive fine-tuning of a copy of ``embedder`` on the labelled ``support`` rows, then the head; with
    ``unlabelled`` rows and ``self_training_rounds > 0``, self-training of the head (see the module docstring)."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    adapted, losses = contrastive_train(embedder, support, labels, iterations=iterations, batch_size=batch_size,
                                        lr=lr, epochs=epochs, params=params, lora_r=lora_r, seed=seed)
    labelled = _features(embed_rows(adapted, support), normalize)
    head = fit_head(labelled, labels, normalize=False)
    if unlabelled is not None and self_training_rounds > 0:
        head = self_train(head, labelled, labels, _features(embed_rows(adapted, unlabelled), normalize),
                          fraction=self_training_fraction, rounds=self_training_rounds)
    return ContrastiveClassifier(adapted, head, normalize, losses)


def contrastive_meta_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The meta-training loss of ``meta_method: contrastive``: the cosine-similarity loss over every pair of two
    different rows of an episode, positives and negatives weighted equally (the mean of the two means), so one
    forward pass of the episode's rows uses all its pairs."""
    cos = F.cosine_similarity(embeddings.unsqueeze(1), embeddings.unsqueeze(0), dim=-1)
    same = labels.view(-1, 1) == labels.view(1, -1)
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive, negative = same & off_diagonal, ~same
    if not positive.any() or not negative.any():
        raise ValueError("contrastive meta-training: an episode needs two rows of one class and two classes")
    return 0.5 * ((cos[positive] - 1).pow(2).mean() + cos[negative].pow(2).mean())
