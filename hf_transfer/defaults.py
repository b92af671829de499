"""The embedded defaults that several layers name: the default model and the demo data shipped with the package.

A leaf module (standard library only), so that the card builder, the CLI help and the recipe can all read them
without importing one another.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# The review domains shipped with the package for the embedded demo (see hf_transfer/resources/README.md).
RESOURCES = Path(__file__).parent / "resources"
DEFAULT_SOURCE = str(RESOURCES / "amazon_books_demo.jsonl")
DEFAULT_TARGET = str(RESOURCES / "amazon_kitchen_demo.jsonl")
