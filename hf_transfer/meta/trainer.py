"""``train_meta``: meta-train an encoder on episodes from a recipe's tasks, evaluate it few-shot on held-out tasks,
and save it as a plain encoder.

The outer loop runs on the ``transformers.Trainer``
(:class:`~hf_transfer.meta.episodic_trainer.EpisodicTrainer`): every process trains on its own
``episodes_per_device`` episodes a step (:meth:`~hf_transfer.meta.episodes.EpisodeSampler.for_process`), computes
each episode's meta-gradient (by backpropagation for protonet and hypernet, by the inner loop for FOMAML and
Reptile), the gradients are averaged over the step's episodes on all processes, and one optimiser step follows: N
processes with E episodes each train like one process with N * E. So a run logs (``report_to``, ``logging_steps``),
checkpoints (``save_steps``), resumes (``resume_from_checkpoint``: a checkpoint folder or ``latest``) and pushes
(``push_to_hub``) like every other run. The model is not wrapped in DDP: the inner loop updates the parameters in
place, and an explicit all-reduce of the final meta-gradient is what DDP would do, once per step.

The output folder holds the encoder as an ordinary ``AutoModel`` (LoRA merged in) with its tokenizer, so
``AutoModel.from_pretrained`` or sentence-transformers-style mean pooling uses it without hf_transfer;
``meta_config.json`` says how hf_transfer adapts it (:func:`load_meta_learner`), ``hypernet.safetensors`` holds the
hypernetwork head, and ``metrics.json``, ``trainer_state.json`` (the Trainer's state and ``log_history``),
``recipe.yaml`` and a model card sit beside them; the run's ``checkpoint-N`` folders stay in it, never pushed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones import BackboneView, load_tokenizer, resolve_model_path, set_trainable_top_layers
from ..errors import RecipeError, UserError
from ..hub import atomic_write_json, discard_stage, finish_export, save_trainer_results, staging_dir
from .evaluation import RowPool, evaluate_few_shot
from .hypernet import HyperHead
from .learner import ADAPT_METHODS, DEFAULT_ADAPT, EpisodicLearner, LearnerConfig
from .protonet import Embedder
from .recipe import MetaRecipe, resolve_recipe

logger = logging.getLogger(__name__)

META_CONFIG = "meta_config.json"
HYPERNET_WEIGHTS = "hypernet.safetensors"


def __getattr__(name: str) -> Any:
    if name == "MetaResult":  # the former name of what train_meta returns, now every family's TrainResult
        from ..families import TrainResult

        return TrainResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def learner_config(meta) -> LearnerConfig:
    """The :class:`LearnerConfig` of a recipe's meta fields."""
    names = {f.name for f in dataclasses.fields(LearnerConfig)}
    return LearnerConfig(**{k: v for k, v in dataclasses.asdict(meta).items() if k in names})


def load_encoder(name_or_path: str, *, peft: dict[str, Any] | None = None, revision: str | None = None,
                 trust_remote_code: bool = False):
    """An ``AutoModel`` encoder (a packaged copy for known Hub ids), wrapped with LoRA when ``peft`` is given."""
    from transformers import AutoModel

    from ..backbones import _load_error

    try:
        encoder = AutoModel.from_pretrained(resolve_model_path(name_or_path), revision=revision,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _load_error(name_or_path, err) from None
    encoder.config._name_or_path = name_or_path
    if peft:
        from peft import get_peft_config, get_peft_model

        block = {**peft, "task_type": "FEATURE_EXTRACTION"}
        encoder = get_peft_model(encoder, get_peft_config(block))
    return encoder


def load_meta_learner(path: str, **overrides: Any) -> tuple[EpisodicLearner, Any]:
    """A folder written by :func:`train_meta` (its ``meta_config.json``), or any encoder (folder or Hub id; a
    classifier folder's encoder is used, its head dropped) with default settings. ``overrides`` set
    :class:`LearnerConfig` fields (``meta_method``, ``distance`` ...)."""
    config_file = Path(path) / META_CONFIG
    saved = json.loads(config_file.read_text()) if config_file.is_file() else {}
    pooling = saved.pop("pooling", "mean")
    names = {f.name for f in dataclasses.fields(LearnerConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise UserError(f"{sorted(unknown)[0]}: not a few-shot setting; choose from {', '.join(sorted(names))}")
    config = LearnerConfig(**{**{k: v for k, v in saved.items() if k in names}, **overrides})
    if (Path(path) / "adapter_config.json").is_file():
        raise UserError(f"model: {path!r} is a PEFT adapter; few-shot evaluation needs a full model or encoder "
                        "folder (export with merge_adapter: true)")
    encoder = load_encoder(path)
    hyperhead = None
    if (Path(path) / HYPERNET_WEIGHTS).is_file():
        from safetensors.torch import load_file

        state = load_file(str(Path(path) / HYPERNET_WEIGHTS))
        hyperhead = HyperHead(hidden_size=encoder.config.hidden_size, inner_size=state["net.0.weight"].shape[0])
        hyperhead.load_state_dict(state)
    learner = EpisodicLearner(Embedder(encoder, pooling=pooling), config, hyperhead=hyperhead)
    return learner.eval(), load_tokenizer(path)


def _pools(tasks, tokenizer, device) -> tuple[list[RowPool], list[np.ndarray]]:
    pools, labels = [], []
    for task in tasks:
        pools.append(RowPool(task.train.to_list(), tokenizer, device))
        labels.append(np.asarray(task.train["labels"], dtype=np.int64))
    return pools, labels


def train_meta(recipe: MetaRecipe | str | os.PathLike | dict | None = None, *, callbacks: list | None = None,
               **overrides: Any):
    """Meta-train a recipe with ``meta_method`` end to end (see the module docstring): train on the Trainer
    (:class:`~hf_transfer.meta.episodic_trainer.EpisodicTrainer`), evaluate few-shot, export, push if asked.
    ``callbacks``: extra ``transformers.TrainerCallback`` objects. Returns a
    :class:`~hf_transfer.families.TrainResult` (``extras``: ``learner``, ``is_main_process``)."""
    from ..families import TrainResult
    from ..preamble import begin_run
    from ..tasklists.data import load_tasks, tokenize_tasks
    from .episodes import EpisodeSampler
    from .episodic_trainer import EpisodeSteps, EpisodicTrainer

    recipe = resolve_recipe(recipe, overrides, MetaRecipe, key="meta_method", kind="meta-learning")
    args, meta = recipe.training, recipe.meta
    _check_training_arguments(args)
    # The shared preamble: recipe snapshot, push request (the token out of the arguments the checkpoints keep),
    # `latest` -> the newest complete checkpoint, every column kept, the seed.
    run_start = begin_run(recipe, family="meta")
    recipe_yaml, push = run_start.recipe_yaml, run_start.push
    steps = args.max_steps if args.max_steps > 0 else 100
    args.max_steps = steps
    args.per_device_train_batch_size = 1  # a batch is one step's episodes (episodes_per_device of them)
    tasks = load_tasks(recipe.tasks, seed=args.seed)
    test_tasks = load_tasks(recipe.test_tasks, seed=args.seed)
    tokenizer = load_tokenizer(recipe.model.model_name_or_path, revision=recipe.model.revision,
                               trust_remote_code=recipe.model.trust_remote_code)
    everything = tasks + test_tasks
    tokenize_tasks(everything, tokenizer, max_length=recipe.max_length, task_ids=list(range(len(everything))),
                   progress=not args.disable_tqdm)
    encoder = load_encoder(recipe.model.model_name_or_path, peft=recipe.peft, revision=recipe.model.revision,
                           trust_remote_code=recipe.model.trust_remote_code)
    if recipe.model.trainable_layers is not None:
        # Only the top layers meta-train and adapt (the inner loops and the outer step take trainable parameters).
        set_trainable_top_layers(BackboneView("encoder", {"encoder": encoder}), recipe.model.trainable_layers)
    learner = EpisodicLearner(Embedder(encoder, pooling=meta.pooling), learner_config(meta)).to(args.device)
    pools, labels = _pools(tasks, tokenizer, "cpu")  # batches go to the device with the Trainer's inputs
    try:
        sampler = EpisodeSampler(labels, n_way=meta.n_way, k_shot=meta.k_shot, n_query=meta.n_query, seed=args.seed)
    except ValueError as err:
        raise UserError(f"k_shot/n_query: {err}") from None
    episodes = EpisodeSteps(sampler, pools, steps=steps, num_processes=args.world_size,
                            per_process=meta.episodes_per_device)
    trainer = EpisodicTrainer(model=learner, args=args, train_dataset=episodes, callbacks=callbacks)
    start = time.time()
    train_output = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    params = learner.meta_parameters()
    if args.world_size > 1:
        # Every process must end with the same weights (same start, same averaged meta-gradients); a mismatch would
        # mean a process skipped an all-reduce, so fail loudly instead of saving one process's model.
        checksum = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1)
        sums = trainer.accelerator.gather(checksum)
        if not torch.allclose(sums, sums[0].expand_as(sums), rtol=1e-6):
            raise RuntimeError(f"meta-training: the processes' weights diverged (checksums {sums.tolist()})")
    metrics: dict[str, Any] = {"train_runtime": train_output.metrics.get("train_runtime", time.time() - start),
                               "train_steps": trainer.state.global_step,
                               "train_loss": trainer.loss_tally.mean if trainer.loss_tally.steps else math.nan,
                               "meta_method": meta.meta_method}
    learner.eval()
    main = trainer.is_world_process_zero()
    if main and meta.eval_shots:  # eval_shots: [] skips the few-shot evaluation
        adapt = meta.eval_adapt or DEFAULT_ADAPT[meta.meta_method]
        metrics.update(few_shot_metrics(learner, test_tasks or tasks, tokenizer, meta, adapt=adapt, seed=args.seed,
                                        held_out=bool(test_tasks)))
    output_dir = Path(args.output_dir)
    if main:
        save_meta(learner, tokenizer, recipe, metrics, output_dir, recipe_yaml=recipe_yaml, trainer=trainer,
                  push=push)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(metrics, learner, tokenizer, trainer, recipe, output_dir,
                       extras={"learner": learner, "is_main_process": main})


def _check_training_arguments(args) -> None:
    """Refuse the ``TrainingArguments`` meta-training cannot honour, naming the field."""
    if args.gradient_accumulation_steps != 1:
        raise RecipeError("gradient_accumulation_steps: meta-learning takes one optimizer step per outer step; set "
                          "episodes_per_device for more episodes a step")
    for name in ("fp16", "bf16"):
        if getattr(args, name):
            raise RecipeError(f"{name}: meta-learning trains in fp32 (the inner loops write the meta-gradients "
                              f"themselves, outside mixed precision's loss scaling); remove {name}")
    if args.deepspeed or args.fsdp:
        raise RecipeError(f"{'deepspeed' if args.deepspeed else 'fsdp'}: meta-learning runs on plain data "
                          "parallelism (its inner loops change every weight in place); remove it")


def few_shot_metrics(learner: EpisodicLearner, tasks, tokenizer, meta, *, adapt: str, seed: int,
                     held_out: bool) -> dict[str, float]:
    """``<task>/<K>shot_accuracy`` and ``_ci95`` per task and K, and their means over tasks. Shots come from a task's
    training rows; queries from its evaluation rows."""
    device = next(learner.parameters()).device
    out: dict[str, float] = {"eval_adapt": adapt, "eval_tasks_held_out": held_out}
    for k in meta.eval_shots:
        means = []
        for task in tasks:
            support = RowPool(task.train.to_list(), tokenizer, device)
            query = RowPool(task.eval.to_list(), tokenizer, device)
            result = evaluate_few_shot(learner, support, np.asarray(task.train["labels"], dtype=np.int64), shots=k,
                                       adapt=adapt, episodes=meta.eval_episodes, n_query=meta.eval_n_query,
                                       n_way=meta.n_way, query=query,
                                       query_labels=np.asarray(task.eval["labels"], dtype=np.int64), seed=seed)
            out[f"{task.name}/{k}shot_accuracy"] = result.mean
            out[f"{task.name}/{k}shot_ci95"] = result.ci95
            means.append(result.mean)
        out[f"{k}shot_mean_accuracy"] = float(np.mean(means))
    return out


def save_meta(learner: EpisodicLearner, tokenizer, recipe: MetaRecipe, metrics: dict[str, Any], output_dir: Path, *,
              recipe_yaml: str, trainer=None, push=None) -> None:
    """Write the encoder (LoRA merged), tokenizer, meta_config.json, hypernet weights, ``trainer_state.json`` and
    ``all_results.json`` (when a ``trainer`` is given), metrics, recipe and card, then push when ``push`` (a
    :class:`~hf_transfer.hub.PushRequest`) asks. Call on the main process only."""
    encoder = learner.embedder.encoder
    if hasattr(encoder, "merge_and_unload"):
        import copy

        encoder = copy.deepcopy(encoder).merge_and_unload()
    stage = staging_dir(output_dir)
    try:
        encoder.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        config = {**dataclasses.asdict(learner.config), "pooling": learner.embedder.pooling}
        atomic_write_json(stage / META_CONFIG, config)
        if learner.hyperhead is not None:
            from safetensors.torch import save_file

            state = {k: v.contiguous() for k, v in learner.hyperhead.state_dict().items()}
            save_file(state, str(stage / HYPERNET_WEIGHTS))
        if trainer is not None:
            save_trainer_results(trainer, metrics, stage)  # trainer_state.json (log_history) and all_results.json
            # The loss curve alone, as earlier versions wrote it (trainer_state.json holds it too).
            atomic_write_json(stage / "log_history.json", trainer.state.log_history)
        card = meta_card(recipe, metrics, recipe_yaml)
    except BaseException:
        discard_stage(stage)  # no .staging-* folder outlives a failed export
        raise
    finish_export(stage, output_dir, recipe_yaml=recipe_yaml, metrics=metrics, card=card, push=push)


def meta_card(recipe: MetaRecipe, metrics: dict[str, Any], recipe_yaml: str) -> str:
    """The card of a meta-trained encoder: its few-shot results per evaluated task (K-shot accuracy with the 95%
    interval half width over episodes) in ``model-index``, how to embed with it and adapt it."""
    from ..cards import PROJECT_URL, CardContent, EvalSet, build_card, display_path, hub_base_model, hub_link, where
    from ..defaults import __version__

    base = recipe.model.model_name_or_path
    meta = recipe.meta
    evaluated = recipe.test_tasks or recipe.tasks
    evaluations = []
    for task in evaluated:
        scores = {f"{k}shot_accuracy": metrics[f"{task.name}/{k}shot_accuracy"] for k in meta.eval_shots
                  if f"{task.name}/{k}shot_accuracy" in metrics}
        notes = {f"{k}shot_accuracy": f"± {metrics[f'{task.name}/{k}shot_ci95']:.4f} at 95%, {meta.eval_episodes} "
                 "episodes" for k in meta.eval_shots if f"{task.name}/{k}shot_ci95" in metrics}
        queries = "eval_data" if task.eval_data else f"{task.eval_fraction:.0%} of the rows, held out"
        evaluations.append(EvalSet(
            task.name, task.eval_data or task.data, scores, split=task.eval_split if task.eval_data else task.split,
            config=task.eval_config if task.eval_data else task.config,
            note=f"few-shot episodes, queries from {queries}", metric_notes=notes))
    data = [(f"{t.name} (meta-training)", t.data) for t in recipe.tasks]
    data += [(f"{t.name} (held-out test task)", t.data) for t in recipe.test_tasks]
    name = (hub_base_model(base) or display_path(base) or base).split("/")[-1]
    hub_model_id = recipe.training.hub_model_id
    intro = (
        f"A {hub_link(base)} encoder meta-trained with **{meta.meta_method}** on episodes of {len(recipe.tasks)} "
        f"task{'s' if len(recipe.tasks) > 1 else ''} with [hf-transfer]({PROJECT_URL}) {__version__}. It is a "
        f"plain `AutoModel`: embed texts by {meta.pooling} pooling of the last hidden states."
    )
    usage = f"""```python
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained({where(hub_model_id)})
tokenizer = AutoTokenizer.from_pretrained({where(hub_model_id)})
```

With hf-transfer, adapt it to a new task from K labelled rows per class:

```bash
hf-transfer evaluate path/to/this/folder --data new_task.jsonl --shots 8
```"""
    return build_card(CardContent(
        base_model=base,
        title=hub_model_id or f"{name} meta-trained for few-shot classification ({meta.meta_method})",
        intro=intro,
        usage=usage,
        pipeline_tag="feature-extraction",
        library_name="transformers",
        tags=["hf-transfer", "meta-learning", "few-shot", f"meta-{meta.meta_method}"],
        data=data,
        evaluations=evaluations,
        metrics=metrics,
        recipe_yaml=recipe_yaml,
        hub_model_id=hub_model_id,
        data_note="Few-shot results: mean accuracy over episodes and the 95% interval half width (`_ci95`); "
                  "support rows come from a task's training rows, queries from its evaluation rows.",
    ))


def few_shot_evaluate(model: str, data: str, *, shots: int, episodes: int = 20, n_query: int = 16,
                      n_way: int | None = None, adapt: str | None = None, query_data: str | None = None,
                      split: str = "train", query_split: str = "train", text_column: str = "text",
                      label_column: str = "label", max_length: int = 256, seed: int = 0,
                      export: str | None = None, **settings: Any) -> dict[str, Any]:
    """``hf-transfer evaluate MODEL --data FILE --shots K``: adapt ``model`` on K labelled rows per class of
    ``data`` and score query rows (from ``query_data`` when given, else the rest of ``data``), over ``episodes``
    seeded episodes. ``model`` is a :func:`train_meta` folder (adapts with its own method by default) or any encoder
    or classifier (fine-tunes by default). ``settings`` are :class:`LearnerConfig` fields (``finetune_steps`` ...).
    ``export`` (with ``adapt="contrastive"``): save the classifier of episode 0 there as a SetFit folder whose card
    records K, the episodes and the interval (:mod:`hf_transfer.meta.setfit_export`).

    Returns ``{"accuracy", "ci95", "accuracies", "shots", "episodes", "adapt", ...}``.
    """
    from ..data import encode_labels, infer_label_space, load_table, require_column, tokenize

    meta_folder = (Path(model) / META_CONFIG).is_file()
    learner, tokenizer = load_meta_learner(model, **settings)
    adapt = adapt or (DEFAULT_ADAPT[learner.config.meta_method] if meta_folder else "finetune")
    if adapt not in ADAPT_METHODS:
        from ..errors import unknown_choice

        raise unknown_choice("adapt", adapt, ADAPT_METHODS)
    if export and adapt != "contrastive":
        raise UserError(f"export: only a contrastive few-shot classifier exports (got adapt {adapt!r}); pass "
                        "--adapt contrastive, or train a model with hf-transfer train to export it")

    def table(spec: str, field: str, table_split: str, space=None):
        rows = load_table(spec, field=field, split=table_split)
        for option, column in (("text_column", text_column), ("label_column", label_column)):
            require_column(rows, column, field=field, spec=spec, option=option)
        space = space or infer_label_space(rows, label_column, num_labels=None, field=field, spec=spec)
        rows = encode_labels(rows, label_column, space, field=field, spec=spec)
        rows = tokenize(rows, tokenizer, text_column=text_column, text_pair_column=None, max_length=max_length)
        return rows, space

    support, space = table(data, "data", split)
    query = table(query_data, "query_data", query_split, space)[0] if query_data else None
    device = next(learner.parameters()).device
    try:
        result = evaluate_few_shot(
            learner, RowPool(support.to_list(), tokenizer, device), support["labels"], shots=shots, adapt=adapt,
            episodes=episodes, n_query=n_query, n_way=n_way,
            query=None if query is None else RowPool(query.to_list(), tokenizer, device),
            query_labels=None if query is None else query["labels"], seed=seed)
    except ValueError as err:
        raise UserError(f"shots: {err}") from None
    out = {**result.to_dict(), "n_way": n_way or space.num_labels, "n_query": n_query, "model": model,
           "data": data, "query_data": query_data, "seed": seed}
    if export:
        out["export"] = str(_export_episode(learner, tokenizer, support, query, space, out, export=export,
                                            max_length=max_length, n_way=n_way))
    return out


def _export_episode(learner: EpisodicLearner, tokenizer, support, query, space, result: dict[str, Any], *,
                    export: str, max_length: int, n_way: int | None) -> Path:
    """Adapt on episode 0 of the evaluation (the same rows and seed, so the same classifier it scored) with the
    original class ids, and save it as a SetFit folder (:mod:`hf_transfer.meta.setfit_export`)."""
    from .episodes import EpisodeSampler
    from .evaluation import episode_seed
    from .setfit_export import few_shot_card, save_setfit

    device = next(learner.parameters()).device
    s_labels = np.asarray(support["labels"], dtype=np.int64)
    q_labels = None if query is None else np.asarray(query["labels"], dtype=np.int64)
    sampler = EpisodeSampler([s_labels], n_way=n_way, k_shot=result["shots"], n_query=result["n_query"],
                             seed=result["seed"], query_labels=None if query is None else [q_labels])
    ep = sampler.episode(0)
    s_pool = RowPool(support.to_list(), tokenizer, device)
    q_pool = s_pool if query is None else RowPool(query.to_list(), tokenizer, device)
    classifier = learner.contrastive(s_pool.batch(ep.support), torch.as_tensor(ep.classes[ep.support_labels]),
                                     seed=episode_seed(result["seed"], 0))
    truth = ep.classes[ep.query_labels]
    accuracy = float((classifier.predict(q_pool.batch(ep.query)) == truth).mean())
    labels = list(space.names) if space.from_strings else None
    settings = {k: v for k, v in dataclasses.asdict(learner.config).items() if k.startswith(("contrastive_", "self_"))}
    exported = {"index": 0, "accuracy": accuracy, "support": ep.support.tolist()}
    card = few_shot_card(base_model=result["model"], data=result["data"], query_data=result["query_data"],
                         shots=result["shots"], result=result, exported_episode=exported, labels=labels,
                         settings=settings)
    metrics = {k: result[k] for k in ("shots", "episodes", "accuracy", "ci95", "accuracies", "seed", "n_query")}
    metrics["exported_episode"] = exported
    import yaml

    rerun = {k: result[k] for k in ("model", "data", "query_data", "shots", "episodes", "seed", "n_query")}
    recipe_yaml = ("# the few-shot evaluation that made this folder (hf-transfer evaluate MODEL --data DATA --shots K "
                   "--adapt contrastive --export DIR; not a training recipe)\n"
                   + yaml.safe_dump({**rerun, "adapt": "contrastive", **settings}, sort_keys=False))
    return save_setfit(classifier, tokenizer, export, labels=labels, max_length=max_length, metrics=metrics,
                       card=card, recipe_yaml=recipe_yaml)
