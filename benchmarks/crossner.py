"""Cross-domain NER on CrossNER (Liu et al. 2021): a news tagger carried to politics, science and music.

Every system ends on the same *target stage*: a tagger trained on the target domain's few labelled training
sentences (100–200) with the target's own, finer entity types, for ``--target_steps`` steps of ``--batch_size``
sentences. They differ in where that stage starts from:

1. ``trainer``: a plain ``transformers.Trainer`` fine-tuning the packaged all-MiniLM-L6-v2 on the target sentences
   only (the baseline, run in this script with the Trainer's usual settings: lr 5e-5, linear decay, no warmup);
2. ``source→target``: hf-transfer's source stage (CoNLL-2003 news, ``--source_steps`` steps on up to
   ``--source_sentences`` sentences, ``recipes/token_classification/conll_source.yaml``), then the target stage from
   that tagger, its new head initialised from the source head through the entity-type graph (``label_relation``,
   ``recipes/token_classification/politics_from_conll.yaml`` with the domain's files);
3. ``+ target MLM``: between the two, continued masked-LM training of the news tagger's encoder on the target
   domain's unlabelled words (``recipes/pretrain/dapt_politics.yaml`` with the domain's training and dev sentences,
   never its test file; ``--mlm_steps`` steps); the target head is still initialised from the news tagger's head;
4. ``+ DANN``: between the two, ``--dann_steps`` more source steps with a domain-adversarial loss that aligns the
   news tagger's token features with those of the target's unlabelled words (``recipes/token_classification/
   dann.yaml``).

The source stage is shared by systems 2–4 (it is trained once); 3 and 4 add a stage per target domain, which is
what makes them affordable on a CPU (the CrossNER paper pre-trains BERT on the domain text before the source stage,
which would repeat the source stage for every domain).

Each trained tagger is scored by one function on the target's test file: entity-level micro precision, recall
and F1 with seqeval's semantics (the project's ``seqeval`` module) and a 95% percentile-bootstrap interval over
test sentences. The wall time of every stage is recorded; a system's time is the sum of its stages (stages shared
by several systems, such as the news tagger of 2., are counted in each).

Finished stages are kept in ``<workdir>/stages.jsonl`` and their models in ``<workdir>``; a rerun reuses them, so an
interrupted benchmark continues where it stopped (delete the folder to start over).

Stages are keyed by their budget, so the three domains can run as three processes sharing one ``--workdir`` (the
news tagger, trained first, is shared); each writes ``results-<domains>.json`` there.

    nice -n 10 python benchmarks/crossner.py                      # the documented budget, one process (~1 hour)
    python benchmarks/crossner.py --domains politics --source_steps 50 --target_steps 20 --mlm_steps 20   # a smoke run
    python benchmarks/crossner.py --domains music --output benchmarks/results/crossner_music.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
CROSSNER = REPO.parent / "shared" / "data" / "crossner"
RECIPES = REPO / "recipes"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DOMAINS = ("politics", "science", "music")
SYSTEMS = ("trainer", "source→target", "+ target MLM", "+ DANN")
# CrossNER's paper (BERT-base, 110M parameters, trained on CoNLL-2003 and the target's train set), as
# ../shared/data/README.md quotes it, for orientation only.
PAPER_F1 = ("about 60–70 entity F1 on politics, science and music; a few points higher with domain-adaptive "
            "pre-training")


# ---- scoring -----------------------------------------------------------------------------------------------------


def score(model_dir: str | Path, test_file: Path, *, max_length: int, resamples: int) -> dict:
    """Entity P/R/F1 (micro, seqeval semantics) of a saved token classifier on a CoNLL test file, with bootstrap
    intervals over sentences: the same scorer for the plain Trainer's model and for hf-transfer's."""
    import numpy as np
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from hf_transfer.tasks.token_classification import IGNORE_INDEX, TokenMetrics, align_labels, read_conll

    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    label2id = {v: int(k) for k, v in model.config.id2label.items()}
    table = read_conll(test_file)
    words, tags = list(table["tokens"]), list(table["ner_tags"])
    unknown = sorted({t for row in tags for t in row if t not in label2id})
    if unknown:
        raise SystemExit(f"{model_dir}: the model has no tags {unknown} of {test_file}")
    encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    rows = [align_labels(encoded.word_ids(i), [label2id[t] for t in row]) for i, row in enumerate(tags)]
    width = max(len(ids) for ids in encoded["input_ids"])
    predictions = np.zeros((len(rows), width), dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            batch = tokenizer.pad({"input_ids": encoded["input_ids"][start:start + 64],
                                   "attention_mask": encoded["attention_mask"][start:start + 64]},
                                  return_tensors="pt")
            predicted = model(**batch).logits.argmax(-1).numpy()
            predictions[start:start + len(predicted), :predicted.shape[1]] = predicted
    for i, row in enumerate(rows):
        labels[i, :len(row)] = row
    metrics = TokenMetrics(model.config.id2label)
    out = metrics.compute(predictions, labels)
    out["intervals"] = {k: list(v) for k, v in metrics.intervals(predictions, labels, num_resamples=resamples,
                                                                 confidence=0.95).items()}
    out["test_sentences"] = len(rows)
    return {k: out[k] for k in ("precision", "recall", "f1", "intervals", "test_sentences")}


# ---- stages ------------------------------------------------------------------------------------------------------


class Stages:
    """Finished stages, kept in ``stages.jsonl``: a rerun reuses a stage whose key is there and whose model exists."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.log = workdir / "stages.jsonl"
        self.done: dict[str, dict] = {}
        if self.log.is_file():
            for line in self.log.read_text().splitlines():
                row = json.loads(line)
                self.done[row["key"]] = row

    def run(self, key: str, build) -> dict:
        row = self.done.get(key)
        if row is not None and Path(row["model"]).is_dir():
            return row
        output = self.workdir / key.replace("/", "_")
        start = time.time()
        build(output)
        row = {"key": key, "model": str(output), "seconds": round(time.time() - start, 1)}
        with self.log.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        self.done[key] = row
        print(f"[crossner] {key}: {row['seconds']} s", flush=True)
        return row


def common(args, output: Path) -> dict:
    return {"output_dir": str(output), "overwrite_output_dir": True, "seed": args.seed, "report_to": "none",
            "disable_tqdm": True, "save_strategy": "no", "per_device_train_batch_size": args.batch_size,
            "max_length": args.max_length, "logging_steps": 50}


def domain_tags(domain: str) -> list[str]:
    """The domain's tag set (every tag its three files use), in BIO order: every system's head has these rows, so
    a type that the few training sentences happen to lack is still a row (and a miss, not a crash, on test)."""
    from hf_transfer.tasks.token_classification import _bio_order, read_conll

    return _bio_order({t for split in ("train", "dev", "test") for row in read_conll(
        CROSSNER / domain / f"{split}.txt")["ner_tags"] for t in row})


def plain_trainer(args, domain: str, output: Path) -> None:
    """The baseline: transformers' own token-classification recipe on the target sentences only."""
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    from hf_transfer.backbones import resolve_model_path
    from hf_transfer.tasks.token_classification import align_labels, read_conll

    train = read_conll(CROSSNER / domain / "train.txt")
    names = domain_tags(domain)
    label2id = {n: i for i, n in enumerate(names)}
    path = resolve_model_path(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id)

    def encode(batch):
        out = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=args.max_length)
        out["labels"] = [align_labels(out.word_ids(i), [label2id[t] for t in tags])
                         for i, tags in enumerate(batch["ner_tags"])]
        return out

    data = train.map(encode, batched=True, remove_columns=train.column_names)
    training = TrainingArguments(output_dir=str(output), max_steps=args.target_steps, learning_rate=5e-5,
                                 per_device_train_batch_size=args.batch_size, seed=args.seed, report_to="none",
                                 save_strategy="no", disable_tqdm=True, logging_steps=50)
    trainer = Trainer(model=model, args=training, train_dataset=data,
                      data_collator=DataCollatorForTokenClassification(tokenizer))
    trainer.train()
    trainer.save_model(str(output))
    tokenizer.save_pretrained(str(output))


def unlabelled_words(domain: str):
    """The target domain's training and dev sentences (never its test file) as one table; their tags are not read."""
    import datasets

    from hf_transfer.tasks.token_classification import read_conll

    splits = [read_conll(CROSSNER / domain / f"{split}.txt") for split in ("train", "dev")]
    return datasets.concatenate_datasets(splits)


def source_stage(args, output: Path, *, base: str, method: str, target_domain: str | None, steps: int) -> None:
    import hf_transfer

    recipe = RECIPES / "token_classification" / ("conll_source.yaml" if method == "finetune" else f"{method}.yaml")
    overrides = {**common(args, output), "model_name_or_path": base, "max_steps": steps,
                 "warmup_steps": steps // 10,
                 "max_source_samples": args.source_sentences, "max_eval_samples": 200,
                 "source_data": str(CROSSNER / "conll2003" / "train.txt"),
                 "eval_data": str(CROSSNER / "conll2003" / "dev.txt")}
    if target_domain:
        overrides["target_data"] = unlabelled_words(target_domain)
    hf_transfer.train(recipe, **overrides)


def target_stage(args, domain: str, output: Path, *, start: str, head_source: str) -> None:
    """The target's few labelled sentences, from the encoder ``start``, the head initialised from the tagger
    ``head_source`` through the entity-type graph."""
    import hf_transfer

    overrides = {**common(args, output), "model_name_or_path": start, "max_steps": args.target_steps,
                 "label_relation.source_model": head_source,
                 "source_data": str(CROSSNER / domain / "train.txt"),
                 "eval_data": str(CROSSNER / domain / "dev.txt"), "max_eval_samples": 200,
                 "class_names": domain_tags(domain)}
    hf_transfer.train(RECIPES / "token_classification" / "politics_from_conll.yaml", **overrides)


def mlm_stage(args, domain: str, output: Path, *, base: str) -> None:
    """Continued masked-LM training of ``base``'s encoder on the domain's unlabelled words (train and dev files)."""
    import hf_transfer

    overrides = {**common(args, output), "model_name_or_path": base, "max_steps": args.mlm_steps,
                 "warmup_steps": args.mlm_steps // 10,
                 "train_data": [str(CROSSNER / domain / "train.txt"), str(CROSSNER / domain / "dev.txt")]}
    overrides.pop("per_device_train_batch_size")  # the recipe's batch of 32 texts
    hf_transfer.train(RECIPES / "pretrain" / "dapt_politics.yaml", **overrides)


# ---- the run -----------------------------------------------------------------------------------------------------


def run(args) -> list[dict]:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    stages = Stages(workdir)
    results = []
    # Stages run at once (Stages.run calls the builder before returning), so partial binds each one's inputs.
    news = stages.run(f"source/finetune-{args.source_steps}", partial(
        source_stage, args, base=MODEL, method="finetune", target_domain=None, steps=args.source_steps))
    for domain in args.domains:
        baseline = stages.run(f"{domain}/trainer-{args.target_steps}", partial(plain_trainer, args, domain))
        mlm = stages.run(f"{domain}/mlm_from_news-{args.mlm_steps}", partial(
            mlm_stage, args, domain, base=news["model"]))
        dann = stages.run(f"{domain}/dann_from_news-{args.dann_steps}", partial(
            source_stage, args, base=news["model"], method="dann", target_domain=domain, steps=args.dann_steps))
        chains = {"trainer": [baseline]}
        # a stage's key names its budget (and its start's), so a rerun at another budget never reuses it
        for system, name, before in (("source→target", f"news{args.source_steps}", []),
                                     ("+ target MLM", f"mlm{args.mlm_steps}", [mlm]),
                                     ("+ DANN", f"dann{args.dann_steps}", [dann])):
            start = (before or [news])[-1]["model"]
            target = stages.run(f"{domain}/target_from_{name}-{args.target_steps}", partial(
                target_stage, args, domain, start=start, head_source=news["model"] if before == [mlm] else start))
            chains[system] = [news, *before, target]
        for system in SYSTEMS:
            chain = chains[system]
            scores = score(chain[-1]["model"], CROSSNER / domain / "test.txt", max_length=args.max_length,
                           resamples=args.bootstrap_resamples)
            results.append({"domain": domain, "system": system, **scores,
                            "seconds": round(sum(s["seconds"] for s in chain), 1),
                            "stages": [s["key"] for s in chain]})
        # what is finished so far, in case a later domain is interrupted
        Path(workdir, f"results-{'-'.join(args.domains)}.json").write_text(json.dumps(results, indent=2))
    return results


def report(args, results: list[dict]) -> str:
    from _machine import machine_header, markdown_table

    def pct(value: float) -> str:
        return f"{100 * value:.1f}"

    rows = []
    for r in results:
        low, high = r["intervals"]["f1"]
        rows.append([r["domain"], r["system"], f"{pct(r['f1'])} [{pct(low)}, {pct(high)}]", pct(r["precision"]),
                     pct(r["recall"]), f"{r['seconds']:.0f}"])
    budget = (f"MiniLM-L6 (22M), max_length {args.max_length}, batch {args.batch_size}; source stage "
              f"{args.source_steps} steps on up to {args.source_sentences} CoNLL sentences; target MLM "
              f"{args.mlm_steps} steps; DANN {args.dann_steps} steps; target stage {args.target_steps} steps; "
              f"seed {args.seed}; "
              f"{args.bootstrap_resamples} bootstrap resamples")
    lines = [machine_header({"budget": budget}), "",
             markdown_table(["target", "system", "entity F1 [95% CI]", "precision", "recall", "seconds"], rows,
                            align="llrrrr"), "",
             f"CrossNER's BERT-base figures (Liu et al. 2021; 5× the parameters, longer training): {PAPER_F1}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    parser.add_argument("--source_steps", type=int, default=500)
    parser.add_argument("--source_sentences", type=int, default=8000)
    parser.add_argument("--target_steps", type=int, default=100)
    parser.add_argument("--mlm_steps", type=int, default=150)
    parser.add_argument("--dann_steps", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bootstrap_resamples", type=int, default=1000)
    parser.add_argument("--workdir", default="outputs/benchmarks/crossner")
    parser.add_argument("--output", default=None, help="also write the markdown report here")
    args = parser.parse_args(argv)
    results = run(args)
    text = report(args, results)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
