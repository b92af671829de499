"""Few-shot sentiment on FDU-MTL, side by side with SetFit: the same episodes for every method, K labelled reviews per
class, the full test file as the query set, mean accuracy with a 95% interval and the training time per episode.

An episode is (domain, K, draw): K rows per class drawn from ``<domain>.train.jsonl`` (seeded by the domain and the
draw; the K = 8 rows of a draw are the first 8 of its K = 16 rows), every row of ``<domain>.test.jsonl`` as the
query set (``--query_rows`` keeps a seeded subset, for quick runs only). Methods (``--methods``):

* ``setfit``: ``setfit.Trainer`` with its defaults (``TrainingArguments()``: oversampled pairs, 1 epoch, batch 16,
  body learning rate 2e-5, ``CosineSimilarityLoss``, ``LogisticRegression`` head) on the packaged all-MiniLM-L6-v2,
  offline; only the seed (the episode's), the progress bar, reporting and the checkpoint folder are set;
* ``head-only``: the pretrained encoder frozen, a new linear head trained on the K shots (hf-transfer's ``probe``);
* ``logreg``: the pretrained encoder frozen, ``LogisticRegression`` on its normalised embeddings (SetFit without its
  contrastive step: what the encoder fine-tuning adds);
* ``protonet``: nearest class prototype of the pretrained encoder's embeddings;
* ``contrastive``: hf-transfer's contrastive-pair adaptation (``--adapt contrastive``: ``--iterations`` positive and
  as many negative pairs per row, every encoder weight, then ``LogisticRegression``);
* ``contrastive-lora``: the same with a LoRA adapter (rank 8, learning rate 1e-3) instead of every weight;
* ``contrastive-self``: ``contrastive`` plus one round of self-training of the head on ``--unlabelled`` rows of the
  domain's training file (their labels unused);
* ``meta+contrastive`` / ``meta+protonet``: the encoder first meta-trained (``--meta_method``, ``--meta_steps``
  2-way episodes) on the *other* FDU-MTL domains (leave-one-domain-out; ``--meta_rows`` rows each), then adapted
  with contrastive pairs / prototypes. The meta-trained encoder of each domain is saved under the results folder
  and reused.

The interval of a method is the Student-t 95% interval over all its episodes (domains x draws); the difference from
SetFit is paired (the same episodes) with its own interval. Results are appended episode by episode to
``<out>.episodes.jsonl`` and a rerun skips the episodes already there with the same settings, so an interrupted run
continues and ``--methods X`` adds a method to an earlier run.

    # the full comparison (the issue's protocol: 8 domains, K = 8 and 16, 10 draws):
    nice -n 10 .venv/bin/python benchmarks/fewshot_setfit.py
    # a tiny run while developing:
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/fewshot_setfit.py --domains music --shots 8 --draws 2 \\
        --query_rows 64 --max_length 128 --meta_steps 10 --out /tmp/fewshot_setfit_tiny.md

Writes ``--out`` (markdown: command, machine, date, the tables) and the same numbers as JSON beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = REPO.parent / "shared" / "data" / "fdu_mtl"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DOMAINS = ["apparel", "books", "camera_photo", "dvd", "electronics", "health_personal_care", "kitchen_housewares",
           "music"]
METHODS = ["setfit", "head-only", "logreg", "protonet", "contrastive", "contrastive-lora", "contrastive-self",
           "meta+contrastive", "meta+protonet"]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tokenize_rows(texts: list[str], tokenizer, max_length: int) -> list[dict]:
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return [{k: enc[k][i] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            for i in range(len(texts))]


def settings_of(args, method: str) -> dict:
    """What an episode's result depends on besides (method, domain, K, draw): a rerun with other settings for a method
    is a new run of that method (the old episodes stay in the jsonl but are not mixed in); the other methods' episodes
    are reused."""
    settings = {"max_length": args.max_length, "query_rows": args.query_rows, "seed": args.seed}
    if "contrastive" in method:
        settings["iterations"] = args.iterations
    if method == "contrastive-self":
        settings.update(unlabelled=args.unlabelled, self_training_fraction=args.self_training_fraction)
    if method.startswith("meta+"):
        settings.update(meta_method=args.meta_method, meta_steps=args.meta_steps, meta_rows=args.meta_rows,
                        meta_lr=args.meta_lr)
    return settings


def episode_key(method: str, domain: str, shots: int, draw: int, settings: dict) -> str:
    return json.dumps([method, domain, shots, draw, settings], sort_keys=True)


class Domain:
    """One domain's tables, tokenised, and the episodes drawn from it."""

    def __init__(self, name: str, args, tokenizer):
        import numpy as np

        from hf_transfer.meta import EpisodeSampler

        self.name = name
        train = read_rows(DATA / f"{name}.train.jsonl")
        test = read_rows(DATA / f"{name}.test.jsonl")
        if args.query_rows:
            keep = np.random.default_rng([args.seed, 1]).permutation(len(test))[: args.query_rows]
            test = [test[i] for i in sorted(keep)]
        self.train_texts = [r["text"] for r in train]
        self.train_labels = np.asarray([r["label"] for r in train], dtype=np.int64)
        self.test_texts = [r["text"] for r in test]
        self.test_labels = np.asarray([r["label"] for r in test], dtype=np.int64)
        self.train_rows = tokenize_rows(self.train_texts, tokenizer, args.max_length)
        self.test_rows = tokenize_rows(self.test_texts, tokenizer, args.max_length)
        # One sampler per domain (its index in the full list seeds it, whichever --domains are run); episode `draw`
        # takes the first K rows per class of a seeded permutation, so K = 8 rows are the first half of K = 16's.
        self.seed = args.seed * 100 + DOMAINS.index(name)
        self.max_shots = max(args.shots)
        self.sampler = EpisodeSampler([self.train_labels], n_way=None, k_shot=self.max_shots, n_query=1,
                                      seed=self.seed)

    def support(self, shots: int, draw: int):
        """``(rows, labels)``: the episode's K rows per class (indices into the training file) and their labels."""
        import numpy as np

        ep = self.sampler.episode(draw)
        rows = np.concatenate([ep.support[ep.support_labels == j][:shots] for j in range(ep.n_way)])
        return rows, self.train_labels[rows]

    def unlabelled(self, support_rows, count: int, draw: int):
        """``count`` training rows outside the episode's shots, seeded by the draw (their labels go unused)."""
        import numpy as np

        rest = np.setdiff1d(np.arange(len(self.train_labels)), support_rows)
        return np.random.default_rng([self.seed, draw, 2]).permutation(rest)[:count]


def run_setfit(domain: Domain, rows, labels, seed: int, args) -> tuple[float, float, float]:
    """SetFit with its defaults on the episode; ``(accuracy, train seconds, predict seconds)``."""
    import numpy as np
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from hf_transfer.backbones import resolve_model_path

    with tempfile.TemporaryDirectory() as tmp, quiet():
        start = time.perf_counter()
        model = SetFitModel.from_pretrained(resolve_model_path(MODEL), device=args.device)
        model.model_body.max_seq_length = args.max_length
        train = Dataset.from_dict({"text": [domain.train_texts[i] for i in rows], "label": labels.tolist()})
        trainer = Trainer(model=model, train_dataset=train, args=TrainingArguments(
            output_dir=tmp, seed=seed, show_progress_bar=False, report_to="none"))
        trainer.train()
        trained = time.perf_counter()
        preds = np.asarray(model.predict(domain.test_texts, batch_size=64, show_progress_bar=False))
    return float((preds == domain.test_labels).mean()), trained - start, time.perf_counter() - trained


@contextlib.contextmanager
def quiet():
    """SetFit and sentence-transformers log a block per training run; keep the benchmark's output readable."""
    import logging

    loggers = [logging.getLogger(n) for n in ("setfit", "sentence_transformers", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def meta_train(domain: str, args, folder: Path) -> Path:
    """The encoder meta-trained on every other domain (saved in ``folder``; reused when it is there)."""
    if (folder / "meta_config.json").is_file():
        return folder
    from hf_transfer.meta import train_meta

    others = [d for d in DOMAINS if d != domain]
    recipe = {
        "model_name_or_path": MODEL, "meta_method": args.meta_method, "n_way": 2, "k_shot": 8, "n_query": 8,
        "max_length": args.max_length, "max_steps": args.meta_steps, "learning_rate": args.meta_lr,
        "warmup_steps": 0, "seed": args.seed, "eval_shots": [], "logging_steps": max(1, args.meta_steps // 5),
        "output_dir": str(folder), "save_strategy": "no", "disable_tqdm": True, "report_to": "none",
        "use_cpu": args.device == "cpu",
        "tasks": [{"name": d, "data": str(DATA / f"{d}.train.jsonl"), "eval_data": str(DATA / f"{d}.test.jsonl"),
                   "max_train_samples": args.meta_rows, "max_eval_samples": 8} for d in others],
    }
    train_meta(recipe)
    return folder


def run_learner(method: str, learner, domain: Domain, pools, rows, labels, seed: int, draw: int, args
                ) -> tuple[float, float, float]:
    """One hf-transfer method on the episode; ``(accuracy, train seconds, predict seconds)``. Query embeddings of an
    encoder that does not change are computed once per domain (they are prediction, not training)."""
    import numpy as np
    import torch

    from hf_transfer.meta.contrastive import embed_rows, fit_head, normalized

    support_pool, test_pool = pools
    s_labels = torch.as_tensor(labels)
    start = time.perf_counter()
    if method in ("head-only", "logreg", "protonet", "meta+protonet"):
        s_emb = embed_rows(learner.embedder, support_pool.batch(rows))
        if method == "logreg":
            head = fit_head(s_emb, labels)
        trained = time.perf_counter()
        q_emb = test_pool.embed(learner, range(len(test_pool.rows)))
        if method == "logreg":
            preds = head.predict(normalized(q_emb))
        else:
            lookup = {"s": s_emb, "q": q_emb}
            adapt = "probe" if method == "head-only" else "protonet"
            logits = learner.adapt_and_predict({"w": "s"}, s_labels, {"w": "q"}, 2, adapt,
                                               embed=lambda b: lookup[b["w"]])
            preds = logits.argmax(-1).cpu().numpy()
    else:
        unlabelled = None
        if method == "contrastive-self":
            unlabelled = support_pool.batch(domain.unlabelled(rows, args.unlabelled, draw))
        clf = learner.contrastive(support_pool.batch(rows), s_labels, seed=seed, unlabelled=unlabelled)
        trained = time.perf_counter()
        preds = clf.predict(test_pool.batch(range(len(test_pool.rows))))
    return float((np.asarray(preds) == domain.test_labels).mean()), trained - start, time.perf_counter() - trained


def summarise(records: list[dict], methods: list[str], shots: list[int]) -> dict:
    import numpy as np

    from hf_transfer.meta import mean_confidence_interval

    out: dict = {}
    by = {(r["method"], r["shots"], r["domain"], r["draw"]): r for r in records}
    for method in methods:
        for k in shots:
            mine = [r for r in records if r["method"] == method and r["shots"] == k]
            if len(mine) < 2:
                continue
            accs = [r["accuracy"] for r in mine]
            mean, half = mean_confidence_interval(accs)
            entry = {"accuracy": mean, "ci95": half, "episodes": len(mine),
                     "train_s": float(np.mean([r["train_s"] for r in mine])),
                     "predict_s": float(np.mean([r["predict_s"] for r in mine])),
                     "per_domain": {d: float(np.mean([r["accuracy"] for r in mine if r["domain"] == d]))
                                    for d in dict.fromkeys(r["domain"] for r in mine)}}
            paired = [r["accuracy"] - by[("setfit", k, r["domain"], r["draw"])]["accuracy"] for r in mine
                      if ("setfit", k, r["domain"], r["draw"]) in by]
            if method != "setfit" and len(paired) >= 2:
                d_mean, d_half = mean_confidence_interval(paired)
                entry.update(vs_setfit=d_mean, vs_setfit_ci95=d_half, vs_setfit_episodes=len(paired))
            out.setdefault(method, {})[k] = entry
    return out


def markdown(summary: dict, args, shots: list[int], wall: float) -> str:
    from _machine import machine_header, markdown_table

    header = ["method"] + [h for k in shots for h in (f"K={k} accuracy", f"K={k} vs SetFit (paired)",
                                                       f"K={k} train s / episode")]
    rows = []
    for method, by_k in summary.items():
        row = [method]
        for k in shots:
            e = by_k.get(k)
            if e is None:
                row += ["—", "—", "—"]
                continue
            row.append(f"{e['accuracy']:.3f} ± {e['ci95']:.3f} ({e['episodes']})")
            row.append(f"{e['vs_setfit']:+.3f} ± {e['vs_setfit_ci95']:.3f}" if "vs_setfit" in e else "—")
            row.append(f"{e['train_s']:.1f}")
        rows.append(row)
    domains = list(dict.fromkeys(d for by_k in summary.values() for e in by_k.values() for d in e["per_domain"]))
    per_domain = []
    for method, by_k in summary.items():
        for k in shots:
            if k in by_k:
                per_domain.append([method, str(k), *[f"{by_k[k]['per_domain'][d]:.3f}"
                                                      if d in by_k[k]["per_domain"] else "—" for d in domains]])
    return "\n".join([
        "# Few-shot sentiment on FDU-MTL: hf-transfer vs SetFit, the same episodes",
        "",
        machine_header({"model": MODEL, "domains": ", ".join(args.domains),
                        "draws per domain and K": str(args.draws),
                        "query set": "the full test file" if not args.query_rows else f"{args.query_rows} test rows",
                        "max_length": str(args.max_length), "wall time": f"{wall:.0f} s"}),
        "",
        "Accuracy: mean ± 95% interval half width (Student t) over all episodes (domains × draws; the count in "
        "brackets); vs SetFit: the mean paired difference on the same episodes, with its interval. Train s: "
        "adaptation time per episode (SetFit: model load + training).",
        "",
        markdown_table(header, rows),
        "",
        "Per domain (mean accuracy over draws):",
        "",
        markdown_table(["method", "K", *domains], per_domain),
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", nargs="+", default=DOMAINS, choices=DOMAINS)
    parser.add_argument("--shots", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--draws", type=int, default=10, help="seeded draws per domain and K (>= 2)")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--max_length", type=int, default=256, help="tokens per text, every method (SetFit's is 256)")
    parser.add_argument("--query_rows", type=int, default=0, help="0: the full test file; N: a seeded subset")
    parser.add_argument("--iterations", type=int, default=5, help="contrastive: pairs per row and kind")
    parser.add_argument("--unlabelled", type=int, default=200, help="contrastive-self: unlabelled rows")
    parser.add_argument("--self_training_fraction", type=float, default=0.5,
                        help="contrastive-self: the most confident fraction of each predicted class joins the head")
    parser.add_argument("--meta_method", default="contrastive", choices=["contrastive", "protonet"])
    parser.add_argument("--meta_steps", type=int, default=200)
    parser.add_argument("--meta_lr", type=float, default=2e-5)
    parser.add_argument("--meta_rows", type=int, default=400, help="rows per meta-training domain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
                        help="torch threads (default: OMP_NUM_THREADS, else torch's)")
    parser.add_argument("--device", default=None, help="default: cuda when there is a GPU, else cpu")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fewshot_setfit.md"))
    args = parser.parse_args()
    if args.draws < 2:
        parser.error("--draws: at least 2 for an interval")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    from hf_transfer.backbones import load_tokenizer
    from hf_transfer.meta import RowPool, load_meta_learner
    from hf_transfer.meta.evaluation import episode_seed

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".episodes.jsonl")
    settings = {m: settings_of(args, m) for m in METHODS}
    done = {}
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                done[episode_key(r["method"], r["domain"], r["shots"], r["draw"], r["settings"])] = r
    tokenizer = load_tokenizer(MODEL)
    pretrained, _ = load_meta_learner(MODEL)
    pretrained.to(args.device)
    lora = load_meta_learner(MODEL, contrastive_params="lora")[0].to(args.device)
    wall = time.time()
    for name in args.domains:
        domain = Domain(name, args, tokenizer)
        todo = [(m, k, r) for k in args.shots for r in range(args.draws) for m in args.methods
                if episode_key(m, name, k, r, settings[m]) not in done]
        if not todo:
            continue
        pools = (RowPool(domain.train_rows, tokenizer, args.device), RowPool(domain.test_rows, tokenizer, args.device))
        learners = {"lora": lora, "base": pretrained}
        if any(m.startswith("meta+") for m, _, _ in todo):
            folder = out.parent / f"{out.stem}_meta" / f"{name}-{args.meta_method}-{args.meta_steps}-{args.meta_rows}"
            start = time.perf_counter()
            learners["meta"] = load_meta_learner(str(meta_train(name, args, folder)))[0].to(args.device)
            print(f"{name}: meta-trained encoder ready ({time.perf_counter() - start:.0f} s)", flush=True)
        for method, k, draw in todo:
            rows, labels = domain.support(k, draw)
            seed = episode_seed(domain.seed, draw)
            if method == "setfit":
                acc, train_s, predict_s = run_setfit(domain, rows, labels, seed, args)
            else:
                learner = learners["meta" if method.startswith("meta+") else "lora" if method.endswith("lora")
                                   else "base"]
                learner.config.self_training_rounds = 1 if method == "contrastive-self" else 0
                learner.config.self_training_fraction = args.self_training_fraction
                learner.config.contrastive_iterations = args.iterations
                run = "contrastive" if method == "meta+contrastive" else method.replace("meta+", "")
                acc, train_s, predict_s = run_learner(run, learner, domain, pools, rows, labels, seed, draw, args)
            record = {"method": method, "domain": name, "shots": k, "draw": draw, "accuracy": acc,
                      "train_s": train_s, "predict_s": predict_s, "support": rows.tolist(),
                      "settings": settings[method]}
            done[episode_key(method, name, k, draw, settings[method])] = record
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            print(f"{name:22s} K={k:2d} draw {draw:2d} {method:18s} {acc:.4f}  train {train_s:6.1f} s", flush=True)
    records = [r for r in done.values() if r["settings"] == settings[r["method"]] and r["domain"] in args.domains
               and r["shots"] in args.shots and r["draw"] < args.draws and r["method"] in args.methods]
    summary = summarise(records, args.methods, args.shots)
    text = markdown(summary, args, args.shots, time.time() - wall)
    out.write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "summary": summary,
                                                    "episodes": len(records)}, indent=1, default=float),
                                        encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
