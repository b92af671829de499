"""Training throughput of every hf-transfer method against a plain ``transformers.Trainer``, as a share of the
machine's measured matrix-multiply rate, plus the overhead checks of issue 10 ("Speed").

1. Matmul peak: the median GFLOP/s of square matmuls at the training thread count (CPU: 1024/1536/2048, fp32, by
   wall clock and by process CPU time; GPU: 4096/8192 in fp32, TF32 and bf16), measured at the start of every
   repeat, so it sees the machine load of the runs after it.
2. Throughput: the plain ``Trainer`` (same model, rows, batch, steps, ``DataCollatorWithPadding``) and
   ``hf_transfer.train`` with finetune, LoRA (the ``lora.yaml`` adapter), instance_weighting, dann, cdan, mmd,
   coral, mcc, entropy (method blocks from the shipped recipes) and the multi-task hard-sharing trainer. Every row
   is a review of at least ``--max_length`` tokens, so every batch is exactly ``rows x max_length`` tokens whatever
   the collator pads to, and the FLOPs of a step are constant. A step's time is the interval between consecutive
   ``on_step_end`` callbacks: data loading and collation included (the Trainer fetches a step's batches before
   ``on_step_begin``). ``--warmup`` steps are not timed; configurations alternate order between repeats; the figure
   is the median over repeats of each run's median step. FLOPs per step: ``torch.utils.flop_counter.FlopCounterMode``
   over one ``compute_loss`` + ``backward`` of the trainer itself (method losses included; the optimizer's
   elementwise work is not counted).
3. Checks: where the time of one method's steps goes (``torch.profiler``; hf-transfer's per-step pieces labelled);
   the ops that read a device value on the host (``.item()``/``bool()``/``int()`` of a tensor, boolean-mask
   indexing, device-to-host copies; a ``TorchDispatchMode`` count by source line) in one ``compute_loss`` +
   ``backward`` with the NaN guard in its accelerator (deferred) mode, and in one whole optimizer step inside
   ``Trainer.train``; on a GPU also ``torch.cuda.set_sync_debug_mode`` over whole training steps; whether a second
   ``prepare_data`` on the same files hits the ``datasets`` cache (two fresh processes, a fresh cache folder);
   whether instance weighting's feature pass runs once over three epochs.
4. Speed options: a configuration name takes a suffix ``_bf16``, ``_tf32`` or ``_compile`` (``finetune_compile``,
   ``plain_bf16``) and a batch size ``@N`` (``plain@32``); ``--extras`` adds finetune with each option.

The defaults (11 configurations x 3 repeats of 2 + 6 steps) take about 15 minutes on one CPU thread.

    nice -n 10 python benchmarks/throughput.py --steps 8 --output benchmarks/results/throughput.md
    nice -n 10 python benchmarks/throughput.py --methods plain finetune plain_bf16 --extras --no_checks \
        --profile lora --repeats 2 --output benchmarks/results/throughput_options.md
    nice -n 10 python benchmarks/throughput.py --methods plain plain@32 finetune dann mmd --no_checks --profile none
    python benchmarks/throughput.py --methods plain finetune dann --repeats 1 --steps 3   # a quick look
    nice -n 10 python benchmarks/throughput.py --frozen_cache --rows 256 --frozen_epochs 10 --repeats 2 \
        --output benchmarks/results/throughput_frozen_cache.md   # cache_frozen vs the plain Trainer (issue 23)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_TRANSFER_TSNE_PLOT", "0")  # the before/after t-SNE is a diagnostic, not training

import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

import hf_transfer  # noqa: E402
from hf_transfer.backbones import load_tokenizer, resolve_model_path  # noqa: E402
from hf_transfer.data import load_raw_data, prepare_data  # noqa: E402
from hf_transfer.profiling import HostReads  # noqa: E402
from hf_transfer.recipe import DEFAULT_MODEL, load_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _machine import machine_header, markdown_table  # noqa: E402

RESOURCES = REPO / "hf_transfer" / "resources"
TEXT_RECIPES = REPO / "recipes" / "text_classification"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

DA_METHODS = ("dann", "cdan", "mmd", "coral", "mcc", "entropy")
#: LoRA as ``lora.yaml`` ships it, and variants of that adapter: ``lora_dropout`` with the adapters' input dropout at
#: 0.1 (the recipes' setting before it was measured here), ``lora_qv`` on the attention query and value only.
LORA_VARIANTS = {"lora": {}, "lora_dropout": {"lora_dropout": 0.1}, "lora_qv": {"target_modules": ["query", "value"]}}
ALL_CONFIGS = ("plain", "finetune", *LORA_VARIANTS, "instance_weighting", *DA_METHODS, "multitask_hard")
#: Methods whose losses read the target rows' features only, never their logits: the head's work on those rows is
#: computed and thrown away (issue 23 item 3 measures how much that is).
FEATURE_ONLY_METHODS = ("dann", "mmd", "coral")
# A speed option is a suffix on any configuration: `finetune_bf16`, `plain_compile`, `dann_tf32` ...
OPTIONS = {"bf16": {"bf16": True}, "tf32": {"tf32": True}, "compile": {"torch_compile": True}}
EXTRA_CONFIGS = tuple(f"finetune_{option}" for option in OPTIONS)


def split_option(name: str) -> tuple[str, str | None]:
    """``"finetune_bf16"`` -> ``("finetune", "bf16")``; ``"dann"`` -> ``("dann", None)``; ``"plain@32"`` ->
    ``("plain", None)``."""
    name = name.split("@", 1)[0]
    base, _, option = name.rpartition("_")
    return (base, option) if base in ALL_CONFIGS and option in OPTIONS else (name, None)


def batch_of(name: str, args) -> int:
    """A configuration's batch: ``--batch_size``, or ``N`` for a name ending in ``@N`` (``plain@32``)."""
    return int(name.split("@", 1)[1]) if "@" in name else args.batch_size


def configuration(name: str) -> str:
    batch = name.split("@", 1)[1] if "@" in name else "1"
    if split_option(name)[0] not in ALL_CONFIGS or not batch.isdigit() or int(batch) < 1:
        raise argparse.ArgumentTypeError(
            f"{name!r}: choose from {', '.join(ALL_CONFIGS)}, optionally with a suffix _{', _'.join(OPTIONS)} "
            "and a batch size @N"
        )
    return name


def precision(name: str) -> str:
    option = split_option(name)[1]
    return option if option in ("bf16", "tf32") else "fp32"


# ---- timing ----------------------------------------------------------------------------------------------------


class IntervalTimer(TrainerCallback):
    """Wall and process-CPU clock at the start of training and at the end of every optimizer step (on a GPU after
    a synchronisation, so a step's queued kernels count in its own time)."""

    def __init__(self):
        self.marks: list[tuple[float, float]] = []

    def _mark(self) -> None:
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        self.marks.append((time.perf_counter(), time.process_time()))

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks = []
        self._mark()

    def on_step_end(self, args, state, control, **kwargs):
        self._mark()

    def summary(self, warmup: int, steps: int) -> dict[str, float]:
        wall = [b[0] - a[0] for a, b in zip(self.marks, self.marks[1:])]
        cpu = [b[1] - a[1] for a, b in zip(self.marks, self.marks[1:])]
        timed_wall, timed_cpu = wall[warmup : warmup + steps], cpu[warmup : warmup + steps]
        if not timed_wall:
            raise RuntimeError(f"no timed steps: {len(wall)} steps ran, {warmup} are warm-up")
        return {
            "wall_step": statistics.median(timed_wall),
            "cpu_step": statistics.median(timed_cpu),
            "wall_mean": sum(timed_wall) / len(timed_wall),
            "first_step": wall[0],
            "steps": len(timed_wall),
        }


def matmul_gflops(sizes, *, dtype="fp32", repeats: int = 5) -> dict[int, dict[str, float]]:
    """Median GFLOP/s of ``n x n @ n x n`` per size, by wall clock and by process CPU time, at the current
    ``torch.get_num_threads()``. ``dtype``: fp32 (TF32 off), tf32 (GPU) or bf16."""
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    inner = 20 if DEVICE == "cuda" else 1
    out = {}
    try:
        for n in sizes:
            a = torch.randn(n, n, device=DEVICE).to(torch_dtype)
            b = torch.randn(n, n, device=DEVICE).to(torch_dtype)
            for _ in range(2):
                a @ b
            sync()
            wall, cpu = [], []
            for _ in range(repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                for _ in range(inner):
                    a @ b
                sync()
                wall.append((time.perf_counter() - start) / inner)
                cpu.append((time.process_time() - start_cpu) / inner)
            flop = 2 * n**3 / 1e9
            out[n] = {"wall": flop / statistics.median(wall), "cpu": flop / max(statistics.median(cpu), 1e-9)}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return out


def measure_peaks(extras: bool) -> dict[str, dict]:
    """``{dtype: {size: {wall, cpu}}}`` for the precisions the runs use."""
    if DEVICE == "cuda":
        return {d: matmul_gflops((4096, 8192), dtype=d) for d in ("fp32", "tf32", "bf16")}
    peaks = {"fp32": matmul_gflops((1024, 1536, 2048))}
    if extras:
        peaks["bf16"] = matmul_gflops((1024, 2048), dtype="bf16")
    return peaks


# ---- data: reviews that fill max_length ------------------------------------------------------------------------


def long_rows(path: Path, tokenizer, max_length: int, count: int, *, skip: int = 0) -> list[dict]:
    """``count`` rows (after ``skip``) whose text has at least ``max_length`` tokens, the classes interleaved (the
    files are sorted by label, so any slice holds every class)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)["input_ids"]
    by_label: dict = {}
    for row, ids in zip(rows, encoded):
        if len(ids) >= max_length:
            by_label.setdefault(row.get("label"), []).append(row)
    picked = [r for group in zip(*by_label.values()) for r in group][skip : skip + count]
    if len(picked) < count:
        raise SystemExit(f"{path}: only {len(picked)} reviews of >= {max_length} tokens; lower --max_length or --rows")
    return picked


def write_jsonl(path: Path, rows: list[dict], keys: tuple[str, ...]) -> str:
    path.write_text("".join(json.dumps({k: r[k] for k in keys}) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def make_data(args, workdir: Path) -> dict[str, str]:
    tokenizer = load_tokenizer(args.model)
    amazon = Path(args.amazon)
    books = amazon / "books.jsonl" if amazon.is_dir() else RESOURCES / "amazon_books_demo.jsonl"
    kitchen = amazon / "kitchen.jsonl" if amazon.is_dir() else RESOURCES / "amazon_kitchen_demo.jsonl"
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    n, length = args.rows, args.max_length
    src, tgt = long_rows(books, tokenizer, length, n), long_rows(kitchen, tokenizer, length, n)
    src_eval = long_rows(books, tokenizer, length, 16, skip=n)
    tgt_eval = long_rows(kitchen, tokenizer, length, 16, skip=n)
    return {
        "source": write_jsonl(data / "source.jsonl", src, ("text", "label")),
        "target": write_jsonl(data / "target.jsonl", tgt, ("text",)),  # no labels: no target evaluation
        "target_labelled": write_jsonl(data / "target_labelled.jsonl", tgt, ("text", "label")),
        "source_eval": write_jsonl(data / "source_eval.jsonl", src_eval, ("text", "label")),
        "target_eval": write_jsonl(data / "target_eval.jsonl", tgt_eval, ("text", "label")),
        "books": str(books),
        "kitchen": str(kitchen),
    }


# ---- configurations --------------------------------------------------------------------------------------------


def recipe_block(recipe: str, key: str) -> dict:
    path = TEXT_RECIPES / f"{recipe}.yaml"
    if not path.is_file():
        return {}
    return dict((yaml.safe_load(path.read_text()) or {}).get(key) or {})


def training_fields(args, output_dir: Path, max_steps: int | None = None, batch: int | None = None) -> dict:
    fields = {
        "output_dir": str(output_dir),
        "max_steps": max_steps or args.warmup + args.steps + (args.sync_audit_steps if DEVICE == "cuda" else 0),
        "per_device_train_batch_size": batch or args.batch_size,
        "learning_rate": 5e-5,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 10_000,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 42,
    }
    if DEVICE == "cpu":
        fields.update(use_cpu=True, dataloader_pin_memory=False)
    return fields


def hf_recipe(name: str, args, files: dict[str, str], output_dir: Path) -> dict:
    """The ``hf_transfer.train`` recipe mapping of a configuration."""
    batch = batch_of(name, args)
    name, option = split_option(name)
    fields = {
        **training_fields(args, output_dir, batch=batch),
        **OPTIONS.get(option, {}),
        "model_name_or_path": args.model,
        "max_length": args.max_length,
    }
    if name == "multitask_hard":
        return {
            **fields,
            "sharing": "hard",
            "tasks": [
                {"name": "books", "data": files["source"], "eval_data": files["source_eval"]},
                {"name": "kitchen", "data": files["target_labelled"], "eval_data": files["target_eval"]},
            ],
        }
    single = {**fields, "source_data": files["source"], "target_data": None, "source_eval_fraction": 0.0}
    if name == "finetune":
        return {**single, "method": ["finetune"]}
    if name in LORA_VARIANTS:
        return {**single, "method": ["finetune"], "peft": {**recipe_block("lora", "peft"), **LORA_VARIANTS[name]}}
    # target rows without labels: nothing to evaluate; the methods see only their texts
    return {**single, "target_data": files["target"], "method": [name], name: recipe_block(name, name)}


def run_plain(
    args, files: dict[str, str], output_dir: Path, callbacks: list, option: str | None, batch: int
) -> Trainer:
    """A plain Trainer on exactly the rows hf-transfer trains on (same tokenisation, same token count)."""
    recipe = load_recipe(
        {
            "source_data": files["source"],
            "target_data": None,
            "max_length": args.max_length,
            "source_eval_fraction": 0.0,
            "model_name_or_path": args.model,
        }
    )
    tokenizer = load_tokenizer(args.model)
    data = prepare_data(load_raw_data(recipe.data), tokenizer, recipe.data, seed=42)
    set_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(args.model), num_labels=2)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**training_fields(args, output_dir, batch=batch), **OPTIONS.get(option, {})),
        train_dataset=data.train.remove_columns(["length"]),
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=callbacks,
    )
    trainer.train()
    return trainer


def run_config(name: str, args, files: dict[str, str], workdir: Path, callbacks: list):
    """Train one configuration; returns its trainer (kept for the FLOP count and the wait audit)."""
    output_dir = workdir / "runs" / name
    shutil.rmtree(output_dir, ignore_errors=True)
    try:
        base, option = split_option(name)
        if base == "plain":
            return run_plain(args, files, output_dir, callbacks, option, batch_of(name, args))
        return hf_transfer.train(hf_recipe(name, args, files, output_dir), callbacks=callbacks).trainer
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)


# ---- FLOPs and waits of one training step ----------------------------------------------------------------------


def one_batch(trainer: Trainer) -> tuple[dict, int]:
    """A training batch on the trainer's device, and its number of model rows."""
    trainer.model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    return batch, int(batch["input_ids"].shape[0])


#: The module names of a sequence classifier's output layer (BERT-type ``classifier``, decoder-type ``score``).
HEAD_MODULES = ("classifier", "score")


def step_flops(trainer: Trainer) -> tuple[float, int, float]:
    """FLOPs of one forward + backward through the trainer's own ``compute_loss`` (method losses included), its
    number of model rows, and the FLOPs of the classification head's output layer in that step (forward and
    backward: ``FlopCounterMode`` attributes both to the module)."""
    batch, rows = one_batch(trainer)
    with FlopCounterMode(display=False) as counter:
        trainer.compute_loss(trainer.model, dict(batch)).backward()
    trainer.model.zero_grad(set_to_none=True)
    if hasattr(trainer, "method_stack"):
        trainer.method_stack.zero_grad(set_to_none=True)
    by_module = counter.get_flop_counts()
    # The outermost module of each head name: its count includes its children's, so nothing is counted twice.
    heads = [m for m in by_module if m.rsplit(".", 1)[-1] in HEAD_MODULES]
    heads = [m for m in heads if not any(m.startswith(f"{other}.") for other in heads)]
    head = sum(float(sum(by_module[m].values())) for m in heads)
    return float(counter.get_total_flops()), rows, head


def step_waits(trainer: Trainer) -> dict[str, int]:
    """Host reads of device values (:class:`HostReads`) in one ``compute_loss`` + ``backward``, with the NaN guard
    in its accelerator mode (checked at logging steps only)."""
    guard = getattr(trainer, "loss_guard", None)
    saved = guard.check_every_step if guard is not None else None
    if guard is not None:
        guard.check_every_step = False
    batch, _ = one_batch(trainer)
    reads = HostReads(skip_files=(__file__,))
    try:
        with reads:
            trainer.compute_loss(trainer.model, dict(batch)).backward()
    finally:
        if guard is not None:
            guard.check_every_step = saved
    trainer.model.zero_grad(set_to_none=True)
    if hasattr(trainer, "method_stack"):
        trainer.method_stack.zero_grad(set_to_none=True)
    return dict(reads.found)


class StepHostReads(TrainerCallback):
    """:class:`HostReads` over one whole optimizer step inside ``Trainer.train`` (the batch fetch, ``training_step``,
    the Trainer's loss checks, clipping, the optimizer, callbacks): the step ending at ``on_step_end`` of ``step``.
    The NaN guard is in the mode it has on this device (on a CPU it reads the loss every step, by design)."""

    def __init__(self, step: int):
        self.step = step
        self.mode: HostReads | None = None
        self.found: dict[str, int] = {}

    def _enter(self) -> None:
        self.mode = HostReads(skip_files=(__file__,))
        self.mode.__enter__()

    def on_train_begin(self, args, state, control, **kwargs):
        if self.step == 1:
            self._enter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            self._enter()
        elif state.global_step == self.step and self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.found, self.mode = dict(self.mode.found), None


class SyncAudit(TrainerCallback):
    """(GPU) ``torch.cuda.set_sync_debug_mode("warn")`` over optimizer steps ``start+1 .. stop``; the warnings it
    raises are counted by the Python line that caused them."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop
        self.records: list = []
        self._catcher = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.start:
            torch.cuda.synchronize()
            self._catcher = warnings.catch_warnings(record=True)
            self.records = self._catcher.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        elif state.global_step == self.stop and self._catcher is not None:
            torch.cuda.set_sync_debug_mode(0)
            self._catcher.__exit__(None, None, None)
            self._catcher = None

    def per_step(self) -> dict[str, float]:
        steps = self.stop - self.start
        where = Counter(
            f"{w.filename.split('/site-packages/')[-1].split(str(REPO) + '/')[-1]}:{w.lineno}"
            for w in self.records
            if "synchroniz" in str(w.message)
        )
        return {k: v / steps for k, v in sorted(where.items())}


# ---- profile of one method's steps -----------------------------------------------------------------------------


class ProfileSteps(TrainerCallback):
    """Profiles optimizer steps ``start+1 .. stop`` (everything between those ``on_step_end`` calls)."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop
        self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.wall = self.cpu = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.start:
            self.prof.start()
            self._t, self._c = time.perf_counter(), time.process_time()
        elif state.global_step == self.stop:
            self.wall, self.cpu = time.perf_counter() - self._t, time.process_time() - self._c
            self.prof.stop()


@contextlib.contextmanager
def labelled_hf_transfer_pieces():
    """Label hf-transfer's per-step Python pieces in the profile (patched on the classes for this run only)."""
    from hf_transfer import trainer as trainer_module
    from hf_transfer.data import TransferCollator

    patches = [
        (TransferCollator, "__call__", "hf_transfer: TransferCollator (pads source + target)"),
        (trainer_module.TransferTrainer, "compute_loss", "hf_transfer: compute_loss (model forward inside)"),
        (trainer_module.MethodStack, "forward", "hf_transfer: method losses (MethodStack.forward)"),
        (trainer_module.NonFiniteLossGuard, "observe", "hf_transfer: NaN guard (observe)"),
        (trainer_module.TransferTrainer, "_accumulate", "hf_transfer: log accumulation"),
    ]
    saved = []
    for cls, attr, label in patches:
        original = cls.__dict__[attr]

        def wrapped(*a, _original=original, _label=label, **k):
            with torch.profiler.record_function(_label):
                return _original(*a, **k)

        saved.append((cls, attr, original))
        setattr(cls, attr, wrapped)
    try:
        yield
    finally:
        for cls, attr, original in saved:
            setattr(cls, attr, original)


MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def profile_method(name: str, args, files: dict[str, str], workdir: Path, steps: int = 3) -> dict:
    callback = ProfileSteps(args.warmup, args.warmup + steps)
    saved_steps, args.steps = args.steps, steps
    try:
        with labelled_hf_transfer_pieces():
            run_config(name, args, files, workdir, [callback])
    finally:
        args.steps = saved_steps
    averages = callback.prof.key_averages()
    wall_us = callback.wall * 1e6  # op times are wall-clock intervals: shares are of the profiled wall time
    ops = [(e.key, e.self_cpu_time_total, e.count) for e in averages if e.key.startswith("aten::")]
    op_total = sum(t for _, t, _ in ops)
    matmul = sum(t for k, t, _ in ops if k in MATMUL_OPS)
    top = sorted((o for o in ops if o[0] not in MATMUL_OPS), key=lambda o: -o[1])[:12]
    labelled = {e.key: (e.cpu_time_total, e.count) for e in averages if e.key.startswith("hf_transfer:")}
    return {
        "method": name,
        "steps": steps,
        "wall_s_per_step": callback.wall / steps,
        "cpu_s_per_step": callback.cpu / steps,
        "matmul_share": matmul / wall_us,
        "other_aten_share": (op_total - matmul) / wall_us,
        "outside_aten_share": 1 - op_total / wall_us,
        "top_non_matmul_ops": [
            {"op": k, "self_ms_per_step": t / 1e3 / steps, "share": t / wall_us, "calls_per_step": c / steps}
            for k, t, c in top
        ],
        "hf_transfer_pieces": {
            k: {"ms_per_step": t / 1e3 / steps, "share": t / wall_us, "calls_per_step": c / steps}
            for k, (t, c) in labelled.items()
        },
    }


# ---- data and instance-weighting checks ------------------------------------------------------------------------


def prepare_once(source: str, target: str, max_length: int, model: str = DEFAULT_MODEL) -> dict:
    """(Run in a fresh process.) Time ``load_raw_data`` and ``prepare_data`` (twice) and list the cache files
    behind the tokenised tables."""
    recipe = load_recipe({"source_data": source, "target_data": target, "max_length": max_length})
    tokenizer = load_tokenizer(model)
    start = time.perf_counter()
    raw = load_raw_data(recipe.data)
    loaded = time.perf_counter()
    data = prepare_data(raw, tokenizer, recipe.data, seed=42)
    done = time.perf_counter()
    prepare_data(raw, tokenizer, recipe.data, seed=42)
    again = time.perf_counter() - done
    tables = [data.train, data.source_eval, data.target, data.target_eval]
    caches = sorted(
        {
            Path(f["filename"]).name
            for t in tables
            if t is not None
            for f in t.cache_files
            if Path(f["filename"]).name.startswith("cache-")
        }
    )
    return {
        "rows": len(data.train) + len(data.target),
        "load_s": loaded - start,
        "prepare_s": done - loaded,
        "prepare_again_same_process_s": again,
        "tokenised_cache_files": caches,
    }


def tokenisation_cache_check(files: dict[str, str], workdir: Path, max_length: int, model: str) -> dict:
    cache = workdir / "datasets_cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache)}
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, __file__, "--_prepare_once", files["books"], files["kitchen"], str(max_length), model],
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "files": [files["books"], files["kitchen"]],
        "first_process": runs[0],
        "second_process": runs[1],
        "same_cache_files": runs[0]["tokenised_cache_files"] == runs[1]["tokenised_cache_files"],
    }


def instance_weighting_feature_passes(args, files: dict[str, str], workdir: Path) -> dict:
    """Count the frozen feature passes of instance weighting over 3 epochs (32 source rows, batch 16, 6 steps)."""
    from hf_transfer.methods import instance_weighting as iw

    calls: list[int] = []
    original = iw.embed

    def counted(model, dataset, *a, **k):
        calls.append(len(dataset))
        return original(model, dataset, *a, **k)

    rows = [json.loads(line) for line in Path(files["source"]).read_text().splitlines()][:32]
    source = write_jsonl(workdir / "data" / "source32.jsonl", rows, ("text", "label"))
    output_dir = workdir / "runs" / "iw_epochs"
    recipe = {
        **training_fields(args, output_dir, max_steps=6),
        "model_name_or_path": args.model,
        "max_length": args.max_length,
        "source_data": source,
        "target_data": files["target"],
        "source_eval_fraction": 0.0,
        "method": ["instance_weighting"],
        "instance_weighting": recipe_block("instance_weighting", "instance_weighting"),
    }
    iw.embed = counted
    try:
        result = hf_transfer.train(recipe)
    finally:
        iw.embed = original
        shutil.rmtree(output_dir, ignore_errors=True)
    return {
        "epochs": float(result.trainer.state.epoch),
        "steps": result.trainer.state.global_step,
        "embed_calls": len(calls),
        "rows_embedded_per_call": calls,
    }


# ---- report ----------------------------------------------------------------------------------------------------


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def peak_of(results: dict, dtype: str, clock: str) -> float:
    """Median over repeats of the best size's rate."""
    each = [max(v[clock] for v in p[dtype].values()) for p in results["peaks"] if dtype in p]
    return statistics.median(each) if each else float("nan")


def summarise(results: dict, args) -> None:
    summary = {}
    for name, runs in results["runs"].items():
        wall = statistics.median(r["wall_step"] for r in runs)
        cpu = statistics.median(r["cpu_step"] for r in runs)
        info = results["flops"][name]
        dtype = precision(name) if precision(name) in results["peaks"][0] else "fp32"
        gflop = info["flops"] / 1e9
        summary[name] = {
            "wall_step": wall,
            "cpu_step": cpu,
            "rows_per_step": info["rows"],
            "samples_per_s": batch_of(name, args) / wall,
            "rows_per_s": info["rows"] / wall,
            "rows_per_cpu_s": info["rows"] / cpu,
            "gflop_per_step": gflop,
            "gflops": gflop / wall,
            "peak_dtype": dtype,
            "share_of_peak_wall": gflop / wall / peak_of(results, dtype, "wall"),
            "share_of_peak_cpu": gflop / cpu / peak_of(results, dtype, "cpu"),
            "first_step_s": statistics.median(r["first_step"] for r in runs),
        }
    results["summary"] = summary


def head_work_section(results: dict) -> list[str]:
    """The classification head's share of a step's FLOPs, and for the methods that read only the target rows'
    features (:data:`FEATURE_ONLY_METHODS`) the part of it spent on rows whose logits no loss reads."""
    rows = []
    for name in results["order"]:
        info = results["flops"].get(name, {})
        if not info.get("head_flops") or not info.get("flops"):
            continue
        unread = info["head_flops"] / 2 if split_option(name)[0] in FEATURE_ONLY_METHODS else 0.0  # 16 of 32 rows
        rows.append([name, f"{info['head_flops'] / 1e3:.1f}", f"{info['head_flops'] / info['flops']:.1e}",
                     f"{unread / info['flops']:.1e}" if unread else "0 (every row's logits are read)"])
    if not rows:
        return []
    return [
        "",
        "Work no loss reads: FLOPs of the classification head's output layer in one step (forward and backward, "
        "`FlopCounterMode` by module) and their share of the step's FLOPs. dann, mmd and coral read only the target "
        "rows' features, so the head's work on the target rows is computed and discarded; cdan, mcc and entropy read "
        "the target logits.",
        "",
        markdown_table(["configuration", "head kFLOP/step", "share of the step", "share spent on unread rows"], rows),
    ]


def report(args, results: dict) -> str:
    gpu = DEVICE == "cuda"
    summary = results["summary"]
    base = summary.get("plain") or summary.get("finetune")
    base_name = "plain" if "plain" in summary else "finetune"
    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
    device = torch.cuda.get_device_name() if gpu else f"CPU, {threads} (`torch.set_num_threads`)"
    lines = [
        "# Training throughput (`benchmarks/throughput.py`)",
        "",
        machine_header(
            {
                "torch": f"{torch.__version__}; {device}",
                "hf-transfer commit": results["commit"],
                "load average (1/5/15 min)": f"start {results['load_start']}, end {results['load_end']}; after each "
                f"repeat: {', '.join(results['load_after_repeat'])}",
                "workload": f"{args.model}, batch {args.batch_size}, every row {args.max_length} tokens (reviews "
                f"of >= {args.max_length} tokens, truncated), {args.warmup} warm-up + {args.steps} timed steps a run, "
                f"{args.repeats} repeats, order alternating",
            }
        ),
        "",
    ]
    peak_rows = []
    for dtype in results["peaks"][0]:
        last = results["peaks"][-1][dtype]
        peak_rows.append(
            [
                dtype,
                ", ".join(f"{n}: {v['wall']:.0f}" for n, v in last.items()),
                f"**{peak_of(results, dtype, 'wall'):.1f}**",
            ]
            + ([] if gpu else [f"{peak_of(results, dtype, 'cpu'):.1f}"])
        )
    lines += [
        "Matmul peak, measured before each repeat (median of 5 products per size; the peak is the best size, median "
        "over repeats):",
        "",
        markdown_table(
            ["dtype", "GFLOP/s by size (last repeat, wall)", "peak GFLOP/s (wall)"]
            + ([] if gpu else ["peak GFLOP per CPU-second"]),
            peak_rows,
        ),
        "",
    ]
    rows = []
    for name in results["order"]:
        s = summary[name]
        row = [
            name + (" (baseline)" if name == base_name else ""),
            s["rows_per_step"],
            f"{s['wall_step']:.3f}" if not gpu else f"{s['wall_step'] * 1e3:.1f} ms",
        ]
        if not gpu:
            row.append(f"{s['cpu_step']:.3f}")
        row += [
            f"{s['samples_per_s']:.2f}",
            f"{s['rows_per_s']:.2f}",
            f"{base['wall_step'] / s['wall_step']:.3f}",
            f"**{s['rows_per_s'] / base['rows_per_s']:.3f}**",
        ]
        if not gpu:
            row.append(f"{s['rows_per_cpu_s'] / base['rows_per_cpu_s']:.3f}")
        row += [
            f"{s['gflop_per_step']:.1f}",
            f"{s['gflops']:.1f}",
            f"**{s['share_of_peak_wall']:.2f}**" + (f" ({s['peak_dtype']})" if s["peak_dtype"] != "fp32" else ""),
        ]
        if not gpu:
            row.append(f"{s['share_of_peak_cpu']:.2f}")
        row.append(", ".join(f"{r['wall_step']:.3f}" for r in results["runs"][name]))
        rows.append(row)
    header = (
        ["configuration", "model rows/step", "wall s/step"]
        + ([] if gpu else ["CPU s/step"])
        + ["samples/s", "model rows/s", "samples/s ratio", "rows/s ratio"]
        + ([] if gpu else ["rows/CPU-s ratio"])
        + ["GFLOP/step", "GFLOP/s", "share of matmul peak"]
        + ([] if gpu else ["share of peak, CPU time"])
        + ["wall s/step, each repeat"]
    )
    lines += [
        markdown_table(header, rows),
        "",
        "A *sample* is a row the sampler draws (a source review; for dann/cdan/mmd/coral/mcc/entropy a source review "
        "paired with a target review); *model rows* are the rows the encoder runs on (the adaptation methods: 16 "
        f"source + 16 target a step). Ratios divide by the {base_name} run's figure (> 1 = faster). GFLOP/step: "
        "`FlopCounterMode` over one `compute_loss` + `backward` (matmuls and attention; the optimizer's elementwise "
        "work not counted). Share of matmul peak = GFLOP/s / the measured peak of the same dtype"
        + (
            "."
            if gpu
            else "; by CPU time = GFLOP per CPU-second of the run / the matmul's GFLOP per CPU-second, the "
            "figure other jobs on the cores do not move."
        ),
    ]
    lines += head_work_section(results)
    if any(s["first_step_s"] > 3 * s["wall_step"] for s in summary.values()):
        lines += [
            "",
            "First step (untimed; compilation, allocation): "
            + ", ".join(f"{k} {s['first_step_s']:.1f} s" for k, s in summary.items()),
        ]
    if results.get("errors"):
        lines += ["", "Not measured: " + "; ".join(f"`{k}`: {v}" for k, v in results["errors"].items())]
    if results.get("profile"):
        p = results["profile"]
        lines += [
            "",
            f"## Where a `{p['method']}` step goes (torch.profiler over {p['steps']} steps after warm-up; "
            f"{p['cpu_s_per_step']:.2f} CPU s/step, {p['wall_s_per_step']:.2f} wall s/step under the profiler)",
            "",
            f"Shares of the profiled wall time: matmuls (mm/addmm/bmm) {p['matmul_share']:.1%}; other aten ops "
            f"{p['other_aten_share']:.1%}; outside aten ops (Python: Trainer, collator, hooks, optimizer loop; and "
            f"time the core ran other jobs between ops) {p['outside_aten_share']:.1%}.",
            "",
            markdown_table(
                ["non-matmul aten op (self time)", "ms/step", "share", "calls/step"],
                [
                    [o["op"], f"{o['self_ms_per_step']:.1f}", f"{o['share']:.1%}", f"{o['calls_per_step']:.0f}"]
                    for o in p["top_non_matmul_ops"]
                ],
            ),
            "",
            markdown_table(
                ["hf-transfer piece (inclusive)", "ms/step", "share", "calls/step"],
                [
                    [k, f"{v['ms_per_step']:.1f}", f"{v['share']:.1%}", f"{v['calls_per_step']:.0f}"]
                    for k, v in p["hf_transfer_pieces"].items()
                ],
            ),
        ]
    def host_reads_section(title: str, text: str, counts: dict) -> list[str]:
        rows = [[k, sum(v.values()), "; ".join(f"{w} ×{c}" for w, c in sorted(v.items())) or "none"]
                for k, v in counts.items()]
        return ["", title, "", text, "", markdown_table(["configuration", "per step", "where"], rows, align="lrl")]

    if results.get("waits"):
        lines += host_reads_section(
            "## Host reads of device values in one training step (compute_loss + backward)",
            "Counted by a `TorchDispatchMode` (`.item()`/`bool()`/`int()` of a tensor, boolean-mask indexing "
            "and `nonzero`, device-to-host copies), by the line that issued them, with the NaN guard in its "
            "accelerator mode. Free on a CPU; on a GPU each one waits for the queued kernels. The Trainer "
            "loop's own per-step checks (outside `compute_loss`) are not in this count.",
            results["waits"],
        )
    if results.get("step_waits"):
        lines += host_reads_section(
            f"## Host reads of device values in a whole optimizer step (step {args.warmup}, inside `Trainer.train`)",
            "The same count over everything between two `on_step_end` callbacks: batch fetch and collation, "
            "`training_step`, the Trainer's own loss checks, gradient clipping, the optimizer, callbacks. The NaN "
            "guard runs in its CPU mode here (a read every step, by design; deferred to logging steps on an "
            "accelerator). `.cpu()` of a CPU tensor is a no-op and cannot show here.",
            results["step_waits"],
        )
    if results.get("syncs"):
        lines += [
            "",
            f"## CUDA synchronisations per optimizer step (`torch.cuda.set_sync_debug_mode`, "
            f"{args.sync_audit_steps} whole steps after the timed ones)",
            "",
        ]
        lines.append(
            markdown_table(
                ["configuration", "syncs/step", "where (file:line, per step)"],
                [
                    [k, f"{sum(v.values()):.1f}", "; ".join(f"{w} ×{c:g}" for w, c in v.items()) or "none"]
                    for k, v in results["syncs"].items()
                ],
                align="lrl",
            )
        )
    t = results.get("tokenisation_cache")
    if t and "error" not in t:
        a, b = t["first_process"], t["second_process"]
        lines += [
            "",
            "## Tokenisation cache (`datasets` fingerprints)",
            "",
            f"`prepare_data` on {' + '.join(Path(f).name for f in t['files'])} ({a['rows']:,} rows, max_length "
            f"{args.max_length}) in two fresh processes sharing a new `HF_DATASETS_CACHE`: {a['prepare_s']:.2f} s "
            f"in the first, {b['prepare_s']:.2f} s in the second; called again in the same process: "
            f"{a['prepare_again_same_process_s']:.2f} s / {b['prepare_again_same_process_s']:.2f} s. The same "
            f"cache files back both runs: {t['same_cache_files']} ({len(a['tokenised_cache_files'])} files).",
        ]
    elif t:
        lines += ["", f"Tokenisation cache check failed: {t['error']}"]
    w = results.get("instance_weighting_passes")
    if w:
        lines += [
            "",
            "## Instance weighting's feature pass",
            "",
            f"{w['steps']} steps = {w['epochs']:.1f} epochs of 32 source rows: `embed` ran {w['embed_calls']} "
            f"times, over {w['rows_embedded_per_call']} rows (the source once, the target once), before "
            "training; the weights then ride along as a column.",
        ]
    if results.get("tf32_on_this_machine"):
        lines += ["", f"`tf32: true` in a recipe on this machine: {results['tf32_on_this_machine']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(ALL_CONFIGS),
        type=configuration,
        help="configurations; a suffix _bf16, _tf32 or _compile adds that speed option (e.g. finetune_compile)",
    )
    parser.add_argument("--extras", action="store_true", help="also time finetune with bf16, tf32, torch_compile")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps before them")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--rows", type=int, default=256, help="source (and target) rows of the benchmark data")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--amazon",
        default=str(REPO.parent / "shared" / "data" / "amazon"),
        help="folder of the Amazon review files (default: the packaged demo reviews if missing)",
    )
    parser.add_argument("--profile", default="dann", help="method whose steps to profile; 'none' to skip")
    parser.add_argument("--no_checks", action="store_true", help="skip the waits, cache and instance checks")
    parser.add_argument("--sync_audit_steps", type=int, default=3, help="(GPU) steps under the sync debug mode")
    parser.add_argument("--workdir", default="/tmp/hf_transfer_throughput")
    parser.add_argument("--output", default=None, help="write the markdown here and the JSON beside it")
    parser.add_argument("--_prepare_once", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--frozen_cache", action="store_true",
                        help="only the frozen-prefix caching comparison (benchmarks/frozen_cache.py): linear probe "
                        "and top-2 layers, plain Trainer vs cache_frozen off/on, --frozen_epochs epochs, --rows rows")
    parser.add_argument("--frozen_epochs", type=int, default=10, help="epochs of each --frozen_cache run")
    parser.add_argument("--frozen_plans", nargs="+", default=["probe", "top2"], choices=["probe", "top2"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args._prepare_once:
        source, target, max_length, *model = args._prepare_once
        print(json.dumps(prepare_once(source, target, int(max_length), *model)))
        return
    workdir = Path(args.workdir)
    configs = list(dict.fromkeys([*args.methods, *(EXTRA_CONFIGS if args.extras else ())]))
    files = make_data(args, workdir)
    if args.frozen_cache:
        from frozen_cache import feature_reuse, feature_reuse_table, frozen_cache_comparison, frozen_cache_table

        frozen = frozen_cache_comparison(args, files, workdir)
        frozen["feature_reuse"] = feature_reuse(args, files, workdir)
        text = "# Frozen-prefix caching (`benchmarks/throughput.py --frozen_cache`)\n\n" + machine_header(
            {"torch": f"{torch.__version__}; {DEVICE}, {args.threads} thread(s)"}) + "\n" + frozen_cache_table(
            frozen, args) + "\n" + feature_reuse_table(frozen["feature_reuse"])
        print(text)
        if args.output:
            out = Path(args.output)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            out.with_suffix(".json").write_text(json.dumps({"args": vars(args), **frozen}, indent=2, default=str))
        return
    code = Path(hf_transfer.__file__).resolve().parents[1]  # the hf_transfer actually imported
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=code)
    dirty = subprocess.run(["git", "status", "--porcelain", "hf_transfer"], capture_output=True, text=True, cwd=code)
    if commit.returncode != 0:  # an exported snapshot (git archive): say which commit it is
        commit.stdout = os.environ.get("HF_TRANSFER_COMMIT", f"? ({code})")
    results: dict = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "device": DEVICE,
        "commit": (commit.stdout.strip() or "?") + (" + local changes" if dirty.stdout.strip() else ""),
        "load_start": load_average(),
        "args": {k: v for k, v in vars(args).items() if k != "_prepare_once"},
        "order": configs,
        "runs": {c: [] for c in configs},
        "flops": {},
        "peaks": [],
        "load_after_repeat": [],
        "errors": {},
    }

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} load {load_average()}] {msg}", file=sys.stderr, flush=True)

    audit_start = args.warmup + args.steps
    for repeat in range(args.repeats):
        peaks = measure_peaks(args.extras)
        results["peaks"].append(peaks)
        log(
            f"repeat {repeat}: matmul "
            + "; ".join(
                f"{d} " + ", ".join(f"{n}: {v['wall']:.0f}/{v['cpu']:.0f}" for n, v in p.items())
                for d, p in peaks.items()
            )
            + " GFLOP/s (wall/CPU)"
        )
        for name in configs if repeat % 2 == 0 else configs[::-1]:
            if name in results["errors"]:
                continue
            timer = IntervalTimer()
            callbacks: list = [timer]
            audit = reads = None
            if DEVICE == "cuda" and not args.no_checks and name not in results.get("syncs", {}):
                audit = SyncAudit(audit_start, audit_start + args.sync_audit_steps)
                callbacks.append(audit)
            if not args.no_checks and name not in results.get("step_waits", {}):
                reads = StepHostReads(args.warmup)  # the last warm-up step: not timed
                callbacks.append(reads)
            try:
                trainer = run_config(name, args, files, workdir, callbacks)
            except Exception as err:  # an option this machine refuses (tf32 on a CPU): report it, go on
                results["errors"][name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                log(f"{name}: not measured: {results['errors'][name]}")
                continue
            run = timer.summary(args.warmup, args.steps)
            results["runs"][name].append(run)
            if audit is not None:
                results.setdefault("syncs", {})[name] = audit.per_step()
            if reads is not None:
                results.setdefault("step_waits", {})[name] = reads.found
            if name not in results["flops"]:
                base = split_option(name)[0]
                if "@" not in name and base != name and base in results["flops"]:  # a speed option: same FLOPs
                    results["flops"][name] = results["flops"][base]
                else:
                    flops, rows, head = step_flops(trainer)
                    results["flops"][name] = {"flops": flops, "rows": rows, "head_flops": head}
                if not args.no_checks and name in ALL_CONFIGS:
                    results.setdefault("waits", {})[name] = step_waits(trainer)
            log(
                f"{name}: {run['wall_step']:.3f} s/step wall, {run['cpu_step']:.3f} CPU, first step "
                f"{run['first_step']:.1f} s, {results['flops'][name]['flops'] / 1e9:.1f} GFLOP/step"
            )
            del trainer
        results["load_after_repeat"].append(load_average())
    results["order"] = [c for c in configs if results["runs"][c]]
    results["runs"] = {c: r for c, r in results["runs"].items() if r}
    summarise(results, args)

    if args.profile != "none":
        log(f"profiling {args.profile}")
        results["profile"] = profile_method(args.profile, args, files, workdir)
    if not args.no_checks:
        log("tokenisation cache check")
        results["tokenisation_cache"] = tokenisation_cache_check(files, workdir, args.max_length, args.model)
        log("instance weighting feature passes")
        results["instance_weighting_passes"] = instance_weighting_feature_passes(args, files, workdir)
        try:
            load_recipe({"source_data": files["source"], "tf32": True})
            results["tf32_on_this_machine"] = "accepted"
        except Exception as err:  # a RecipeError on a machine without an Ampere-or-newer GPU
            results["tf32_on_this_machine"] = f"refused before training: `{err}`"
    results["load_end"] = load_average()
    text = report(args, results)
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
