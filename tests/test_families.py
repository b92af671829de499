"""The family registry (hf_transfer/families.py): how a recipe finds its family, one TrainResult, a family added from
outside the package, and the old import paths of the task-list plumbing."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import hf_transfer
from hf_transfer import families
from hf_transfer.families import FamilySpec, TrainResult, available_families, family_for_keys, get_family
from hf_transfer.recipe import load_recipe
from hf_transfer.tasklists.recipe import TaskListRecipe

REPO = Path(__file__).resolve().parents[1]


def test_the_five_families_are_registered():
    assert available_families() == ["lifelong", "meta", "multitask", "pretrain", "transfer"]
    assert get_family("transfer").train is hf_transfer.run.train_transfer


@pytest.mark.parametrize(("keys", "family"), [
    (["tasks", "sharing"], "multitask"),
    (["tasks", "meta_method", "test_tasks"], "meta"),
    (["lifelong_method", "tasks"], "lifelong"),
    (["train_data", "max_steps"], "pretrain"),
    (["tasks.books.data"], "multitask"),  # a dotted override counts by its first part
    (["learning_rate", "method"], None),
])
def test_a_recipe_finds_its_family_by_its_keys(keys, family):
    found = family_for_keys(keys)
    assert (found.name if found else None) == family


@pytest.mark.parametrize(("recipe", "family", "class_name"), [
    ("recipes/text_classification/finetune.yaml", "transfer", "Recipe"),
    ("recipes/multitask/hard.yaml", "multitask", "MultiTaskRecipe"),
    ("recipes/meta/protonet.yaml", "meta", "MetaRecipe"),
    ("recipes/lifelong/ewc.yaml", "lifelong", "LifelongRecipe"),
])
def test_shipped_recipes_load_as_their_family(recipe, family, class_name):
    parsed = load_recipe(REPO / recipe)
    assert families.family_of(parsed) == family
    assert type(parsed).__name__ == class_name


def test_an_unknown_family_names_the_registered_ones():
    with pytest.raises(hf_transfer.RecipeError, match="multitask"):
        get_family("multitsk")


def test_registering_another_family_under_a_taken_name_is_refused():
    spec = get_family("multitask")
    families.register_family(spec)  # the same spec again (a module imported twice) is harmless
    with pytest.raises(ValueError, match="already registered"):
        families.register_family(FamilySpec("multitask", selected_by="x", load_recipe=None, train=lambda r, **k: r))


@dataclass
class ToyArguments:
    toy_rounds: int = 1


class ToyRecipe(TaskListRecipe):
    """A family recipe from outside the package: its own field plus the flat recipe's shared parts."""

    family = "toy"

    @property
    def rounds(self) -> int:
        return self.args.toy_rounds


@pytest.fixture
def toy_family():
    trained = []

    def load(raw: dict, overrides: dict) -> ToyRecipe:
        raw = {**raw, **overrides}
        rounds = raw.pop("toy_rounds")
        return ToyRecipe(load_recipe(raw), ToyArguments(rounds), {})

    def train(recipe: ToyRecipe, *, callbacks=None) -> TrainResult:
        trained.append(recipe)
        return TrainResult({"rounds": recipe.rounds}, None, None, None, recipe, Path(recipe.training.output_dir),
                           extras={"history": [1, 2, 3]})

    families.register_family(FamilySpec("toy", selected_by="toy_rounds", load_recipe=load, train=train,
                                        summary="a test family"))
    yield trained
    del families._FAMILIES["toy"]


def test_a_family_registered_from_outside_runs_through_train(toy_family, tmp_path):
    """One register_family line: the recipe key selects it, hf_transfer.train runs its checks and then its train
    function, and the result is the one TrainResult every family returns."""
    result = hf_transfer.train({"toy_rounds": 3, "output_dir": str(tmp_path / "out")}, learning_rate=1e-4)
    assert toy_family and toy_family[0].rounds == 3
    assert toy_family[0].training.learning_rate == 1e-4  # overrides reach the family's loader
    assert isinstance(result, TrainResult)
    assert result.metrics == {"rounds": 3}
    assert result.history == [1, 2, 3]  # extras read as attributes
    assert result.is_main_process
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        result.nothing  # noqa: B018


def test_the_shared_checks_run_for_every_family(toy_family, tmp_path):
    """train() checks the output folder before handing the recipe to its family: an occupied folder is refused for a
    family from outside too, and its train function never runs."""
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(hf_transfer.UserError, match="output_dir"):
        hf_transfer.train({"toy_rounds": 1, "output_dir": str(occupied)})
    assert not toy_family
    assert (occupied / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_flat_recipes_never_import_a_family_package():
    code = ("import sys\nfrom hf_transfer.recipe import load_recipe\nload_recipe(None)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in (['hf_transfer', 'multitask'], "
            "['hf_transfer', 'meta'], ['hf_transfer', 'lifelong'])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_old_import_paths_still_work():
    """The task-list plumbing moved to hf_transfer.tasklists and TrainResult to hf_transfer.families; the names
    docs and notebooks used stay importable from where they were."""
    from hf_transfer import tasklists
    from hf_transfer.lifelong import LifelongRecipe
    from hf_transfer.meta.recipe import TaskListRecipe, load_task_list_recipe, resolve_recipe
    from hf_transfer.multitask.data import load_tasks, tokenize_tasks
    from hf_transfer.multitask.modeling import SHARED_ADAPTER
    from hf_transfer.multitask.recipe import NOT_WITH_TASKS, TaskSpec, parse_tasks
    from hf_transfer.run import TrainResult as OldTrainResult

    assert TaskSpec is tasklists.recipe.TaskSpec and parse_tasks is tasklists.recipe.parse_tasks
    assert NOT_WITH_TASKS is tasklists.recipe.NOT_WITH_TASKS and SHARED_ADAPTER == tasklists.recipe.SHARED_ADAPTER
    assert TaskListRecipe is tasklists.recipe.TaskListRecipe and issubclass(LifelongRecipe, TaskListRecipe)
    assert load_task_list_recipe is tasklists.recipe.load_task_list_recipe
    assert resolve_recipe is tasklists.recipe.resolve_recipe
    assert load_tasks is tasklists.data.load_tasks and tokenize_tasks is tasklists.data.tokenize_tasks
    assert OldTrainResult is TrainResult is hf_transfer.TrainResult
