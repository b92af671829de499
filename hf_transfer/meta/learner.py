"""One object that meta-trains on an episode and adapts to one: prototypical networks, first-order MAML, Reptile,
the hypernetwork head, contrastive pairs (:mod:`~hf_transfer.meta.contrastive`), and plain fine-tuning (the few-shot
baseline), all on the same :class:`Embedder`.

Batches are dicts of padded tensors (``input_ids``, ``attention_mask`` ...); labels are episode labels ``0..N-1``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .hypernet import HyperHead
from .maml import (
    episode_head,
    fomaml_gradients,
    head_logits,
    head_loss,
    reptile_gradients,
    restored,
    set_gradients,
    sgd_steps,
)
from .protonet import Embedder, default_temperature, protonet_loss, prototype_logits

META_METHODS = ("protonet", "fomaml", "reptile", "hypernet", "contrastive")
ADAPT_METHODS = ("protonet", "maml", "hypernet", "finetune", "probe", "contrastive")
#: how a model meta-trained with each method adapts to a new task by default
DEFAULT_ADAPT = {"protonet": "protonet", "fomaml": "maml", "reptile": "maml", "hypernet": "hypernet",
                 "contrastive": "contrastive"}

Batch = dict[str, torch.Tensor]


@dataclass
class LearnerConfig:
    """What an :class:`EpisodicLearner` needs: the recipe's meta fields (see
    :class:`hf_transfer.meta.recipe.MetaArguments`)."""

    meta_method: str = "protonet"
    distance: str = "euclidean"
    temperature: float | None = None
    inner_steps: int = 5
    inner_lr: float = 1e-2
    inner_params: str = "all"
    head_init: str = "prototypes"
    finetune_steps: int = 20
    finetune_lr: float = 3e-5
    finetune_head_lr: float = 1e-2
    # adapt: contrastive (hf_transfer.meta.contrastive)
    contrastive_iterations: int = 5
    contrastive_batch_size: int = 16
    contrastive_lr: float | None = None
    contrastive_epochs: int = 1
    contrastive_params: str = "all"
    contrastive_lora_r: int = 8
    contrastive_normalize: bool = True
    self_training_rounds: int = 0
    self_training_fraction: float = 0.5

    @property
    def tau(self) -> float:
        return self.temperature if self.temperature is not None else default_temperature(self.distance)

    @property
    def contrastive_learning_rate(self) -> float:
        """``contrastive_lr``, by default 2e-5 for every weight (SetFit's body rate) and 1e-3 for a LoRA adapter."""
        if self.contrastive_lr is not None:
            return self.contrastive_lr
        return 1e-3 if self.contrastive_params == "lora" else 2e-5


class EpisodicLearner(nn.Module):
    """An embedder (and, for ``hypernet``, its head) with the episode-level training and adaptation rules.

    Args:
        embedder: the encoder as a ``batch -> (B, d)`` function.
        config: the method and its settings.
        hyperhead: the hypernetwork head (``meta_method: hypernet``; built when ``None``).
    """

    def __init__(self, embedder: Embedder, config: LearnerConfig, *, hyperhead: HyperHead | None = None):
        super().__init__()
        self.embedder = embedder
        self.config = config
        if config.meta_method == "hypernet" and hyperhead is None:
            hidden = embedder.encoder.config.hidden_size
            hyperhead = HyperHead(hidden_size=hidden).to(next(embedder.parameters()).device)
        self.hyperhead = hyperhead

    def encoder_parameters(self) -> list[torch.Tensor]:
        """What the inner loop adapts and the outer loop trains in the encoder: every trainable parameter (with a
        PEFT encoder, its LoRA parameters only)."""
        return [p for p in self.embedder.parameters() if p.requires_grad]

    def meta_parameters(self) -> list[torch.Tensor]:
        params = self.encoder_parameters()
        if self.hyperhead is not None:
            params += [p for p in self.hyperhead.parameters() if p.requires_grad]
        return params

    # ---- meta-training ------------------------------------------------------------------------------------------

    def meta_step(self, support: Batch, support_labels: torch.Tensor, query: Batch, query_labels: torch.Tensor,
                  n_way: int) -> float:
        """Compute one episode's meta-gradient into ``.grad`` of :meth:`meta_parameters`; return the episode loss
        (query loss; the last support loss for Reptile). The caller steps the optimiser."""
        c = self.config
        method = c.meta_method
        if method == "contrastive":
            from .contrastive import contrastive_meta_loss

            s, q = self.embedder(**support), self.embedder(**query)
            loss = contrastive_meta_loss(torch.cat([s, q]), torch.cat([support_labels, query_labels]))
            loss.backward()
            return float(loss.detach())
        if method in ("protonet", "hypernet"):
            s, q = self.embedder(**support), self.embedder(**query)
            if method == "protonet":
                loss, _ = protonet_loss(s, support_labels, q, query_labels, n_way=n_way, distance=c.distance,
                                        temperature=c.tau)
            else:
                loss, _ = self.hyperhead.loss(s, support_labels, q, query_labels, n_way)
            loss.backward()
            return float(loss.detach())
        params = self.encoder_parameters()
        if method == "fomaml" and c.inner_params == "head":
            # ANIL-style: the encoder is fixed in the inner loop, so support embeddings are computed once.
            with torch.no_grad():
                s = self.embedder(**support)
            head = episode_head(s, support_labels, n_way, c.head_init)
            sgd_steps(head, lambda: head_loss(s, support_labels, head), steps=c.inner_steps, lr=c.inner_lr)
            loss = head_loss(self.embedder(**query), query_labels, tuple(h.detach() for h in head))
            loss.backward()
            return float(loss.detach())
        with torch.no_grad():
            head = episode_head(self.embedder(**support), support_labels, n_way, c.head_init)

        def support_loss() -> torch.Tensor:
            return head_loss(self.embedder(**support), support_labels, head)

        def query_loss() -> torch.Tensor:
            return head_loss(self.embedder(**query), query_labels, head)

        if method == "fomaml":
            grads, loss = fomaml_gradients(params, support_loss, query_loss, steps=c.inner_steps, lr=c.inner_lr,
                                           inner_extra=head)
        elif method == "reptile":
            grads, loss = reptile_gradients(params, support_loss, steps=c.inner_steps, lr=c.inner_lr,
                                            inner_extra=head)
        else:
            raise ValueError(f"meta_method: unknown {method!r}; choose one of {', '.join(META_METHODS)}")
        set_gradients(params, grads)
        return loss

    # ---- adaptation ---------------------------------------------------------------------------------------------

    def adapt_and_predict(self, support: Batch, support_labels: torch.Tensor, query: Batch, n_way: int,
                          adapt: str, *, embed: Callable[[Batch], torch.Tensor] | None = None, seed: int = 0,
                          unlabelled: Batch | None = None) -> torch.Tensor:
        """Adapt to an episode's support set and return ``(Q, N)`` query logits; the model is unchanged after.

        ``embed`` (default: the embedder under ``no_grad``) lets a caller reuse cached embeddings for the methods
        that do not change the encoder (``protonet``, ``hypernet``, ``maml`` with ``inner_params: head``).
        ``seed`` (the episode's) seeds ``contrastive``'s pairs and dropout; ``unlabelled`` rows of the task feed its
        self-training (``self_training_rounds``).
        """
        c = self.config
        if adapt == "contrastive":
            return self.contrastive(support, support_labels, seed=seed, unlabelled=unlabelled).logits(query)
        embed = embed or self._embed_no_grad
        if adapt == "protonet":
            from .protonet import prototypes

            return prototype_logits(embed(query), prototypes(embed(support).float(), support_labels, n_way),
                                    distance=c.distance, temperature=c.tau)
        if adapt == "hypernet":
            if self.hyperhead is None:
                raise ValueError("adapt: hypernet needs a model meta-trained with meta_method: hypernet")
            with torch.no_grad():
                return self.hyperhead.logits(embed(support), support_labels, embed(query), n_way)
        if adapt == "maml":
            if c.inner_params == "head":
                s = embed(support)
                head = episode_head(s, support_labels, n_way, c.head_init)
                sgd_steps(head, lambda: head_loss(s, support_labels, head), steps=c.inner_steps, lr=c.inner_lr)
                with torch.no_grad():
                    return head_logits(embed(query), head)
            params = self.encoder_parameters()
            head = episode_head(self._embed_no_grad(support), support_labels, n_way, c.head_init)
            with restored(params):
                sgd_steps([*params, *head], lambda: head_loss(self.embedder(**support), support_labels, head),
                          steps=c.inner_steps, lr=c.inner_lr)
                return head_logits(self._embed_no_grad(query), head).detach()
        if adapt == "finetune":
            return self._finetune(support, support_labels, query, n_way)
        if adapt == "probe":
            return self._probe(embed(support), support_labels, embed(query), n_way)
        raise ValueError(f"adapt: unknown {adapt!r}; choose one of {', '.join(ADAPT_METHODS)}")

    def contrastive(self, support: Batch, support_labels: torch.Tensor, *, seed: int = 0,
                    unlabelled: Batch | None = None):
        """Contrastive-pair adaptation of a copy of the encoder on the support rows, then a logistic-regression head
        (:func:`hf_transfer.meta.contrastive.contrastive_adapt`); returns the
        :class:`~hf_transfer.meta.contrastive.ContrastiveClassifier`. The model is unchanged."""
        from .contrastive import contrastive_adapt

        c = self.config
        return contrastive_adapt(
            self.embedder, support, support_labels, iterations=c.contrastive_iterations,
            batch_size=c.contrastive_batch_size, lr=c.contrastive_learning_rate, epochs=c.contrastive_epochs,
            params=c.contrastive_params, lora_r=c.contrastive_lora_r, normalize=c.contrastive_normalize, seed=seed,
            unlabelled=unlabelled, self_training_rounds=c.self_training_rounds,
            self_training_fraction=c.self_training_fraction)

    def _probe(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
               n_way: int) -> torch.Tensor:
        """A linear probe: only a new zero linear head trains (AdamW, ``finetune_head_lr``, ``finetune_steps``) on the
        frozen embeddings, the cheap form of fine-tuning."""
        c = self.config
        head = nn.Linear(support.shape[-1], n_way).to(support.device)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        optimizer = torch.optim.AdamW(head.parameters(), lr=c.finetune_head_lr, weight_decay=0.0)
        support = support.float()
        for _ in range(c.finetune_steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(head(support), support_labels.long()).backward()
            optimizer.step()
        with torch.no_grad():
            return head(query.float())

    @torch.no_grad()
    def _embed_no_grad(self, batch: Batch) -> torch.Tensor:
        return self.embedder(**batch)

    def _finetune(self, support: Batch, support_labels: torch.Tensor, query: Batch, n_way: int) -> torch.Tensor:
        """Plain fine-tuning from the current weights: a new zero linear head, every encoder weight trains, AdamW
        on the whole support set for ``finetune_steps`` steps. Runs on a copy; the model is untouched."""
        c = self.config
        embedder = copy.deepcopy(self.embedder)
        embedder.requires_grad_(True)
        embedder.train()
        hidden = embedder.encoder.config.hidden_size
        head = nn.Linear(hidden, n_way).to(next(embedder.parameters()).device)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        optimizer = torch.optim.AdamW([{"params": embedder.parameters(), "lr": c.finetune_lr},
                                       {"params": head.parameters(), "lr": c.finetune_head_lr}], weight_decay=0.0)
        for _ in range(c.finetune_steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(head(embedder(**support)), support_labels.long()).backward()
            optimizer.step()
        embedder.eval()
        with torch.no_grad():
            return head(embedder(**query))
