"""What ``hf-transfer train --help`` and ``hf-transfer methods`` show: recipe fields and methods, read from the source.

The recipe dataclasses and method modules import torch and transformers (several seconds). The help only needs their
field names, types, defaults and ``metadata={"help": ...}``, so this module reads those from the package's source
with :mod:`ast`, importing nothing heavy: ``hf-transfer --help`` and ``hf-transfer methods`` answer in a fraction of a
second. ``tests/test_cli_help.py`` checks that what is read here matches the imported classes and the live method
registry, so the two cannot drift apart.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class FieldDoc:
    """One dataclass field as the help shows it. ``default`` is source text; ``None`` when it is not a literal."""

    name: str
    type: str
    default: str | None
    help: str


@dataclass(frozen=True)
class MethodDoc:
    """A method as ``hf-transfer methods`` lists it.

    ``family`` is ``transfer`` for the registered methods (``method: <name>``), else the recipe family whose selector
    field picks it (``meta_method``, ``lifelong_method``, multi-task ``sharing``). ``fields`` are the method's own
    fields; ``family_fields`` the fields every method of the family shares.
    """

    name: str
    family: str
    kind: str
    summary: str
    description: str
    selected_by: str
    fields: tuple[FieldDoc, ...]
    family_fields: tuple[FieldDoc, ...] = ()
    needs_target: bool = False


# ---------------------------------------------------------------------------------------------------------------- #
# Reading dataclasses from source
# ---------------------------------------------------------------------------------------------------------------- #


@cache
def _module(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@cache
def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _classes(path: Path) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in _module(path).body if isinstance(node, ast.ClassDef)}


def _literal_constants(path: Path) -> dict[str, ast.expr]:
    """Module-level ``NAME = <expr>`` assignments, to resolve defaults such as ``default=DEFAULT_MODEL``."""
    out = {}
    for node in _module(path).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out[node.target.id] = node.value
    return out


def _imported_from(path: Path, name: str) -> Path | None:
    """The package module a name is imported from (``from .base import MethodConfig`` -> methods/base.py)."""
    for node in _module(path).body:
        if isinstance(node, ast.ImportFrom) and node.level and any(a.name == name for a in node.names):
            folder = path.parent
            for _ in range(node.level - 1):
                folder = folder.parent
            target = folder.joinpath(*(node.module or "").split("."))
            for candidate in (target.with_suffix(".py"), target / "__init__.py"):
                if candidate.is_file():
                    return candidate
    return None


def find_class(path: Path, name: str) -> tuple[Path, ast.ClassDef] | None:
    """The class ``name`` as seen from module ``path``: defined there or imported into it from the package."""
    cls = _classes(path).get(name)
    if cls is not None:
        return path, cls
    origin = _imported_from(path, name)
    return find_class(origin, name) if origin is not None else None


def _text(path: Path, node: ast.expr | None) -> str:
    """The source text of a node (``ast.get_source_segment`` re-splits the whole file on every call: too slow)."""
    if node is None:
        return ""
    lines = _lines(path)[node.lineno - 1: node.end_lineno]
    if len(lines) == 1:
        return lines[0].encode()[node.col_offset: node.end_col_offset].decode()
    first, last = lines[0].encode()[node.col_offset:].decode(), lines[-1].encode()[: node.end_col_offset].decode()
    return "\n".join([first, *lines[1:-1], last])


def _string(node: ast.expr | None) -> str:
    """A help string: a constant, or an f-string / concatenation read as its constant parts."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_string(v) if isinstance(v, ast.Constant) else "…" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _string(node.left) + _string(node.right)
    return ""


def _default_text(path: Path, node: ast.expr) -> str | None:
    """Source text of a default when it is a literal (after resolving one module-level constant, defined in ``path``
    or imported into it from the package), else ``None``."""
    if isinstance(node, ast.Name):
        name = node.id
        origin = path if name in _literal_constants(path) else _imported_from(path, name)
        node = _literal_constants(origin).get(name, node) if origin is not None else node
    try:
        return repr(ast.literal_eval(node))
    except ValueError:
        return None


def _field_doc(path: Path, node: ast.AnnAssign) -> FieldDoc | None:
    annotation = _text(path, node.annotation)
    if annotation.startswith(("ClassVar", "typing.ClassVar")) or not isinstance(node.target, ast.Name):
        return None
    default: str | None = "required"
    help_text = ""
    value = node.value
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "field":
        keywords = {k.arg: k.value for k in value.keywords}
        if isinstance(keywords.get("init"), ast.Constant) and keywords["init"].value is False:
            return None
        if "default" in keywords:
            default = _default_text(path, keywords["default"])
        elif "default_factory" in keywords:
            factory = keywords["default_factory"]
            if isinstance(factory, ast.Lambda):
                default = _default_text(path, factory.body)
            elif isinstance(factory, ast.Name) and factory.id in ("list", "dict"):
                default = "[]" if factory.id == "list" else "{}"
            else:
                default = None
        metadata = keywords.get("metadata")
        if isinstance(metadata, ast.Dict):
            for key, item in zip(metadata.keys, metadata.values):
                if isinstance(key, ast.Constant) and key.value == "help":
                    help_text = _string(item)
    elif value is not None:
        default = _default_text(path, value)
    return FieldDoc(node.target.id, annotation, default, " ".join(help_text.split()))


def dataclass_fields(path: Path, class_name: str) -> list[FieldDoc]:
    """The init fields of a dataclass in module ``path``, base classes' first (as ``dataclasses.fields`` orders them).

    Bases are followed when they are defined in the package; a field redefined in a subclass keeps its first place,
    as in ``dataclasses``.
    """
    found = find_class(path, class_name)
    if found is None:
        raise LookupError(f"{class_name} not found from {path}")
    where, cls = found
    fields: dict[str, FieldDoc] = {}
    # dataclasses walks the MRO from the far end: with several bases, the last one's fields come first.
    for base in reversed(cls.bases):
        if isinstance(base, ast.Name) and find_class(where, base.id) is not None:
            for f in dataclass_fields(where, base.id):
                fields[f.name] = f
    for node in cls.body:
        if isinstance(node, ast.AnnAssign):
            doc = _field_doc(where, node)
            if doc is not None:
                fields[doc.name] = doc
    return list(fields.values())


def class_docstring(path: Path, class_name: str) -> str:
    found = find_class(path, class_name)
    return " ".join((ast.get_docstring(found[1]) or "").split()) if found else ""


def _class_attribute(path: Path, class_name: str, attribute: str):
    """A literal class attribute (``needs_target = True``), looked up through package base classes."""
    found = find_class(path, class_name)
    if found is None:
        return None
    where, cls = found
    for node in cls.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(
            node, "target", None)
        if isinstance(target, ast.Name) and target.id == attribute and getattr(node, "value", None) is not None:
            return ast.literal_eval(node.value)
    for base in cls.bases:
        if isinstance(base, ast.Name):
            value = _class_attribute(where, base.id, attribute)
            if value is not None:
                return value
    return None


def module_constant(path: Path, name: str):
    """A module-level literal (a tuple of names, say), read without importing the module."""
    return ast.literal_eval(_literal_constants(path)[name])


# ---------------------------------------------------------------------------------------------------------------- #
# Recipe sections
# ---------------------------------------------------------------------------------------------------------------- #

RECIPE_MODULE = PACKAGE / "recipe.py"
#: (section title, class in recipe.py) in the order ``train --help`` shows them
RECIPE_SECTIONS = (("Model", "ModelArguments"), ("Data", "DataArguments"), ("Method", "MethodArguments"))
#: the PEFT fields most recipes set; the rest of the PEFT config class named by ``peft_type`` is accepted too
PEFT_FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save", "bias", "use_rslora")


def recipe_sections() -> list[tuple[str, str, list[FieldDoc]]]:
    """``(title, class docstring, fields)`` for each flat section of a recipe."""
    return [(title, class_docstring(RECIPE_MODULE, name), dataclass_fields(RECIPE_MODULE, name))
            for title, name in RECIPE_SECTIONS]


def peft_fields() -> list[FieldDoc]:
    """The common ``peft:`` fields with PEFT's own help, read from the installed ``peft.LoraConfig`` source."""
    spec = importlib.util.find_spec("peft")  # finds the package without importing it (and torch)
    if spec is None or not spec.submodule_search_locations:
        return []
    path = Path(next(iter(spec.submodule_search_locations))) / "tuners" / "lora" / "config.py"
    try:
        fields = {f.name: f for f in dataclass_fields(path, "LoraConfig")}
    except (OSError, LookupError, SyntaxError):  # another PEFT layout: the help then names the fields only
        return []
    return [fields[name] for name in PEFT_FIELDS if name in fields]


# ---------------------------------------------------------------------------------------------------------------- #
# Methods
# ---------------------------------------------------------------------------------------------------------------- #

METHODS_DIR = PACKAGE / "methods"
_PREFIX = re.compile(r"^``method: \w+``\s*[—-]+\s*")


def _summary(description: str) -> str:
    """The first clause of a description: up to the first parenthesis or sentence end (citations left out)."""
    depth = 0
    for i, char in enumerate(description):
        if char == "(" and depth == 0 and i > 0:
            return description[:i].rstrip(" ,:;")
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "." and depth == 0 and description[i + 1: i + 2] in (" ", ""):
            return description[:i]
    return description.rstrip(".")


def _method_kind(has_loss: bool, has_prepare: bool) -> str:
    if has_loss and has_prepare:
        return "loss + prepare"
    if has_loss:
        return "loss"
    return "prepare" if has_prepare else "supervised"


def registered_methods() -> list[MethodDoc]:
    """The methods the package registers (``register_method(...)`` calls in ``hf_transfer/methods``), by name.

    Kinds: ``supervised`` (the task loss only), ``loss`` (adds an auxiliary loss to it), ``prepare`` (changes the
    data or the model once before training: instance weights, an initial head), ``loss + prepare`` (both).
    """
    out = []
    for path in sorted(METHODS_DIR.glob("*.py")):
        module = _module(path)
        # The docstring's first paragraph says what the method is; the second, how it works.
        paragraphs = [" ".join(p.split()) for p in (ast.get_docstring(module) or "").split("\n\n")[:2]]
        description = _PREFIX.sub("", "\n\n".join(paragraphs))
        for node in module.body:
            call = node.value if isinstance(node, ast.Expr) else None
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                    and call.func.id == "register_method"):
                continue
            name, config = call.args[0].value, call.args[1].id
            method_class = call.args[2].id if len(call.args) > 2 else None
            has_prepare = any(k.arg == "prepare" for k in call.keywords)
            needs_target = bool(method_class and _class_attribute(path, method_class, "needs_target"))
            out.append(MethodDoc(
                name=name, family="transfer", kind=_method_kind(method_class is not None, has_prepare),
                summary=_summary(description.split("\n\n")[0]), description=description, selected_by=f"method: {name}",
                fields=tuple(dataclass_fields(path, config)), needs_target=needs_target,
            ))
    return sorted(out, key=lambda m: m.name)


@dataclass(frozen=True)
class Family:
    """A recipe family whose methods are values of one selector field of its arguments dataclass."""

    name: str
    kind: str
    module: Path  # where the arguments dataclass is
    arguments: str
    selector: str
    names_module: Path  # where the tuple of method names is
    names_constant: str
    recipe_hint: str
    descriptions: dict[str, str]


FAMILIES = (
    Family(
        name="multitask", kind="multi-task sharing", module=PACKAGE / "multitask" / "recipe.py",
        arguments="MultiTaskArguments", selector="sharing", names_module=PACKAGE / "multitask" / "modeling.py",
        names_constant="SHARING_MODES", recipe_hint="a `tasks:` list (docs/multitask.md)",
        descriptions={
            "hard": "one shared encoder, one head per task",
            "soft_lora": "one LoRA adapter and head per task on a frozen shared base (uses the peft: block)",
            "soft_l2": "one encoder per task, tied to their mean by an L2 penalty",
            "shared_private": "a shared plus a private adapter per task, kept orthogonal (uses the peft: block)",
        },
    ),
    Family(
        name="meta", kind="meta-learning", module=PACKAGE / "meta" / "recipe.py", arguments="MetaArguments",
        selector="meta_method", names_module=PACKAGE / "meta" / "learner.py", names_constant="META_METHODS",
        recipe_hint="`tasks:` and `test_tasks:` lists (docs/meta_lifelong.md)",
        descriptions={
            "protonet": "prototypical networks: classify by distance to class prototypes of the support set",
            "fomaml": "first-order MAML: meta-gradients from an inner SGD loop on each episode",
            "reptile": "Reptile: move the weights toward those an inner SGD loop reaches on each episode",
            "hypernet": "a task-conditioned head generated from the support set",
            "contrastive": "the cosine-similarity loss over pairs of an episode's rows (SetFit's objective)",
        },
    ),
    Family(
        name="lifelong", kind="lifelong", module=PACKAGE / "lifelong" / "recipe.py", arguments="LifelongArguments",
        selector="lifelong_method", names_module=PACKAGE / "lifelong" / "recipe.py", names_constant="LIFELONG_METHODS",
        recipe_hint="a `tasks:` list learned in order (docs/meta_lifelong.md)",
        descriptions={
            "naive": "plain sequential fine-tuning (the forgetting baseline)",
            "adapter": "a LoRA adapter and head per task on a frozen base; needs the task at inference",
            "ewc": "online elastic weight consolidation: a Fisher-weighted pull toward earlier tasks' weights",
            "l2sp": "L2-SP: an L2 pull of the encoder toward its pretrained weights",
            "replay": "train on a small balanced buffer of earlier tasks' rows alongside each new task",
        },
    ),
)

_HELP_PREFIX = re.compile(r"^([\w/ ]+?):\s")


def _applies_to(field: FieldDoc, names: tuple[str, ...]) -> set[str] | None:
    """The methods a family field belongs to, from its help's prefix (``"fomaml/reptile: ..."``); ``None`` when the
    field is shared by the whole family."""
    match = _HELP_PREFIX.match(field.help)
    if not match:
        return None
    owners = {part.strip() for part in match.group(1).split("/")}
    return owners if owners <= set(names) else None


def family_methods(family: Family) -> list[MethodDoc]:
    names = tuple(module_constant(family.names_module, family.names_constant))
    fields = dataclass_fields(family.module, family.arguments)
    shared = tuple(f for f in fields if f.name != family.selector and _applies_to(f, names) is None)
    out = []
    for name in names:
        own = tuple(f for f in fields if name in (_applies_to(f, names) or ()))
        description = family.descriptions.get(name, "")
        out.append(MethodDoc(
            name=name, family=family.name, kind=family.kind, summary=description, description=description,
            selected_by=f"{family.selector}: {name} with {family.recipe_hint}", fields=own, family_fields=shared,
        ))
    return out


def all_methods() -> list[MethodDoc]:
    """Every method of every family, registered methods first."""
    return registered_methods() + [m for family in FAMILIES for m in family_methods(family)]
