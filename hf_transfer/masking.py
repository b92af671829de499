"""Masked-language-model masking, shared by the ``mlm`` method (a masked-LM loss during task training) and the
``pretrain`` family (continued masked-LM training): the three probabilities of
``transformers.DataCollatorForLanguageModeling`` as recipe fields, their check, and the masker built from them.

Both recipe dataclasses inherit :class:`Masking`, so the fields are spelled, documented and checked once; the
method's live under ``mlm:``, so its errors name ``mlm.mlm_probability`` and the pretrain recipe's name
``mlm_probability``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import RecipeError


@dataclass
class Masking:
    """Which tokens a masked-LM loss predicts and what they are replaced by: ``mlm_probability`` of the non-special
    tokens are chosen; of those, ``mask_replace_prob`` become the mask token, ``random_replace_prob`` a random token,
    and the rest stay (BERT's 15% / 80% / 10%)."""

    mlm_probability: float = field(
        default=0.15, metadata={"help": "Fraction of the (non-special) tokens chosen for prediction."}
    )
    mask_replace_prob: float = field(
        default=0.8, metadata={"help": "Of the chosen tokens, the fraction replaced by the mask token."}
    )
    random_replace_prob: float = field(
        default=0.1,
        metadata={"help": "Of the chosen tokens, the fraction replaced by a random token (the rest stay)."},
    )

    def check_masking(self, prefix: str = "") -> None:
        """Raise a :class:`RecipeError` naming the first bad field (``prefix`` + its name) and its allowed range."""
        if not 0 < self.mlm_probability <= 1:
            raise RecipeError(f"{prefix}mlm_probability: must be in (0, 1], got {self.mlm_probability}")
        for name in ("mask_replace_prob", "random_replace_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise RecipeError(f"{prefix}{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise RecipeError(f"{prefix}random_replace_prob: mask_replace_prob + random_replace_prob must be <= 1, "
                              f"got {self.mask_replace_prob} + {self.random_replace_prob}")

    def masker(self, tokenizer, *, seed: int | None = None):
        """``transformers.DataCollatorForLanguageModeling`` with these probabilities (its own generator seeded with
        ``seed``; without one it draws from torch's global generator)."""
        from transformers import DataCollatorForLanguageModeling

        return DataCollatorForLanguageModeling(tokenizer, mlm_probability=self.mlm_probability,
                                               mask_replace_prob=self.mask_replace_prob,
                                               random_replace_prob=self.random_replace_prob, seed=seed)
