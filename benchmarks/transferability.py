"""How well each transferability score and domain distance ranks source domains for a target: Kendall tau and
top-1 hit rate against the target accuracy a source model actually reaches.

For every target domain, every other domain of the benchmark is a candidate source. Per domain, three disjoint
seeded samples: ``--train`` rows (the source training set when the domain is a source), ``--probe`` labelled rows
(what the scores may read of the target, as a user with a few labels would have) and ``--test`` rows (the target
accuracy, the ground truth). Two source models, chosen with ``--ground_truth``:

* ``logreg`` (cheap, default): a logistic regression on frozen mean-pooled all-MiniLM-L6-v2 features of the source
  training rows; its accuracy on the target test rows is the ground truth.
* ``finetune``: all-MiniLM-L6-v2 fine-tuned on the source training rows with ``hf_transfer.train``
  (recipes/text_classification/finetune.yaml, ``--steps`` steps); its target test accuracy is the ground truth.

Scores of a source (all read only the target *probe* rows, never the test rows):

* ``leep``, ``nce``: from the source model's class probabilities (hard predictions for NCE) on the probe rows;
* ``logme``, ``hscore``: on the source model's features of the probe rows (the fine-tuned model's head input; for
  the logistic regression, its one-dimensional logit);
* ``-mmd2``, ``-pad``, ``-coral``: negated distances between the source training rows and the probe rows in the
  pretrained MiniLM feature space (closer = better), which need no target labels.

Run (a reduced CPU budget; the defaults are what BENCHMARKS.md reports):

    python benchmarks/transferability.py --benchmark amazon --ground_truth finetune \\
        --output benchmarks/results/transferability_amazon.md
    python benchmarks/transferability.py --benchmark fdu_mtl --output benchmarks/results/transferability_fdu_mtl.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_TRANSFER_TSNE_PLOT", "0")  # the per-run picture is not what this script measures

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = REPO.parent / "shared" / "data"
RECIPE = REPO / "recipes" / "text_classification" / "finetune.yaml"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BENCHMARKS = {
    "amazon": ("amazon", ["books", "dvd", "electronics", "kitchen"]),
    "fdu_mtl": ("fdu_mtl", ["apparel", "books", "camera_photo", "dvd", "electronics", "health_personal_care",
                            "kitchen_housewares", "music"]),
}
SCORE_NAMES = ("leep", "nce", "logme", "hscore", "-mmd2", "-pad", "-coral")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def split_domain(benchmark: str, domain: str, n_train: int, n_probe: int, n_test: int, seed: int) -> dict:
    """Three disjoint seeded samples of one domain: train / probe / test (FDU-MTL: test from its test file)."""
    folder, _ = BENCHMARKS[benchmark]
    rng = np.random.default_rng(seed)
    if benchmark == "fdu_mtl":
        rows = read_jsonl(DATA / folder / f"{domain}.train.jsonl")
        test_rows = read_jsonl(DATA / folder / f"{domain}.test.jsonl")
        order = rng.permutation(len(rows))
        parts = {"train": [rows[i] for i in order[:n_train]],
                 "probe": [rows[i] for i in order[n_train:n_train + n_probe]],
                 "test": [test_rows[i] for i in rng.permutation(len(test_rows))[:n_test]]}
    else:
        rows = read_jsonl(DATA / folder / f"{domain}.jsonl")
        order = rng.permutation(len(rows))
        cuts = np.cumsum([n_train, n_probe, n_test])
        parts = {name: [rows[i] for i in order[a:b]]
                 for name, a, b in (("train", 0, cuts[0]), ("probe", cuts[0], cuts[1]), ("test", cuts[1], cuts[2]))}
    return {k: {"text": [r["text"] for r in v], "label": np.array([int(r["label"]) for r in v])}
            for k, v in parts.items()}


def kendall_and_hit(scores: dict[str, float], truth: dict[str, float]) -> tuple[float, float]:
    from scipy.stats import kendalltau

    names = sorted(truth)
    tau = kendalltau([scores[n] for n in names], [truth[n] for n in names]).statistic
    best_true = max(truth.values())
    top = max(names, key=lambda n: scores[n])
    return float(tau) if np.isfinite(tau) else 0.0, float(truth[top] >= best_true - 1e-12)


def finetune_source(domain: str, part: dict, args, workdir: Path):
    """Fine-tune MiniLM on a source's training rows; return (model, tokenizer)."""
    import hf_transfer
    from hf_transfer.run import load_trained

    path = workdir / f"{domain}.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for text, label in zip(part["text"], part["label"]):
            handle.write(json.dumps({"text": text, "label": int(label)}) + "\n")
    out = workdir / f"model_{domain}"
    hf_transfer.train(RECIPE, source_data=str(path), target_data=None, output_dir=str(out), max_steps=args.steps,
                      max_length=args.max_length, per_device_train_batch_size=16, save_strategy="no",
                      disable_tqdm=True, logging_steps=1000, source_eval_fraction=0.0, seed=args.seed,
                      warmup_steps=max(1, args.steps // 10), report_to="none", eval_strategy="no")
    return load_trained(out)


def source_outputs_finetuned(model, tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and head-input features of a fine-tuned classifier."""
    import torch

    from hf_transfer.backbones import find_feature_module
    from hf_transfer.diagnostics import extract_features

    feats = extract_features(model, tokenizer, texts, kind="head_input", max_length=max_length, desc="features")
    _, head = find_feature_module(model, model.config.num_labels)  # the final linear layer: logits = head(feats)
    with torch.no_grad():
        logits = head(torch.from_numpy(feats).to(next(head.parameters()).dtype)).float()
    return logits.softmax(-1).numpy(), feats


def main() -> None:
    from _machine import machine_header, markdown_table

    from hf_transfer.diagnostics import (
        coral_distance,
        extract_features,
        hscore,
        leep,
        load_encoder,
        logme,
        mmd_test,
        nce,
        proxy_a_distance,
    )

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="amazon")
    parser.add_argument("--ground_truth", choices=["logreg", "finetune"], default="logreg")
    parser.add_argument("--train", type=int, default=400, help="source training rows per domain")
    parser.add_argument("--probe", type=int, default=200, help="labelled target rows the scores may read")
    parser.add_argument("--test", type=int, default=400, help="target rows that measure the ground truth")
    parser.add_argument("--steps", type=int, default=50, help="fine-tuning steps (ground_truth finetune)")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--permutations", type=int, default=0, help="MMD permutations (0: statistic only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="markdown file for the results (and a .json beside it)")
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.time()
    _, domains = BENCHMARKS[args.benchmark]
    parts = {d: split_domain(args.benchmark, d, args.train, args.probe, args.test, args.seed) for d in domains}
    encoder, tokenizer = load_encoder(MODEL)
    frozen = {d: {k: extract_features(encoder, tokenizer, v["text"], max_length=args.max_length,
                                      desc=f"{d} {k}") for k, v in p.items()} for d, p in parts.items()}
    print(f"embedded {len(domains)} domains in {time.time() - start:.0f}s", flush=True)

    # Source models: outputs on every other domain's probe rows (scores) and test rows (ground truth).
    probe_probs: dict[tuple[str, str], np.ndarray] = {}
    probe_feats: dict[tuple[str, str], np.ndarray] = {}
    truth: dict[tuple[str, str], float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="transferability-"))
    for s in domains:
        targets = [t for t in domains if t != s]
        if args.ground_truth == "logreg":
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=args.seed))
            clf.fit(frozen[s]["train"], parts[s]["train"]["label"])
            for t in targets:
                probe_probs[s, t] = clf.predict_proba(frozen[t]["probe"])
                probe_feats[s, t] = clf.decision_function(frozen[t]["probe"])[:, None]
                truth[s, t] = float(np.mean(clf.predict(frozen[t]["test"]) == parts[t]["test"]["label"]))
        else:
            model, tok = finetune_source(s, parts[s]["train"], args, workdir)
            for t in targets:
                probe_probs[s, t], probe_feats[s, t] = source_outputs_finetuned(model, tok, parts[t]["probe"]["text"],
                                                                                args.max_length)
                test_probs, _ = source_outputs_finetuned(model, tok, parts[t]["test"]["text"], args.max_length)
                truth[s, t] = float(np.mean(test_probs.argmax(1) == parts[t]["test"]["label"]))
        print(f"source {s}: {time.time() - start:.0f}s", flush=True)

    scores: dict[tuple[str, str], dict[str, float]] = {}
    for (s, t), probs in probe_probs.items():
        y = parts[t]["probe"]["label"]
        xs, xt = frozen[s]["train"], frozen[t]["probe"]
        scores[s, t] = {
            "leep": leep(probs, y), "nce": nce(probs.argmax(1), y), "logme": logme(probe_feats[s, t], y),
            "hscore": hscore(probe_feats[s, t], y),
            "-mmd2": -mmd_test(xs, xt, num_permutations=args.permutations, seed=args.seed).mmd2,
            "-pad": -proxy_a_distance(xs, xt, seed=args.seed).pad, "-coral": -coral_distance(xs, xt),
        }

    per_score = {name: {"tau": [], "hit": []} for name in SCORE_NAMES}
    for t in domains:
        sources = [s for s in domains if s != t]
        true_t = {s: truth[s, t] for s in sources}
        for name in SCORE_NAMES:
            tau, hit = kendall_and_hit({s: scores[s, t][name] for s in sources}, true_t)
            per_score[name]["tau"].append(tau)
            per_score[name]["hit"].append(hit)
    # Baseline: a random ranking has expected tau 0 and top-1 hit rate 1/(number of sources) (ties aside).
    chance_hit = np.mean([
        np.mean([truth[s, t] >= max(truth[x, t] for x in domains if x != t) - 1e-12 for s in domains if s != t])
        for t in domains
    ])
    elapsed = time.time() - start

    rows = [[name, f"{np.mean(v['tau']):+.3f}", f"{np.mean(v['hit']):.2f}"] for name, v in per_score.items()]
    rows.append(["random ranking (expected)", "+0.000", f"{chance_hit:.2f}"])
    truth_rows = [[f"{s} → {t}", f"{truth[s, t]:.3f}", *[f"{scores[s, t][n]:.4g}" for n in SCORE_NAMES]]
                  for t in domains for s in domains if s != t]
    gt = ("logistic regression on frozen all-MiniLM-L6-v2 mean-pooled features of the source training rows"
          if args.ground_truth == "logreg" else
          f"all-MiniLM-L6-v2 fine-tuned on the source training rows ({args.steps} steps, batch 16, "
          f"recipes/text_classification/finetune.yaml)")
    text = "\n".join([
        f"## Ranking source domains: {args.benchmark}, {len(domains)} domains, "
        f"{len(domains) * (len(domains) - 1)} pairs",
        "",
        machine_header({
            "ground truth": f"target test accuracy of the source model: {gt}",
            "rows per domain": f"{args.train} source-train / {args.probe} target-probe (the scores' only view of "
                               f"the target) / {args.test} target-test, seed {args.seed}",
            "wall time": f"{elapsed:.0f} s",
        }),
        "",
        f"Kendall τ between each score and the ground truth over the {len(domains) - 1} candidate sources of a "
        f"target, and top-1 hit rate (the score's best source is a truly best one), averaged over the "
        f"{len(domains)} targets:",
        "",
        markdown_table(["score", "Kendall τ", "top-1 hit rate"], rows),
        "",
        "<details><summary>per pair</summary>",
        "",
        markdown_table(["pair", "target acc", *SCORE_NAMES], truth_rows),
        "",
        "</details>",
        "",
    ])
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        payload = {"args": vars(args), "truth": {f"{s}->{t}": v for (s, t), v in truth.items()},
                   "scores": {f"{s}->{t}": v for (s, t), v in scores.items()},
                   "summary": {n: {"tau": float(np.mean(v["tau"])), "hit": float(np.mean(v["hit"]))}
                               for n, v in per_score.items()}, "seconds": elapsed}
        out.with_suffix(".json").write_text(json.dumps(payload, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
