"""Models hf-transfer builds once from packaged weights (EfficientNet-Lite0, Whisper tiny.en) and keeps as ordinary
``from_pretrained`` folders in ``$HF_TRANSFER_CACHE`` (default: ``hf_transfer`` beside the Hugging Face cache)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """``$HF_TRANSFER_CACHE``, or ``hf_transfer`` beside ``$HF_HOME`` (``~/.cache/hf_transfer`` by default)."""
    default = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).parent / "hf_transfer"
    return Path(os.environ.get("HF_TRANSFER_CACHE", default))


def build_once(name: str, build: Callable[[Path], None]) -> str:
    """The cached folder ``name``, made by ``build(folder)`` the first time. Safe against concurrent writers: each
    builds beside the final place and renames into it; a process that loses the race keeps the winner's (identical)
    folder. A folder counts as built once its ``config.json`` exists."""
    final = cache_root() / name
    if (final / "config.json").is_file():
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-"))
    try:
        build(stage)
        try:
            os.rename(stage, final)
        except OSError:  # another process finished first; theirs is identical
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return str(final)
