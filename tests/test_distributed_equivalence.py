"""Two processes train exactly like one with the same global batch, for every method family.

Each case trains the same recipe twice: one process with a batch of 8 rows (or 2 episodes), and
``accelerate launch --config_file recipes/accelerate/multi_cpu.yaml`` (2 processes, gloo) with 4 rows (or 1 episode)
each. Then it compares every logged loss step by step, the final metrics and the final weights.

Why the runs can be compared this tightly: the tiny model has no dropout (``no_dropout_model_dir``), the
optimizer is plain SGD (so weights differ exactly as much as the gradients do; Adam would magnify float noise in
near-zero gradients), and batches are drawn at random rather than grouped by length (grouping depends on the
per-process batch size). What remains is float round-off from summing in another order: losses agree to ``RTOL``,
weights to ``WEIGHT_ATOL``.

What each case proves:

* finetune: the data sharding, the loss average and the evaluation (the Trainer's own ``eval_loss`` counts the rows
  repeated to even out the last batch; TransferTrainer recomputes it from the gathered logits);
* instance_weighting + dann + mmd, in one run: the weights are estimated once and shared, and the weight-normalised
  loss is normalised by the global weight total; the discriminator sees the global batch; MMD is estimated over the
  global batch (8 vs 8 rows), not as the mean of two 4-vs-4 estimates (see hf_transfer.distributed);
* l2sp + bss + lwf, in one run: the weight penalty, the global batch's spectrum and the frozen copy's features;
  mlm + dann: the MLM loss is the mean over every process's masked tokens (with deterministic masks);
* multitask: every process draws the same task for a step and its share of the step's rows;
* meta: one process with 2 episodes a step trains on the episodes two processes with 1 episode each share;
* FSDP2, DeepSpeed ZeRO-2 and ZeRO-3 (the shipped configs on 2 gloo processes, through tests/engines_on_cpu.py):
  MMD (and LoRA under FSDP2) train like one process, DANN (its discriminator sharded with the model) like DDP, and
  a sharded FSDP2 checkpoint resumes exactly.

Starting a process that imports torch and transformers costs seconds, twice under a 2-process launch, so the runs
are grouped: one process trains every one-process reference, one DDP launch every DDP case, and one launch each for
FSDP2, ZeRO-2 and ZeRO-3 their cases, one recipe after another (tests/train_many.py). Each group is a module-scoped
fixture, started by the first test that needs it; each test checks its own recipes' runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from tests.conftest import accelerate_launch

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-3
WEIGHT_ATOL = 1e-5
STEPS = 4

pytestmark = pytest.mark.slow


def common(model_dir: str) -> dict:
    return {"model_name_or_path": model_dir, "max_length": 32, "max_steps": STEPS, "optim": "sgd",
            "learning_rate": 0.05, "warmup_steps": 0, "logging_steps": 1, "seed": 11, "per_device_eval_batch_size": 8,
            "disable_tqdm": True, "report_to": "none"}


def transfer_recipe(model_dir, review_files, **extra) -> dict:
    return {**common(model_dir), "source_data": review_files["source"], "target_data": review_files["target"],
            "train_sampling_strategy": "random", "save_strategy": "steps", "save_steps": STEPS, **extra}


DANN = {"dropout": 0.0, "hidden_size": 16}
BATCH = ("per_device_train_batch_size", 8)  # (the field each process's share goes in, the global size)


def cases(model_dir: str, review_files: dict) -> dict[str, tuple[dict, tuple[str, int]]]:
    """Every recipe trained here, by name, with how its global batch is split between processes."""
    transfer = {
        "finetune": {},
        # One run for three families (instance weighting, adversarial, kernel discrepancy): the suite stays short.
        "iw_dann_mmd": {"method": ["instance_weighting", "dann", "mmd"], "dann": DANN},
        # The penalty on the weights (each process adds the same gradient), the spectrum of the global batch, and
        # the frozen copy's features gathered to line up with the global batch.
        "l2sp_bss_lwf": {"method": ["l2sp", "bss", "lwf"], "bss": {"rows": "all", "trade_off": 0.01},
                         "lwf": {"trade_off": 10.0}},
        # Every token masked as [MASK]: the masks no longer depend on each process's random draws, so the runs
        # compare exactly; the MLM loss must be the mean over all processes' masked tokens.
        "mlm_dann": {"method": ["mlm", "dann"], "dann": DANN,
                     "mlm": {"mlm_probability": 1.0, "mask_replace_prob": 1.0, "random_replace_prob": 0.0}},
        "mmd": {"method": "mmd"},
        "lora": {"peft": {"peft_type": "LORA", "r": 4, "target_modules": ["query", "value"]}},
        "dann_unclipped": {"method": "dann", "max_grad_norm": 0.0, "dann": DANN},
        "dann_save2": {"method": "dann", "save_steps": 2, "dann": DANN},
    }
    out = {name: (transfer_recipe(model_dir, review_files, **extra), BATCH) for name, extra in transfer.items()}
    if "conll_source" in review_files:
        # A tagger: the token loss over every process's labelled tokens, and DANN, MMD and the MLM loss over every
        # process's token rows (each process holds a different number of them).
        out["token_mlm_dann_mmd"] = ({
            **transfer_recipe(model_dir, review_files), "task": "token-classification",
            "source_data": review_files["conll_source"], "target_data": review_files["conll_target"],
            "metrics": ["seqeval"], "selection_validators": [], "source_eval_fraction": 0.0,
            "method": ["mlm", "dann", "mmd"], "dann": DANN,
            "mlm": {"mlm_probability": 1.0, "mask_replace_prob": 1.0, "random_replace_prob": 0.0}}, BATCH)
    out["multitask"] = ({**common(model_dir), "save_strategy": "no",
                         "tasks": [{"name": "books", "data": review_files["source"]},
                                   {"name": "kitchen", "data": review_files["target"]}]}, BATCH)
    out["meta"] = ({**common(model_dir), "meta_method": "fomaml", "inner_steps": 1, "n_way": 2, "k_shot": 2,
                    "n_query": 3, "eval_shots": [2], "eval_episodes": 3, "eval_n_query": 4,
                    "tasks": [{"name": "books", "data": review_files["source"]}],
                    "test_tasks": [{"name": "kitchen", "data": review_files["target"], "eval_fraction": 0.5}]},
                   ("episodes_per_device", 2))
    return out


ENGINE_CONFIGS = {"fsdp": "fsdp.yaml", "zero2": "deepspeed_zero2.yaml"}


def engine_config(engine: str, folder: Path) -> Path:
    """The shipped config of ``engine``; ``zero3`` is deepspeed_zero2.yaml at stage 3, gathering 16-bit weights for
    the export (check-launch asks for that)."""
    if engine != "zero3":
        return REPO / "recipes/accelerate" / ENGINE_CONFIGS[engine]
    config = yaml.safe_load((REPO / "recipes/accelerate/deepspeed_zero2.yaml").read_text())
    config["deepspeed_config"].update(zero_stage=3, zero3_save_16bit_model=True)
    path = folder / "accelerate-zero3.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Group:
    """The runs of one launch (tests/train_many.py): ``dir(name)`` is a recipe's output folder, once that recipe is
    checked to have trained to the end on every process, with the main process alone writing and reporting."""

    def __init__(self, folder: Path, processes: int, process: subprocess.Popen):
        self.folder, self.processes, self.process = folder, processes, process
        self.ranks: list[dict] | None = None

    def wait(self) -> Group:
        if self.ranks is None:
            try:
                self.process.wait(timeout=900)
            finally:
                self.process.kill()  # a no-op once it has exited
            self.ranks = []
            for rank in range(self.processes):
                path = self.folder / f"results.rank{rank}.json"
                self.ranks.append(json.loads(path.read_text()) if path.is_file() else {})
        return self

    def dir(self, name: str) -> Path:
        for rank, results in enumerate(self.wait().ranks):
            entry = results.get(name)
            launcher = (self.folder / "launch.log").read_text()[-4000:]
            assert entry is not None, f"{self.folder.name}/{name} did not run on rank {rank}: {launcher}"
            assert entry["rc"] == 0, f"{self.folder.name}/{name}, rank {rank}: " + \
                (entry["error"] or entry["stderr"][-4000:])
            # the main process alone writes and reports
            assert entry["stdout"].count("written to") == (1 if rank == 0 else 0), entry["stdout"][-2000:]
        return self.folder / name


def start(folder: Path, group: str, names: list[str], all_cases: dict, *, processes: int,
          engine: str | None = None, extra: dict | None = None) -> Group:
    """Start training the recipes ``names`` one after another in one launch of ``processes`` processes, each given
    ``global size / processes`` of its batch field; under ``engine`` (fsdp, zero2, zero3) when given, else DDP.
    ``extra`` adds fields to a recipe by name. The returned group waits for the launch when first asked for a run."""
    here = folder / group
    here.mkdir()
    paths = []
    for name in names:
        recipe, (size_key, global_size) = all_cases[name.removesuffix("_resumed")]
        recipe = {**recipe, **(extra or {}).get(name, {}), "output_dir": str(here / name),
                  size_key: global_size // processes}
        paths.append(here / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(recipe))
    script = [str(REPO / "tests/train_many.py"), *(["--engines-on-cpu"] if engine else []), str(here / "results"),
              *map(str, paths)]
    if engine:
        # Accelerate enables FSDP and DeepSpeed for GPU groups only: tests/engines_on_cpu.py runs them on gloo CPU
        # processes; fp32, as this CPU has no fast bf16.
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(engine_config(engine, here)),
               "--num_processes", str(processes), "--mixed_precision", "no", *script]
    elif processes == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = accelerate_launch(*script, num_processes=processes)
    # One thread a process: the one- and two-process runs then sum in the same order within each matmul.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # The launcher's own output goes to a file, not a pipe: nobody reads a pipe while a group runs in the background.
    with open(here / "launch.log", "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=here, env=env)
    return Group(here, processes, process)


# In each launch the task-list recipes (multitask, meta) come last: a recipe that raises on one of several processes
# stops the ones after it (tests/train_many.py).
ONE = ["finetune", "iw_dann_mmd", "l2sp_bss_lwf", "mlm_dann", "token_mlm_dann_mmd", "mmd", "lora", "multitask",
       "meta"]
DDP = ["finetune", "iw_dann_mmd", "l2sp_bss_lwf", "mlm_dann", "token_mlm_dann_mmd", "dann_unclipped", "multitask",
       "meta"]


@pytest.fixture(scope="module")
def all_cases(no_dropout_model_dir, review_files, tmp_path_factory) -> dict:
    from tests.test_token_classification import SOURCE, TARGET, write_conll

    folder = tmp_path_factory.mktemp("conll")
    conll = {"conll_source": write_conll(folder / "source.txt", SOURCE * 4),
             "conll_target": write_conll(folder / "target.txt", TARGET * 4)}
    return cases(no_dropout_model_dir, {**review_files, **conll})


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("equivalence")


@pytest.fixture(scope="module")
def one_started(runs_folder, all_cases):
    """Every one-process reference run, started in the background: one process leaves a core of a 2-core machine
    idle, which the DDP launch started next uses."""
    group = start(runs_folder, "one", ONE, all_cases, processes=1)
    yield group
    group.process.kill()


@pytest.fixture(scope="module")
def one(one_started) -> Group:
    return one_started.wait()


def _group(*args, **kwargs):
    group = start(*args, **kwargs)
    yield group.wait()
    group.process.kill()


@pytest.fixture(scope="module")
def ddp(one_started, runs_folder, all_cases):
    yield from _group(runs_folder, "ddp", DDP, all_cases, processes=2)


@pytest.fixture(scope="module")
def fsdp(runs_folder, all_cases):
    # dann_save2_resumed resumes from dann_save2's checkpoint at step 2, trained just before it in the same launch.
    resume = {"resume_from_checkpoint": str(runs_folder / "fsdp" / "dann_save2" / "checkpoint-2")}
    yield from _group(runs_folder, "fsdp", ["mmd", "lora", "dann_unclipped", "dann_save2", "dann_save2_resumed"],
                      all_cases, processes=2, engine="fsdp", extra={"dann_save2_resumed": resume})


@pytest.fixture(scope="module")
def zero2(runs_folder, all_cases):
    yield from _group(runs_folder, "zero2", ["mmd", "dann_unclipped"], all_cases, processes=2, engine="zero2")


@pytest.fixture(scope="module")
def zero3(runs_folder, all_cases):
    yield from _group(runs_folder, "zero3", ["mmd"], all_cases, processes=2, engine="zero3")


def assert_same_metrics(one: Path, two: Path, keys: list[str]) -> dict:
    a = json.loads((one / "metrics.json").read_text())
    b = json.loads((two / "metrics.json").read_text())
    for key in keys:
        assert key in a, f"{key} missing from metrics.json ({sorted(a)})"
        assert b[key] == pytest.approx(a[key], rel=RTOL, abs=1e-6), key
    return a


def assert_same_weights(one: Path, two: Path, filename: str = "model.safetensors") -> None:
    a, b = load_file(str(one / filename)), load_file(str(two / filename))
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    assert worst <= WEIGHT_ATOL, f"{filename}: weights differ by up to {worst:.2e}"


def logged_steps(run_dir: Path, prefix_keys: tuple[str, ...]) -> list[dict]:
    state = json.loads((run_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    rows = [{k: v for k, v in entry.items() if k == "step" or k in prefix_keys or k.endswith("/loss")}
            for entry in state["log_history"] if "loss" in entry]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    return rows


def assert_same_history(one: Path, two: Path, keys: tuple[str, ...] = ("loss", "task_loss")) -> list[dict]:
    a, b = logged_steps(one, keys), logged_steps(two, keys)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert y[key] == pytest.approx(x[key], rel=RTOL, abs=1e-5), f"step {x['step']}: {key}"
    return a


def test_finetune(ddp, one):
    one, two = one.dir("finetune"), ddp.dir("finetune")
    assert_same_history(one, two)
    assert_same_metrics(one, two, ["train_loss", "source_accuracy", "source_loss", "target_accuracy", "target_loss"])
    assert_same_weights(one, two)
    state = json.loads((two / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    # 86 training rows (96 minus 10 held out), 8 rows a step: 11 steps an epoch. Had each process trained alone on
    # all the data, an epoch would be 22 steps.
    assert state["epoch"] == pytest.approx(STEPS / 11, abs=1e-3)
    assert (two / f"checkpoint-{STEPS}" / "rng_state_1.pth").is_file()  # both ranks took part


def test_instance_weighting_dann_and_mmd(ddp, one):
    one, two = one.dir("iw_dann_mmd"), ddp.dir("iw_dann_mmd")
    np.testing.assert_allclose(np.load(two / "instance_weights.npy"), np.load(one / "instance_weights.npy"),
                               rtol=1e-6)
    assert np.ptp(np.load(one / "instance_weights.npy")) > 0.1  # the weights are not uniform: they matter
    history = assert_same_history(one, two, ("loss", "task_loss", "dann/domain_accuracy"))
    assert all(abs(h["mmd/loss"]) > 1e-4 for h in history)  # the MMD term is really in play
    assert_same_metrics(one, two, ["train_loss", "target_accuracy", "target_loss"])
    assert_same_weights(one, two)
    # the discriminator too
    assert_same_weights(one / f"checkpoint-{STEPS}", two / f"checkpoint-{STEPS}", "transfer_methods.safetensors")


def test_regularised_finetuning_l2sp_bss_and_lwf(ddp, one):
    one, two = one.dir("l2sp_bss_lwf"), ddp.dir("l2sp_bss_lwf")
    history = assert_same_history(one, two)
    assert all(h["l2sp/loss"] > 0 and h["bss/loss"] > 0 for h in history[1:])  # every term is in play
    assert all(h["lwf/loss"] > 0 for h in history[1:])
    assert_same_metrics(one, two, ["train_loss", "target_accuracy", "target_loss"])
    assert_same_weights(one, two)


def test_mlm_with_dann(ddp, one):
    one, two = one.dir("mlm_dann"), ddp.dir("mlm_dann")
    history = assert_same_history(one, two)
    assert all(h["mlm/loss"] > 1 for h in history)
    assert_same_metrics(one, two, ["train_loss", "target_accuracy", "target_loss"])
    assert_same_weights(one, two)
    # the MLM head and the discriminator too
    assert_same_weights(one / f"checkpoint-{STEPS}", two / f"checkpoint-{STEPS}", "transfer_methods.safetensors")


def test_token_classification_with_mlm_dann_and_mmd(ddp, one):
    one, two = one.dir("token_mlm_dann_mmd"), ddp.dir("token_mlm_dann_mmd")
    history = assert_same_history(one, two)
    assert all(h["mlm/loss"] > 1 and abs(h["mmd/loss"]) > 1e-6 for h in history)  # every term is in play
    assert_same_metrics(one, two, ["train_loss", "target_f1", "target_accuracy"])
    assert_same_weights(one, two)
    assert_same_weights(one / f"checkpoint-{STEPS}", two / f"checkpoint-{STEPS}", "transfer_methods.safetensors")


def test_multitask_hard_sharing(ddp, one):
    one, two = one.dir("multitask"), ddp.dir("multitask")
    assert_same_metrics(one, two, ["train_loss", "books/accuracy", "books/loss", "kitchen/accuracy", "kitchen/loss",
                                   "books/train_rows", "kitchen/train_rows"])
    assert_same_weights(one, two)


def test_meta_fomaml(ddp, one):
    one, two = one.dir("meta"), ddp.dir("meta")
    metrics = assert_same_metrics(one, two, ["train_loss"])
    assert_same_weights(one, two)
    few_shot = [k for k in metrics if k.endswith("accuracy")]
    assert few_shot
    assert_same_metrics(one, two, few_shot)


def assert_same_model(one: Path, two: Path) -> None:
    """The exported models, compared as transformers loads them (ZeRO-3's export names LayerNorm weights with the
    legacy gamma/beta, which transformers writes back when a model was loaded under ZeRO-3 and renames on load)."""
    from transformers import AutoModelForSequenceClassification

    a = AutoModelForSequenceClassification.from_pretrained(one).state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(two).state_dict()
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst <= WEIGHT_ATOL, f"weights differ by up to {worst:.2e}"


@pytest.mark.parametrize("engine", ["fsdp", "zero2", "zero3"])
def test_sharded_engines_train_like_one_process(engine, one, request):
    """FSDP2 (the shipped fsdp.yaml: each BertLayer, then the rest), DeepSpeed ZeRO-2 (deepspeed_zero2.yaml) and
    ZeRO-3, each over 2 processes, train and export what one plain process does with MMD: the same losses, metrics
    and weights, gathered from the shards at export."""
    one, two = one.dir("mmd"), request.getfixturevalue(engine).dir("mmd")
    assert_same_history(one, two)
    assert_same_metrics(one, two, ["train_loss", "source_accuracy", "target_accuracy", "target_loss"])
    if engine == "zero3":
        assert_same_model(one, two)
    else:
        assert_same_weights(one, two)


def test_fsdp2_trains_lora_like_one_process(one, fsdp):
    one, two = one.dir("lora"), fsdp.dir("lora")
    assert_same_history(one, two)
    assert_same_weights(one, two, "adapter_model.safetensors")


@pytest.mark.parametrize("engine", ["fsdp", "zero2"])
def test_discriminator_under_sharded_engines_trains_like_ddp(engine, ddp, request):
    """DANN's discriminator is part of the engine's module under FSDP2 and ZeRO-2 (a submodule of the model), so the
    Trainer's gradient-norm clip covers it too, where DDP clips the model alone: the runs here do not clip, and are
    compared with DDP, which they equal (one process differs from all three by float noise, which unclipped
    adversarial updates grow to 1.5e-4 in 4 steps). The export leaves the discriminator out."""
    ddp_dir, two = ddp.dir("dann_unclipped"), request.getfixturevalue(engine).dir("dann_unclipped")
    assert_same_history(ddp_dir, two, ("loss", "task_loss", "dann/domain_loss", "dann/domain_accuracy"))
    assert_same_weights(ddp_dir, two)  # same keys: no discriminator in the export


def test_fsdp2_dann_resumes_exactly(fsdp):
    """Resuming an FSDP2 run from its sharded checkpoint (Accelerate's distributed checkpoint of the model, the
    discriminator inside it, and of the optimizer) ends where the uninterrupted run ends: the discriminator steers
    the model's gradients through the reversal layer, so a discriminator not restored shows in the weights."""
    full, resumed = fsdp.dir("dann_save2"), fsdp.dir("dann_save2_resumed")
    assert_same_history(full, resumed, ("loss", "task_loss", "dann/domain_loss"))
    assert_same_weights(full, resumed)
