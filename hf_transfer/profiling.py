"""Counting the places where a training step waits on the device.

On a GPU, an op that needs a device value on the host (``.item()``, ``if tensor.any():``, ``x[mask]``) waits until
every queued kernel has run, which stalls the launch queue. :class:`HostReads` finds them: run a step under it and
read ``found``. Used by ``benchmarks/throughput.py`` and by the tests that keep the methods free of such reads.
"""

from __future__ import annotations

import traceback
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostReads(TorchDispatchMode):
    """Counts, by the Python line that issued them, the ops that need a device value on the host: on a GPU each one
    waits until every queued kernel has run. ``.item()``/``bool()``/``int()``/``float()`` of a tensor
    (``_local_scalar_dense``), boolean-mask indexing and ``nonzero`` (the output size is data-dependent), and copies
    from an accelerator to the CPU."""

    BOOL_INDEX_OPS = ("aten::index.Tensor", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_")

    def __init__(self, *, skip_files: tuple[str, ...] = ()):
        """``skip_files``: source files whose lines are never named as the place (the caller's driver script, say),
        so a read from autograd shows as ``backward (autograd)`` rather than the line that called ``backward``."""
        super().__init__()
        self.found: Counter = Counter()
        self.skip_files = (__file__, *skip_files)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name + ("." + func._overloadname if func._overloadname != "default" else "")
        kind = None
        if name == "aten::_local_scalar_dense":
            kind = "value read (.item/bool/int/float)"
        elif name in ("aten::nonzero", "aten::masked_select"):
            kind = "nonzero"
        elif name in self.BOOL_INDEX_OPS and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()) if i is not None
        ):
            kind = "boolean-mask index"
        elif name == "aten::_to_copy" and str(kwargs.get("device", "")) == "cpu" and args[0].device.type != "cpu":
            kind = "copy to host"
        if kind:
            self.found[f"{kind} at {self.site()}"] += 1
        return func(*args, **kwargs)

    def site(self) -> str:
        frames = [
            f for f in traceback.extract_stack() if "/torch/" not in f.filename and f.filename not in self.skip_files
        ]
        if not frames:
            return "backward (autograd)"
        f = frames[-1]
        path = f.filename.split("/site-packages/")[-1]
        path = path[path.rfind("hf_transfer/") :] if "hf_transfer/" in path else path
        return f"{path}:{f.lineno} ({f.name})"
