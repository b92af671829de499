"""Nothing a user made is lost or mixed: the output folder is checked before any work, locked for the run, replaced
whole (a kill -9 at any moment leaves the complete old or the complete new folder), written with the user's umask;
checkpoints are verified before a resume; optional pictures run after the export; `push` checks before it creates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_transfer
from hf_transfer.errors import RecipeError, UserError
from hf_transfer.outputs import RUN_MARKER, acquire_lock, check_output_location, lock_path, release_lock

REPO = Path(__file__).resolve().parents[1]


def write_checkpoint(folder: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """A checkpoint folder with every file the Trainer writes (small but real: safetensors, torch zips, JSON)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "model.safetensors": lambda p: save_file({"w": torch.zeros(4)}, str(p)),
        "optimizer.pt": lambda p: torch.save({"state": {}}, p),
        "scheduler.pt": lambda p: torch.save({"last_epoch": 1}, p),
        "rng_state.pth": lambda p: torch.save({"python": 1}, p),
        "trainer_state.json": lambda p: p.write_text(json.dumps({"global_step": 1})),
    }
    for name, write in files.items():
        if name not in skip:
            write(folder / name)
    return folder


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if any data is read or any model weights load."""
    def refuse(*args, **kwargs):
        raise AssertionError("data or a model was loaded before the output location was refused")

    for name in ("load_raw_data", "load_classifier", "load_tokenizer"):
        monkeypatch.setattr(f"hf_transfer.run.{name}", refuse)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------
# Refused before any work
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("contents, what", [
    ({"config.json": "{}", "model.safetensors": "x"}, "a model export"),
    ({"README.md": "my notes", "config.json": "{\"mine\": 1}", "metrics.json": "{}"}, "a model export"),
    ({"data.csv": "text,label\n", "README.md": "my data"}, "files"),
])
def test_an_occupied_output_dir_is_refused_before_any_work(tiny_recipe, no_model_loads, contents, what):
    out = Path(tiny_recipe["output_dir"])
    out.mkdir(parents=True)
    for name, text in contents.items():
        (out / name).write_text(text)
    before = _tree(out)
    with pytest.raises(RecipeError, match=rf"^output_dir: .* already holds {what} .*overwrite_output_dir: true"):
        hf_transfer.train(tiny_recipe)
    assert _tree(out) == before  # nothing written, nothing removed
    assert not lock_path(out).exists()


def test_another_runs_checkpoints_are_not_rotated_away(tiny_recipe, no_model_loads):
    out = Path(tiny_recipe["output_dir"])
    for step in (1, 2, 3, 4):
        write_checkpoint(out / f"checkpoint-{step}")
    with pytest.raises(RecipeError, match=r"already holds another run's checkpoints \(checkpoint-1"):
        hf_transfer.train({**tiny_recipe, "save_strategy": "steps", "save_steps": 2, "save_total_limit": 1})
    assert sorted(p.name for p in out.iterdir()) == [f"checkpoint-{s}" for s in (1, 2, 3, 4)]


def test_output_dir_that_is_a_file_or_under_a_file_is_refused(tiny_recipe, tmp_path, no_model_loads):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RecipeError, match=r"^output_dir: .*afile' is a file"):
        hf_transfer.train({**tiny_recipe, "output_dir": str(tmp_path / "afile")})
    with pytest.raises(RecipeError, match=r"^output_dir: .*afile' \(a parent of .*\) is a file"):
        hf_transfer.train({**tiny_recipe, "output_dir": str(tmp_path / "afile" / "out")})


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_dir_is_refused(tiny_recipe, tmp_path, no_model_loads):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(RecipeError, match=r"^output_dir: cannot write into"):
            hf_transfer.train({**tiny_recipe, "output_dir": str(locked / "out")})
    finally:
        locked.chmod(0o755)


def test_unwritable_output_dir_is_found_by_trying(tiny_recipe, tmp_path, no_model_loads, monkeypatch):
    """Also as root (where permission bits do not stop writes): the check writes a probe file and reports why it
    failed, so a read-only filesystem or a full disk is found before training."""
    import tempfile

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_space)
    with pytest.raises(RecipeError, match=r"^output_dir: cannot write into .*No space left on device"):
        hf_transfer.train(tiny_recipe)


def test_push_to_hub_offline_is_refused_before_training(tiny_recipe, no_model_loads, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RecipeError, match=r"^push_to_hub: the Hub is offline"):
        hf_transfer.train({**tiny_recipe, "push_to_hub": True, "hub_model_id": "me/model"})


# ---------------------------------------------------------------------------------------------------------------
# Allowed: the recipe's own folder, a resume, an explicit overwrite (replaced whole)
# ---------------------------------------------------------------------------------------------------------------


def test_rerun_of_the_same_recipe_is_allowed_and_another_recipe_is_refused(tiny_recipe):
    first = hf_transfer.train(tiny_recipe)
    assert (first.output_dir / RUN_MARKER).is_file()
    # the same recipe again (a notebook cell run twice, `make demo` twice): its own folder
    hf_transfer.train(tiny_recipe)
    with pytest.raises(RecipeError, match=r"already holds a run of another recipe \(learning_rate differ\)"):
        hf_transfer.train({**tiny_recipe, "learning_rate": 5e-4})


def test_overwrite_replaces_a_lora_export_whole(tiny_recipe):
    lora = hf_transfer.train({**tiny_recipe, "merge_adapter": True,
                              "peft": {"r": 4, "target_modules": ["query", "value"]}})
    out = lora.output_dir
    assert (out / "adapter_config.json").is_file() and (out / "merged" / "config.json").is_file()
    (out / "my_notes.txt").write_text("written by hand after the run")
    full = hf_transfer.train({**tiny_recipe, "overwrite_output_dir": True})
    names = {p.name for p in out.iterdir()}
    # nothing of the old export is left to be mixed in: no adapter that from_pretrained would silently apply
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "merged", "classifier_config.json",
                        "my_notes.txt"}
    assert {"config.json", "model.safetensors", "README.md", "metrics.json", "recipe.yaml"} <= names
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert not hasattr(reloaded, "peft_config")
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], value.cpu(), msg=name)
    assert not any(p.name.startswith((".staging-", ".old-")) for p in out.parent.iterdir())


def test_checkpoints_of_the_run_survive_the_swap_and_resume_is_allowed(tiny_recipe):
    recipe = {**tiny_recipe, "save_strategy": "steps", "save_steps": 2}
    result = hf_transfer.train(recipe)
    out = result.output_dir
    assert {"checkpoint-2", "checkpoint-4"} <= {p.name for p in out.iterdir()}
    assert (out / "config.json").is_file()
    resumed = hf_transfer.train({**recipe, "max_steps": 6, "resume_from_checkpoint": "latest"})
    assert resumed.metrics["train_steps"] == 6
    assert {"checkpoint-2", "checkpoint-4", "checkpoint-6"} <= {p.name for p in out.iterdir()}


def test_exported_files_follow_the_umask(tiny_recipe):
    old = os.umask(0o027)
    try:
        result = hf_transfer.train({**tiny_recipe, "peft": {"r": 4, "target_modules": ["query"]},
                                    "merge_adapter": True})
    finally:
        os.umask(old)
    out = result.output_dir
    assert out.stat().st_mode & 0o777 == 0o750
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    for name in ("adapter_model.safetensors", "merged/model.safetensors", "README.md", "metrics.json", "recipe.yaml"):
        assert modes[name] == 0o640, (name, oct(modes[name]))
    assert modes["merged"] == 0o750


# ---------------------------------------------------------------------------------------------------------------
# The lock, and a kill -9 at any moment of a publish
# ---------------------------------------------------------------------------------------------------------------


HOLD_LOCK = """
import sys, time
from hf_transfer.outputs import acquire_lock
acquire_lock(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_fails_at_once_and_a_dead_holder_blocks_nobody(tiny_recipe, no_model_loads):
    out = Path(tiny_recipe["output_dir"])
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"^output_dir: .* is being written by another hf-transfer run "
                                            rf"\(pid {holder.pid}\)"):
            hf_transfer.train(tiny_recipe)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without cleaning up: its lock file (with its pid) is still there, but no longer held
    assert lock_path(out).read_text().split()[0] == str(holder.pid)
    acquire_lock(out)
    assert lock_path(out).read_text().split()[0] == str(os.getpid())
    release_lock(out, fully=True)
    assert not lock_path(out).exists()


# A child process publishes NEW over OLD and is killed (SIGKILL) at a chosen point.
PUBLISH_AND_DIE = """
import os, signal, sys
from pathlib import Path
import hf_transfer.outputs as outputs

destination, point, exchange = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "exchange"
def die():
    os.kill(os.getpid(), signal.SIGKILL)

if not exchange:
    outputs._exchange = lambda a, b: False  # the two-rename path of filesystems without RENAME_EXCHANGE
real_rename, real_rmtree = os.rename, outputs.shutil.rmtree
renames = []
def rename(a, b):
    real_rename(a, b)
    renames.append(b)
    if point == "between_renames" and len(renames) == 1:
        die()
def rmtree(path, *args, **kwargs):
    if point == "before_cleanup":
        die()
    real_rmtree(path, *args, **kwargs)
os.rename = rename
outputs.shutil.rmtree = rmtree

stage = outputs.staging_dir(destination)
(stage / "config.json").write_text('{"run": "new"}')
(stage / "model.safetensors").write_text("new weights")
if point == "while_staging":
    die()
outputs.publish_folder(stage, destination)
"""


@pytest.mark.parametrize("point, exchange", [("while_staging", True), ("before_cleanup", True),
                                             ("between_renames", False), ("before_cleanup", False)])
def test_kill_9_during_a_publish_leaves_the_old_or_the_new_folder_whole(tmp_path, point, exchange):
    destination = tmp_path / "model"
    destination.mkdir()
    old = {"config.json": '{"run": "old"}', "model.safetensors": "old weights", "recipe.yaml": "old: 1\n"}
    for name, text in old.items():
        (destination / name).write_text(text)
    new = {"config.json": '{"run": "new"}', "model.safetensors": "new weights"}
    done = subprocess.run([sys.executable, "-c", PUBLISH_AND_DIE, str(destination), point,
                           "exchange" if exchange else "renames"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]

    def state() -> dict[str, str]:
        return {p.name: p.read_text() for p in destination.iterdir()} if destination.is_dir() else {}

    # The next run into the folder repairs what the killed one left: the folder is back, no leftovers.
    release_lock(destination, fully=True)
    from hf_transfer.outputs import _remove_leftovers

    acquire_lock(destination)
    _remove_leftovers(destination, include_own_pid=True)
    release_lock(destination, fully=True)
    assert state() in (old, new), state()
    if point == "while_staging":
        assert state() == old
    if point == "before_cleanup":
        assert state() == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_failed_export_leaves_no_staging_folder(tiny_recipe, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("hf_transfer.run.save_trainer_results", broken)
    with pytest.raises(OSError, match="No space left"):
        hf_transfer.train(tiny_recipe)
    out = Path(tiny_recipe["output_dir"])
    assert not any(p.name.startswith(".staging-") for p in out.parent.iterdir())
    assert not (out / "config.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# Optional diagnostics run after the export
# ---------------------------------------------------------------------------------------------------------------


def test_the_tsne_runs_after_the_export_and_cannot_take_the_model_down(tiny_recipe, monkeypatch):
    from hf_transfer.diagnostics import training_plot

    seen = {}

    def crash(self, model, output_dir):
        seen["exported"] = (Path(output_dir) / "config.json").is_file()
        raise RuntimeError("t-SNE crashed")

    monkeypatch.setenv("HF_TRANSFER_TSNE_PLOT", "1")
    monkeypatch.setattr(training_plot.BeforeAfterPlot, "write", crash)
    with pytest.warns(UserWarning, match="skipped the before/after t-SNE"):
        result = hf_transfer.train({**tiny_recipe, "tsne_plot": True})
    assert seen == {"exported": True}
    assert (result.output_dir / "model.safetensors").is_file()


def test_the_tsne_picture_is_drawn_before_the_push(tiny_recipe, monkeypatch):
    """The picture comes after the model is published, but before the upload, so the Hub repository has it too."""
    from hf_transfer import hub, outputs
    from hf_transfer.diagnostics.training_plot import PLOT_NAME

    pushed = {}

    def fake_push(folder, repo_id, **kwargs):
        pushed["files"] = sorted(p.name for p in Path(folder).iterdir())
        return f"https://huggingface.co/{repo_id}"

    monkeypatch.setenv("HF_TRANSFER_TSNE_PLOT", "1")
    monkeypatch.setattr(outputs, "check_hub_reachable", lambda *a, **k: None)
    monkeypatch.setattr(hub, "push_folder", fake_push)
    hf_transfer.train({**tiny_recipe, "tsne_plot": True, "tsne_rows": 20, "push_to_hub": True,
                       "hub_model_id": "someone/tiny"})
    assert PLOT_NAME in pushed["files"] and "model.safetensors" in pushed["files"]


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints verified before a resume
# ---------------------------------------------------------------------------------------------------------------


def test_latest_passes_over_incomplete_checkpoints_and_says_so(tmp_path, caplog):
    from hf_transfer.checkpoints import resolve_resume_checkpoint

    write_checkpoint(tmp_path / "checkpoint-2")
    write_checkpoint(tmp_path / "checkpoint-4", skip=("optimizer.pt",))
    truncated = write_checkpoint(tmp_path / "checkpoint-6") / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:40])
    with caplog.at_level("WARNING", logger="hf_transfer.checkpoints"):
        assert resolve_resume_checkpoint("latest", tmp_path) == str(tmp_path / "checkpoint-2")
    assert "skipping checkpoint-6: model.safetensors is damaged" in caplog.text
    assert "skipping checkpoint-4: optimizer.pt is missing" in caplog.text


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "optimizer.pt").unlink(), r"optimizer.pt is missing"),
    (lambda f: (f / "scheduler.pt").unlink(), r"scheduler.pt is missing"),
    (lambda f: (f / "rng_state.pth").unlink(), r"rng_state.pth is missing"),
    (lambda f: (f / "model.safetensors").unlink(), r"the model weights \(model.safetensors\) are missing"),
    (lambda f: (f / "optimizer.pt").write_bytes((f / "optimizer.pt").read_bytes()[:-30]),
     r"optimizer.pt is damaged"),
    (lambda f: (f / "trainer_state.json").write_text('{"global_st'), r"trainer_state.json is damaged"),
])
def test_an_explicit_incomplete_checkpoint_is_refused_naming_the_file(tmp_path, damage, message):
    from hf_transfer.checkpoints import resolve_resume_checkpoint

    write_checkpoint(tmp_path / "checkpoint-2")
    folder = write_checkpoint(tmp_path / "checkpoint-4")
    damage(folder)
    with pytest.raises(RecipeError, match=rf"^resume_from_checkpoint: .*checkpoint-4' is incomplete: {message}.*"
                                          r"resume from '.*checkpoint-2'"):
        resolve_resume_checkpoint(str(folder), tmp_path)


def test_a_real_checkpoint_without_its_optimizer_is_refused_before_training(tiny_recipe):
    recipe = {**tiny_recipe, "save_strategy": "steps", "save_steps": 2}
    out = hf_transfer.train(recipe).output_dir
    (out / "checkpoint-4" / "optimizer.pt").unlink()
    with pytest.raises(RecipeError, match=r"checkpoint-4' is incomplete: optimizer.pt is missing"):
        hf_transfer.train({**recipe, "max_steps": 6, "resume_from_checkpoint": str(out / "checkpoint-4")})


# ---------------------------------------------------------------------------------------------------------------
# hf-transfer push
# ---------------------------------------------------------------------------------------------------------------


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf_transfer", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_push_checks_the_folder_and_the_hub_before_creating_anything(tmp_path, monkeypatch):
    from hf_transfer.hub import push_folder

    calls = []
    monkeypatch.setattr("huggingface_hub.create_repo", lambda *a, **k: calls.append(a))
    with pytest.raises(UserError, match=r"^push: .*missing' is not a folder"):
        push_folder(tmp_path / "missing", "me/model")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("text,label\n")
    with pytest.raises(UserError, match=r"^push: .*data' holds no model"):
        push_folder(tmp_path / "data", "me/model")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"^push: the Hub is offline"):
        push_folder(tmp_path / "model", "me/model")
    assert calls == []  # no (empty) repository was created


def test_push_cli_offline_is_one_line_with_exit_2(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    done = _cli("push", str(tmp_path / "model"), "--hub_model_id", "me/model", env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: push: the Hub is offline")
    assert "Traceback" not in done.stderr
    done = _cli("push", str(tmp_path / "nothing"), "--hub_model_id", "me/model")
    assert done.returncode == 2 and "error: push: " in done.stderr and "Traceback" not in done.stderr


def test_check_output_location_records_the_recipe_without_values(tiny_recipe):
    from hf_transfer.recipe import load_recipe

    recipe = load_recipe({**tiny_recipe, "hub_token": "hf_secretSecretSecret"})
    Path(tiny_recipe["output_dir"]).mkdir()  # an empty folder is the run's own (a missing one is not created yet)
    location = check_output_location(recipe)
    release_lock(location.path, fully=True)
    marker = (location.path / RUN_MARKER).read_text()
    assert "hf_secret" not in marker and tiny_recipe["source_data"] not in marker
    assert set(json.loads(marker)) >= {"learning_rate", "source_data", "model_name_or_path"}


def test_a_task_list_recipe_is_checked_too(tmp_path, no_model_loads, review_files, tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    # max_length within the tiny model's 128 positions: the shared model checks run for task lists too
    recipe = {"model_name_or_path": tiny_model_dir, "output_dir": str(out), "use_cpu": True, "max_length": 64,
              "tasks": [{"name": "books", "data": review_files["source"]},
                        {"name": "kitchen", "data": review_files["target"]}]}
    with pytest.raises(RecipeError, match=r"^output_dir: .* already holds a model export"):
        hf_transfer.train(recipe)


def test_docs_table_names_these_tests():
    doc = (REPO / "docs" / "robustness.md").read_text()
    for name in ("test_an_occupied_output_dir_is_refused_before_any_work",
                 "test_kill_9_during_a_publish_leaves_the_old_or_the_new_folder_whole",
                 "test_adapter_reloads_without_hf_transfer_with_its_class_names"):
        assert name in doc, name

