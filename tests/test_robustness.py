"""Training that goes wrong stops cleanly: a non-finite loss names its step and cause and leaves no result behind."""

import os
from dataclasses import dataclass, field

import pytest
import torch
import yaml
from safetensors.torch import load_file

import hf_transfer
from hf_transfer.errors import TrainingDivergedError
from hf_transfer.methods import MethodConfig, MethodOutput, TransferMethod, register_method
from hf_transfer.trainer import NonFiniteLossGuard


@dataclass
class _ExplodeConfig(MethodConfig):
    at_progress: float = field(default=0.5, metadata={"help": "Fraction of training after which the loss is NaN."})


class _ExplodeAt(TransferMethod):
    """A test method whose loss turns NaN part-way through training, as a diverging objective would."""

    def __init__(self, config, *, feature_dim, num_labels):
        super().__init__(config, feature_dim=feature_dim, num_labels=num_labels)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, batch):
        loss = self.scale * batch.features.float().pow(2).mean()
        if batch.progress >= self.config.at_progress:
            loss = loss * float("nan")
        return MethodOutput(loss, {})


register_method("test_explode", _ExplodeConfig, _ExplodeAt)


def test_nan_loss_stops_at_its_step_before_any_result_is_written(tiny_recipe):
    # 6 steps; progress is global_step / 6, so the loss computed for step 4 (progress 3/6) is the first NaN one.
    tiny_recipe.update(method=["test_explode"], max_steps=6, save_strategy="steps", save_steps=2)
    with pytest.raises(TrainingDivergedError, match=r"step 4: test_explode/loss, total loss became NaN") as info:
        hf_transfer.train(tiny_recipe)
    message = str(info.value)
    assert "trade_off" in message and "learning_rate 0.001" in message and "--resume_from_checkpoint" in message
    out = tiny_recipe["output_dir"]
    # checkpoint-2 was written before the bad step and is intact; nothing after it, and no exported model
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")) == ["checkpoint-2"]
    assert not any(os.path.exists(os.path.join(out, f)) for f in ("config.json", "metrics.json", "model.safetensors"))
    state = load_file(os.path.join(out, "checkpoint-2", "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in state.values())


def test_deferred_check_records_the_first_bad_step_and_terms():
    # The accelerator path: nothing is read from the device per step; the first bad step surfaces at check().
    guard = NonFiniteLossGuard(check_every_step=False, learning_rate=1e-4)
    finite = torch.tensor(0.5)
    guard.observe(1, {"task_loss": finite, "dann/loss": finite, "total loss": finite})
    guard.check()  # nothing bad yet
    guard.observe(2, {"task_loss": finite, "dann/loss": torch.tensor(float("inf")), "total loss": finite})
    guard.observe(3, {"task_loss": torch.tensor(float("nan")), "dann/loss": finite, "total loss": finite})
    with pytest.raises(TrainingDivergedError, match=r"step 2: dann/loss became") as info:
        guard.check()
    assert "lower its trade_off" in str(info.value) and "dann" in str(info.value)


def test_immediate_check_names_the_task_loss_and_learning_rate():
    guard = NonFiniteLossGuard(check_every_step=True, learning_rate=0.5)
    with pytest.raises(TrainingDivergedError, match=r"step 7: task_loss, total loss became") as info:
        guard.observe(7, {"task_loss": torch.tensor(float("nan")), "total loss": torch.tensor(float("nan"))})
    assert "learning_rate 0.5: try 10x lower" in str(info.value) and "trade_off" not in str(info.value)


def test_cli_exits_2_on_divergence(tiny_recipe, tmp_path, capsys):
    from hf_transfer.cli import main

    path = tmp_path / "explode.yaml"
    path.write_text(yaml.safe_dump({**tiny_recipe, "method": ["test_explode"]}))
    # The method lives in this test module, so the CLI runs in-process (a subprocess would not have it registered).
    assert main(["train", str(path)]) == 2
    assert "error: training stopped at step" in capsys.readouterr().err


# ---- security --------------------------------------------------------------------------------------------------

SECRET = "hf_TESTTOKENdoNotWriteMe0123456789"


def test_hub_token_is_never_written_logged_or_kept_in_checkpoints(tiny_recipe, capfd):
    tiny_recipe.update(hub_token=SECRET, save_strategy="steps", save_steps=2, logging_steps=1)
    result = hf_transfer.train(tiny_recipe)
    out = capfd.readouterr()
    assert SECRET not in out.out and SECRET not in out.err
    files = [os.path.join(d, f) for d, _, names in os.walk(result.output_dir) for f in names]
    # checkpoints hold training_args.bin (the Trainer pickles its arguments): the token must not be in it either
    assert any(f.endswith("training_args.bin") for f in files)
    for path in files:
        with open(path, "rb") as fh:
            assert SECRET.encode() not in fh.read(), path


def test_remote_code_is_not_run_unless_asked(tiny_model_dir, tiny_recipe, tmp_path):
    import json
    import shutil

    # A model folder whose config points the Auto classes at code shipped beside it, code that leaves a mark
    # when it is imported. Without trust_remote_code, loading must use the library's own BERT and never import it.
    model_dir = tmp_path / "with_code"
    shutil.copytree(tiny_model_dir, model_dir)
    marker = tmp_path / "remote_code_ran"
    (model_dir / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import BertForSequenceClassification as EvilModel\n"
    )
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil.EvilModel"}
    (model_dir / "config.json").write_text(json.dumps(config))
    tiny_recipe.update(model_name_or_path=str(model_dir), max_steps=1)
    hf_transfer.train(tiny_recipe)
    assert not marker.exists()


def test_no_pickle_loading_in_the_package():
    # Weights are safetensors; a .pth we cannot avoid is read with weights_only=True; arrays with allow_pickle off.
    import pathlib
    import re

    root = pathlib.Path(hf_transfer.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\bpickle\.loads?\(|\bjoblib\.load\(|allow_pickle\s*=\s*True", code):
                offenders.append(f"{path.name}:{number}")
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{number}")
    assert not offenders, offenders


# ---- kill and resume ---------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """Bitwise equality needs the same float reduction order in every run: the same number of intra-op threads
    here and in the subprocess (other tests and libraries may change this process's count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"OMP_NUM_THREADS": "1"}
    torch.set_num_threads(before)


def test_kill_9_then_resume_latest_reproduces_the_uninterrupted_run(tiny_recipe, tmp_path, one_thread):
    import random
    import signal
    import subprocess
    import sys
    import time

    # DANN: a method with its own parameters (the discriminator) and dropout, so the method state and the RNG
    # states must both come back for the resumed run to match bit for bit.
    recipe = {**tiny_recipe, "method": ["dann"], "max_steps": 12, "save_strategy": "steps", "save_steps": 2,
              "logging_steps": 1}
    whole = hf_transfer.train({**recipe, "output_dir": str(tmp_path / "whole")})

    killed_dir = tmp_path / "killed"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**recipe, "output_dir": str(killed_dir)}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **one_thread}
    proc = subprocess.Popen([sys.executable, "-m", "hf_transfer", "train", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Kill at a random step: as soon as checkpoint-k is complete, k drawn from 2, 4, 6 (of 12 steps), so the
    # process dies in the middle of the following steps (or while writing the next checkpoint).
    k = random.Random(os.getpid()).choice([2, 4, 6])
    deadline = time.time() + 600
    while not (killed_dir / f"checkpoint-{k}" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "config.json").exists()  # no exported model: the run never finished
    # and a checkpoint the kill interrupted (no trainer_state.json) is never the one resumed from
    (killed_dir / "checkpoint-99").mkdir()
    (killed_dir / "checkpoint-99" / "model.safetensors").write_bytes(b"half-written")

    resumed = hf_transfer.train({**recipe, "output_dir": str(killed_dir), "resume_from_checkpoint": "latest"})
    assert resumed.trainer.state.global_step == 12
    # the discriminator's gradients are cleared after each step like the model's (the Trainer alone would not)
    assert all(p.grad is None for p in resumed.trainer.method_stack.parameters())
    final_whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    final_resumed = load_file(str(killed_dir / "model.safetensors"))
    assert final_whole.keys() == final_resumed.keys()
    for name in final_whole:
        torch.testing.assert_close(final_resumed[name], final_whole[name], rtol=0, atol=0, msg=name)
    for key in ("target_accuracy", "source_accuracy", "target_loss"):
        assert resumed.metrics[key] == whole.metrics[key], key
    losses = {h["step"]: h["loss"] for h in whole.trainer.state.log_history if "loss" in h}
    resumed_losses = {h["step"]: h["loss"] for h in resumed.trainer.state.log_history if "loss" in h}
    assert resumed_losses and all(resumed_losses[s] == losses[s] for s in resumed_losses)


def test_resume_refuses_a_half_written_checkpoint(tmp_path):
    from hf_transfer.checkpoints import resolve_resume_checkpoint
    from hf_transfer.errors import RecipeError

    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:  # every file the Trainer reads back (a bare trainer_state.json no longer counts as complete)
            from tests.test_output_safety import write_checkpoint

            write_checkpoint(folder)
    assert resolve_resume_checkpoint("latest", tmp_path) == str(tmp_path / "checkpoint-4")
    assert resolve_resume_checkpoint(None, tmp_path) is None
    with pytest.raises(RecipeError, match=r"checkpoint-6' is incomplete.*resume from '.*checkpoint-4'"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-6"), tmp_path)
    with pytest.raises(RecipeError, match=r"no complete checkpoint in output_dir"):
        resolve_resume_checkpoint("latest", tmp_path / "empty")
