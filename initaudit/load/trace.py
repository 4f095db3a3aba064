"""``torch.fx`` traces of a model, made once per audit.

Inferring the input (the first layer the forward reaches) and following the flow of each
layer's output (:mod:`initaudit.record.flow`) both read the model's trace; within
:func:`traces_kept` a module is traced at most once. A plain ``nn.Sequential`` gets its
chain of ``call_module`` nodes without running the tracer (:class:`Chain`).
"""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Tuple

from torch import fx, nn

from initaudit.core.knowledge import is_dtensor

# traces made during one audit, by module: inferring the input and following the flow both
# read the model's trace, which is made once (see :func:`traces_kept`); per thread, like the
# statistics' scratch buffers, so that audits in two threads keep their own
_KEPT = threading.local()


def _kept() -> Optional[Dict[int, Tuple[nn.Module, Any]]]:
    return getattr(_KEPT, "traces", None)


@contextmanager
def traces_kept() -> Iterator[None]:
    """Within the body, a module is traced at most once; the traces are dropped after it."""
    outer = _kept()
    _KEPT.traces = {} if outer is None else outer
    try:
        yield
    finally:
        _KEPT.traces = outer


def forget_traces() -> None:
    """Drop the traces kept so far (the model changed: lazy modules were materialized)."""
    kept = _kept()
    if kept is not None:
        kept.clear()


class Chain:
    """The graph ``torch.fx`` traces from a plain ``nn.Sequential``, built without tracing.

    ``Sequential.forward`` feeds each child's output to the next, so its trace is a chain of
    ``call_module`` nodes; building it directly skips the tracer and the code generation of
    a ``GraphModule``. Offers what the readers of a trace use: ``graph`` and ``get_submodule``.
    """

    def __init__(self, root: nn.Module, graph: fx.Graph) -> None:
        self.root = root
        self.graph = graph

    def get_submodule(self, target: str) -> nn.Module:
        return self.root.get_submodule(target)

    @classmethod
    def of(cls, module: nn.Module) -> Optional["Chain"]:
        """The chain of a plain ``nn.Sequential`` of ``torch.nn`` leaf modules (plain nested
        ``Sequential``s inlined, as fx inlines them), or ``None`` for anything else."""
        if type(module) is not nn.Sequential:
            return None
        tracer = fx.Tracer()
        graph = fx.Graph()

        def link(seq: nn.Module, prefix: str, value: Optional[fx.Node]) -> Optional[fx.Node]:
            for name, child in seq.named_children():
                target = prefix + name
                if type(child) is nn.Sequential:
                    value = link(child, target + ".", value)
                elif tracer.is_leaf_module(child, target) and not child._forward_pre_hooks and not child._forward_hooks:
                    value = graph.call_module(target, (value,))
                else:
                    return None  # a module fx would trace into: trace for real
                if value is None:
                    return None
            return value

        out = link(module, "", graph.placeholder("input"))
        if out is None:
            return None
        graph.output(out)
        return cls(module, graph)


def trace(module: nn.Module) -> Any:
    """``torch.fx.symbolic_trace(module)`` (or its :class:`Chain`, for a plain ``Sequential``),
    or ``None`` when the module does not trace or holds sharded parameters."""
    kept = _kept()
    if kept is not None and id(module) in kept and kept[id(module)][0] is module:
        return kept[id(module)][1]
    gm: Any = None
    # a trace of a sharded model would run FSDP's hooks out of order: hooks decide there
    if not any(is_dtensor(p) for p in module.parameters()):
        gm = Chain.of(module)
        if gm is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    gm = fx.symbolic_trace(module)
            except Exception:  # untraceable: the caller tries the children, then falls back to hooks
                gm = None
    if kept is not None:
        kept[id(module)] = (module, gm)
    return gm
