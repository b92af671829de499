"""How long the command line takes to answer: CPU seconds of ``hf-transfer --help``, ``--version``, ``methods``,
``methods dann`` and ``train --help``, against two references.

Each command runs in a fresh interpreter (``python -m hf_transfer ...``, what the ``hf-transfer`` script does); its
CPU time (user + system) is read from ``resource.getrusage(RUSAGE_CHILDREN)`` around the run, so other load on the
machine does not count. The figure is the median over ``--repeats`` runs. References: ``python -c pass`` (the
interpreter alone), ``import transformers``, and importing every module that ``import hf_transfer`` loaded eagerly
before it became lazy (what each of these commands used to cost before printing anything).

    python benchmarks/cli_startup.py                       # 5 runs each
    python benchmarks/cli_startup.py --repeats 9 --output benchmarks/results/cli_startup.md
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EAGER_IMPORTS = ("import hf_transfer.errors, hf_transfer.methods, hf_transfer.multitask, hf_transfer.recipe, "
                 "hf_transfer.run, hf_transfer.trainer, hf_transfer.vision")
CASES = [
    ("`hf-transfer --help`", ["-m", "hf_transfer", "--help"]),
    ("`hf-transfer --version`", ["-m", "hf_transfer", "--version"]),
    ("`hf-transfer methods`", ["-m", "hf_transfer", "methods"]),
    ("`hf-transfer methods dann`", ["-m", "hf_transfer", "methods", "dann"]),
    ("`hf-transfer train --help`", ["-m", "hf_transfer", "train", "--help"]),
    ("reference: `python -c pass`", ["-c", "pass"]),
    ("reference: `import transformers`", ["-c", "import transformers"]),
    ("reference: the eager `import hf_transfer` of before (every public module)", ["-c", EAGER_IMPORTS]),
]


def cpu_seconds(args: list[str]) -> float:
    """CPU time (user + system) of one run of ``python args`` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, cwd=REPO, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", help="also write the markdown table here")
    a = parser.parse_args()
    cpu_seconds(["-c", EAGER_IMPORTS])  # warm the file cache and the bytecode once, so every case starts equal
    rows = []
    for label, args in CASES:
        times = [cpu_seconds(args) for _ in range(a.repeats)]
        rows.append(f"| {label} | {statistics.median(times):.2f} | {min(times):.2f} – {max(times):.2f} |")
        print(rows[-1], flush=True)
    import datetime

    header = [f"- command: `python benchmarks/cli_startup.py --repeats {a.repeats}`",
              f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
              f"- machine: `nproc` = {os.cpu_count()}, CPU: {cpu_model()}, Python {sys.version.split()[0]}", "",
              f"| command | CPU s, median of {a.repeats} | range |", "|---|---|---|"]
    text = "\n".join(header + rows) + "\n"
    print("\n" + text)
    if a.output:
        Path(a.output).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
