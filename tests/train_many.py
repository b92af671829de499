"""Train several recipes one after another in one process, each as ``hf-transfer train RECIPE`` would: tests only.

Starting a process that imports torch and transformers costs seconds, and under ``accelerate launch`` each of its
processes pays it; the distributed tests therefore launch this script once for several recipes instead of once a
recipe. Each recipe runs through ``hf_transfer.cli.main(["train", RECIPE])`` with stdout and stderr (the log lines
too) captured, and ``RESULTS.rank{N}.json`` (one file a process, N its rank) records for each recipe, by the recipe
file's stem: the exit status, what it printed, the seconds it took and the traceback had it raised. A failed recipe
does not stop the next, except when one of several processes raised: the others may be waiting in a collective it
never reaches, so it exits and the launcher stops them. The file is rewritten after each recipe, so what ran
survives a timeout.

Usage: ``python tests/train_many.py [--engines-on-cpu] RESULTS RECIPE.yaml [RECIPE.yaml ...]``, alone or under
``accelerate launch``; ``--engines-on-cpu`` runs FSDP and DeepSpeed configs on gloo CPU processes
(tests/engines_on_cpu.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is at the time: the log handler installed below then lands in
    each recipe's captured stderr (``logging.basicConfig`` binds its handler to one stream, once)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--engines-on-cpu":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import tests.engines_on_cpu  # noqa: F401  (patches Accelerate and hf_transfer on import)

        argv = argv[1:]
    results_path, recipes = Path(argv[0]), argv[1:]
    from hf_transfer.cli import main as cli_main

    # The handler hf-transfer's configure_logging would add (same format), on the stream that follows sys.stderr.
    logging.basicConfig(format="%(message)s", stream=_CurrentStderr())
    rank = os.environ.get("RANK", "0")
    results: dict[str, dict] = {}
    out_file = results_path.with_name(f"{results_path.name}.rank{rank}.json")
    status = 0
    for recipe in recipes:
        stdout, stderr = io.StringIO(), io.StringIO()
        entry: dict = {"rc": None, "error": None}
        began = time.perf_counter()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                entry["rc"] = cli_main(["train", recipe])
            except BaseException:  # noqa: B036  (recorded for the test to show, then this process stops)
                entry["error"] = traceback.format_exc()
        entry.update(stdout=stdout.getvalue(), stderr=stderr.getvalue(), seconds=time.perf_counter() - began)
        results[Path(recipe).stem] = entry
        out_file.write_text(json.dumps(results, indent=1))
        if entry["rc"] != 0:
            print(f"train_many: {recipe} failed (rank {rank}):\n{entry['error'] or entry['stderr'][-4000:]}",
                  file=sys.stderr)
            status = 1
            if entry["error"] and int(os.environ.get("WORLD_SIZE", "1")) > 1:
                break
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
