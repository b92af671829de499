"""The embedded defaults that several layers name: the default model and the demo data shipped with the package.

A leaf module (standard library only), so that the card builder, the CLI help and the recipe can all read them
without importing one another.
"""

from __future__ import annotations

from pathlib import Path

#: The package version (pyproject.toml names the same); here so that every layer can name it without importing the
#: package's top.
__version__ = "0.1.0"

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: Inputs are truncated to this many tokens unless a recipe (or the recipe saved beside a model) says otherwise.
DEFAULT_MAX_LENGTH = 256
#: The LoRA settings a family uses where it adds adapters of its own and the recipe's `peft:` block leaves a field out.
DEFAULT_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1}
# The review domains shipped with the package for the embedded demo (see hf_transfer/resources/README.md).
RESOURCES = Path(__file__).parent / "resources"
DEFAULT_SOURCE = str(RESOURCES / "amazon_books_demo.jsonl")
DEFAULT_TARGET = str(RESOURCES / "amazon_kitchen_demo.jsonl")
