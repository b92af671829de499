"""Small helpers shared by the benchmark scripts: machine description and markdown tables."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from collections.abc import Sequence


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_header(extra: dict[str, str] | None = None) -> str:
    """Markdown lines: the command, date, cores, CPU model, Python and library versions."""
    import numpy
    import sklearn

    try:
        import skada

        skada_version = skada.__version__
    except ImportError:  # the comparison columns are then skipped
        skada_version = "not installed"
    lines = [
        f"- command: `{' '.join(shlex.quote(a) for a in [os.path.relpath(sys.executable), *sys.argv])}`",
        f"- date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: `nproc` = {os.cpu_count()}, CPU: {cpu_model()}, Python {platform.python_version()}",
        f"- numpy {numpy.__version__}, scikit-learn {sklearn.__version__}, skada {skada_version}",
    ]
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one character per column (l/r)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
