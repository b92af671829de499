"""Model-based meta-learning: a task-conditioned head, a hypernetwork from a support set to classifier weights.

For each episode class ``j`` with support prototype ``c_j`` (``(d,)``, the mean support embedding), the hypernetwork
emits that class's weights, ``[w_j, b_j] = [c_j, 0] + MLP(c_j)``, and a query ``q`` scores ``q . w_j + b_j``. The
MLP's last layer starts at zero, so an untrained head is the dot-product prototype classifier, and training
(episodically, together with the encoder or on a frozen one) learns how a task's support set should shape its
classifier. It is applied to each class alone, so relabelling the classes of an episode relabels the logits (the
permutation symmetry that episodes with shuffled labels require).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .protonet import prototypes


class HyperHead(nn.Module):
    """Prototype ``(N, d)`` -> class weights ``(N, d)`` and biases ``(N,)``.

    Args:
        hidden_size: the encoder's embedding width ``d``.
        inner_size: the MLP's hidden width.
    """

    def __init__(self, *, hidden_size: int, inner_size: int = 256):
        super().__init__()
        self.hidden_size = hidden_size
        self.inner_size = inner_size
        self.net = nn.Sequential(nn.Linear(hidden_size, inner_size), nn.GELU(), nn.Linear(inner_size, hidden_size + 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, protos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(protos.float())
        return protos.float() + out[:, :-1], out[:, -1]

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
               n_way: int) -> torch.Tensor:
        """``(Q, N)`` query logits under the head generated from the support set."""
        weight, bias = self(prototypes(support.float(), support_labels, n_way))
        return query.float() @ weight.T + bias

    def loss(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
             query_labels: torch.Tensor, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(support, support_labels, query, n_way)
        return F.cross_entropy(logits, query_labels.long()), logits
