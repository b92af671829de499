"""Screenshot a report with a headless Chromium, to check what a person opening ``report.html`` sees.

Chromium is not a Python dependency: Debian/Ubuntu ship it as ``chromium`` (``apt-get install chromium``), other
systems as ``chromium-browser`` or ``google-chrome``. :func:`find_chromium` returns ``None`` when none is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The first Chromium-family executable on ``PATH`` (or in ``$CHROMIUM``), else ``None``."""
    explicit = os.environ.get("CHROMIUM")
    if explicit and shutil.which(explicit):
        return shutil.which(explicit)
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html_path: str | os.PathLike, png_path: str | os.PathLike, *, width: int = 1200,
               height: int = 3000, browser: str | None = None, timeout: float = 120.0) -> Path:
    """Render ``html_path`` in headless Chromium at ``width`` x ``height`` pixels and write ``png_path``.

    Raises ``FileNotFoundError`` when no browser is found and ``RuntimeError`` when it writes no screenshot.
    """
    exe = browser or find_chromium()
    if exe is None:
        raise FileNotFoundError(f"no headless browser found (looked for {', '.join(BROWSERS)}); "
                                "install one, e.g. `apt-get install chromium`")
    png = Path(png_path).resolve()
    png.unlink(missing_ok=True)
    command = [exe, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--window-size={width},{height}", f"--screenshot={png}", Path(html_path).resolve().as_uri()]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root (containers, CI)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if not png.is_file():
        raise RuntimeError(f"{exe} wrote no screenshot (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return png
