"""The shipped meta-learning and lifelong recipes parse, and their saved form reads back the same."""

from pathlib import Path

import pytest
import yaml

from hf_transfer.lifelong import LifelongRecipe
from hf_transfer.meta import MetaRecipe
from hf_transfer.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes" / "meta").glob("*.yaml")) + sorted((REPO / "recipes" / "lifelong").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_parses_and_round_trips(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, MetaRecipe if path.parent.name == "meta" else LifelongRecipe)
    again = load_recipe(yaml.safe_load(recipe.to_yaml()))
    assert again.to_dict() == recipe.to_dict()


def test_there_are_recipes():
    assert len(RECIPES) >= 8
