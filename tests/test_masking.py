"""The masking settings shared by ``method: mlm`` and the ``pretrain`` family (hf_transfer/masking.py)."""

import pytest
import torch

from hf_transfer.errors import RecipeError
from hf_transfer.masking import Masking


@pytest.mark.parametrize(("masking", "message"), [
    (Masking(mlm_probability=0.0), r"^mlm_probability: must be in \(0, 1\], got 0.0$"),
    (Masking(mlm_probability=1.01), r"^mlm_probability: must be in \(0, 1\]"),
    (Masking(mask_replace_prob=-0.5), r"^mask_replace_prob: must be in \[0, 1\], got -0.5$"),
    (Masking(random_replace_prob=1.5), r"^random_replace_prob: must be in \[0, 1\]"),
    (Masking(mask_replace_prob=0.9, random_replace_prob=0.2),
     r"^random_replace_prob: mask_replace_prob \+ random_replace_prob must be <= 1, got 0.9 \+ 0.2$"),
])
def test_a_bad_probability_names_its_field(masking, message):
    with pytest.raises(RecipeError, match=message):
        masking.check_masking()


def test_errors_carry_the_prefix_of_the_block_the_fields_live_in():
    with pytest.raises(RecipeError, match=r"^mlm\.random_replace_prob: "):
        Masking(random_replace_prob=0.3).check_masking("mlm.")


def test_both_recipes_inherit_the_fields_and_their_check():
    from hf_transfer.methods.mlm import MLMConfig
    from hf_transfer.pretrain.recipe import PretrainArguments

    assert MLMConfig().mlm_probability == PretrainArguments(train_data=["a.txt"]).mlm_probability == 0.15
    with pytest.raises(RecipeError, match=r"^mlm\.mask_replace_prob: must be in \[0, 1\]"):
        MLMConfig(mask_replace_prob=2.0)
    with pytest.raises(RecipeError, match=r"^mask_replace_prob: must be in \[0, 1\]"):
        PretrainArguments(train_data=["a.txt"], mask_replace_prob=2.0)


def test_the_defaults_are_berts_and_pass():
    masking = Masking()
    assert (masking.mlm_probability, masking.mask_replace_prob, masking.random_replace_prob) == (0.15, 0.8, 0.1)
    masking.check_masking()


def test_the_masker_masks_as_its_probabilities_say(tiny_model_dir):
    """All chosen, all replaced by the mask token: every non-special token becomes [MASK] and is a label; nothing
    chosen is impossible (mlm_probability > 0), so a second setting (none replaced) keeps every token as it was."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = torch.tensor([tokenizer("a b c d e f")["input_ids"]])
    special = torch.tensor([tokenizer.get_special_tokens_mask(ids[0].tolist(), already_has_special_tokens=True)],
                           dtype=torch.bool)
    masked, labels = Masking(1.0, 1.0, 0.0).masker(tokenizer, seed=0).torch_mask_tokens(
        ids.clone(), special_tokens_mask=special)
    assert bool((masked[~special] == tokenizer.mask_token_id).all())
    assert bool((labels[~special] == ids[~special]).all()) and bool((labels[special] == -100).all())
    kept, labels = Masking(1.0, 0.0, 0.0).masker(tokenizer, seed=0).torch_mask_tokens(
        ids.clone(), special_tokens_mask=special)
    assert torch.equal(kept, ids) and bool((labels[~special] == ids[~special]).all())
