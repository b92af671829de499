"""The finished runs of a benchmark grid, kept in ``<workdir>/runs.jsonl`` so that a rerun continues where an
interrupted one stopped: a run is done when a line with its key fields and the same budget is there."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_grid_options(parser, workdir: Path) -> None:
    """The options every run-grid benchmark takes: device, torch threads, where the runs are kept, the reports."""
    parser.add_argument("--gpu", action="store_true", help="train on the GPU (default: use_cpu)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 on a shared, oversubscribed CPU (more threads only wait on each other)")
    parser.add_argument("--workdir", default=str(workdir))
    parser.add_argument("--json", default=None, help="write every run and the summary here")
    parser.add_argument("--output", default=None, help="write the markdown report here")


def prepare_grid(args) -> Path:
    """Set torch's threads to ``--threads`` and create ``--workdir``; returns it."""
    import torch

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


class RunLog:
    """``runs.jsonl`` of one benchmark: ``keys`` name the fields that identify a run (e.g. speaker, condition, seed);
    ``budget`` is the settings every run shares (a line at another budget is kept but never reused)."""

    def __init__(self, workdir: Path, budget: dict[str, Any], keys: tuple[str, ...]):
        self.path = Path(workdir) / "runs.jsonl"
        self.budget, self.keys = budget, keys
        self.runs = [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.is_file() else []

    def _key(self, run: dict[str, Any]) -> tuple:
        return tuple(run[k] for k in self.keys)

    def done(self, *key: Any) -> bool:
        """Whether the run ``key`` (values of ``keys``, in order) finished at this budget."""
        return any(r["budget"] == self.budget and self._key(r) == key for r in self.runs)

    def add(self, run: dict[str, Any]) -> dict[str, Any]:
        """Record a finished run (its budget added) at once, so an interruption loses only the run in progress."""
        run = {**run, "budget": self.budget}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(run) + "\n")
        self.runs.append(run)
        return run

    def run(self, fields: dict[str, Any], output_dir: Path,
            work: Callable[[Path], dict[str, Any]]) -> dict[str, Any] | None:
        """Run ``work(output_dir)`` for the run named by ``fields`` (a value for each of ``keys``) unless it finished
        at this budget already (then ``None``). Its metrics are recorded with ``wall_s`` and ``output_dir`` is removed:
        only the metrics are kept (a failed run's folder stays, to look into)."""
        if self.done(*(fields[k] for k in self.keys)):
            return None
        start = time.time()
        result = work(output_dir)
        shutil.rmtree(output_dir, ignore_errors=True)
        return self.add({**fields, **result, "wall_s": time.time() - start})

    def report(self, args, text: str, runs: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        """Print the markdown ``text``; write it to ``--output`` and the budget, ``runs`` and ``summary`` to
        ``--json`` when given."""
        print(text)
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
        if args.json:
            Path(args.json).write_text(json.dumps({"budget": self.budget, "runs": runs, "summary": summary}, indent=1),
                                       encoding="utf-8")

    def select(self, **allowed: list) -> list[dict[str, Any]]:
        """The runs at this budget whose fields take the allowed values (``speaker=[...], seed=[...]``)."""
        return [r for r in self.runs if r["budget"] == self.budget
                and all(r[field] in values for field, values in allowed.items())]
