"""The package's layers, as its imports draw them: no module imports one above it (imports inside functions count).

From the top down: the CLI; ``run`` (``train``/``evaluate``, the flat family); the family packages side by side
(``multitask``, ``meta``, ``lifelong``, ``pretrain``), none importing another; the task-list core (``tasklists``);
the recipe; the methods and diagnostics; the task registry, data, backbones and the leaves (``families``,
``defaults``, ``errors``, ``distributed``). A family is found through :mod:`hf_transfer.families`, never imported by
the core by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_transfer"
FAMILY_PACKAGES = ("multitask", "meta", "lifelong", "pretrain")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str | None = None) -> set[str]:
    """Every ``hf_transfer`` module ``path`` (the module ``name``) imports, at module level or inside a function,
    resolved to full names (``from . import x`` gives ``package.x``)."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("hf_transfer"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("hf_transfer"):
                continue
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # `from . import x` may name a submodule
    return found


def _modules_under(prefix: str) -> list[Path]:
    target = PACKAGE / prefix
    if target.with_suffix(".py").is_file():
        return [target.with_suffix(".py")]
    return sorted(target.rglob("*.py"))


def _reaches(imports: set[str], forbidden: str) -> list[str]:
    full = f"hf_transfer.{forbidden}"
    return sorted(m for m in imports if m == full or m.startswith(full + "."))


# (modules, what they must never import): each row is one floor's rule.
RULES = [
    ("families", ["recipe", "run", "cli", "trainer", "tasklists", *FAMILY_PACKAGES]),
    ("defaults", ["errors", "recipe", "run", "families"]),
    ("distributed", ["methods", "recipe", "run", "launch_check", "trainer"]),
    ("batching", ["data", "vision", "tasks", "methods", "recipe", "run"]),
    ("tasks", ["run", "cli", "recipe", "trainer", "methods", "diagnostics", "tasklists", *FAMILY_PACKAGES]),
    ("vision", ["data", "tasks", "run", "recipe", "methods"]),
    ("audio", ["data", "tasks", "run", "recipe", "methods", "trainer", "cli"]),
    ("embedding", ["methods", "diagnostics", "recipe", "run", "cli", "trainer", *FAMILY_PACKAGES]),
    ("engine_rules", ["recipe", "run", "launch_check", "cli", *FAMILY_PACKAGES]),
    ("methods", ["run", "recipe", "launch_check", "cli", "trainer", "diagnostics", "tasklists", *FAMILY_PACKAGES]),
    ("diagnostics", ["run", "cli", "recipe", "launch_check", *FAMILY_PACKAGES]),
    ("recipe", ["run", "cli", "launch_check", "trainer", "tasklists", *FAMILY_PACKAGES]),
    ("tasklists", ["run", "cli", *FAMILY_PACKAGES]),
    ("preamble", ["run", "cli", "recipe", *FAMILY_PACKAGES]),
    ("cards", ["run", "cli", "recipe", "hf_transfer", *FAMILY_PACKAGES]),
    ("hub", ["run", "cli", "recipe", *FAMILY_PACKAGES]),
    ("relation", ["run", "cli", "recipe", "methods", "trainer", *FAMILY_PACKAGES]),
    *[(family, ["run", "cli", *[f for f in FAMILY_PACKAGES if f != family]]) for family in FAMILY_PACKAGES],
]


@pytest.mark.parametrize(("modules", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_no_import_runs_up_a_floor(modules, forbidden):
    offences = []
    for path in _modules_under(modules):
        imports = _imports(path)
        for target in forbidden:
            if target == "hf_transfer":  # the package's top (__init__): only its own submodules may be named
                hits = sorted(m for m in imports if m == "hf_transfer")
            else:
                hits = _reaches(imports, target)
            offences += [f"{path.relative_to(PACKAGE.parent)} imports {hit}" for hit in hits]
    assert not offences, "imports that run up the layers:\n" + "\n".join(offences)


def test_the_rules_see_imports_inside_functions(tmp_path):
    """The scan is not blind: a lazy upward import inside a function is found (the way most of them hid)."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..run import load_trained\n    from .. import __version__\n",
                     encoding="utf-8")
    found = _imports(probe, "hf_transfer.methods.probe")
    assert "hf_transfer.run" in found and "hf_transfer.run.load_trained" in found
    assert "hf_transfer" in found
