"""How signal flows between recorded modules.

A layer's consumer comes from the ``torch.fx`` trace when there is one (see
:mod:`initaudit.record.flow`). Otherwise it is read from the forward's call order: the next
activation module called after the layer, unless another layer (no activation: linear) or
a normalization comes first. Layers form *runs*: maximal sequences of layers with no
normalization between them, whose scale factors compound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from initaudit.core import knowledge
from initaudit.core.knowledge import Activation
from initaudit.core.records import ModuleRecord, OutputRecord, Recording, TensorRecord


@dataclass
class LayerUse:
    """One call of a layer, with what consumes its output."""

    module: ModuleRecord
    weight: TensorRecord
    output: Optional[OutputRecord]  # statistics of this call's output
    consumer: Optional[Activation] = None  # None until an activation is seen; linear if none
    normalized: Optional[str] = None  # name of the norm layer its run ends in, if any
    decided: bool = False  # the trace decided the consumer; call order does not override it

    @property
    def activation(self) -> Activation:
        return self.consumer or knowledge.LINEAR


def _weights(recording: Recording) -> Dict[str, TensorRecord]:
    weights = {}
    for t in recording.tensors:
        if t.kind in ("parameter", "effective") and t.attr == "weight" and t.ndim >= 2 and t.floating:
            for name in t.names:
                module, _, _ = name.rpartition(".")
                weights.setdefault(module, t)
    return weights


def layer_runs(recording: Recording) -> List[List[LayerUse]]:
    """Runs of layer calls in forward order, each with its consumers resolved.

    :func:`initaudit.analysis.model.analyze` derives them once per recording; rules and the
    profile read them there.
    """
    weights = _weights(recording)
    runs: List[List[LayerUse]] = []
    current: List[LayerUse] = []

    def close(norm: Optional[str] = None) -> None:
        nonlocal current
        if current:
            if norm is not None:
                for use in current:
                    use.normalized = norm
            runs.append(current)
        current = []

    for index, name in enumerate(recording.call_order):
        module = recording.module(name)
        if module is None or not module.leaf:
            continue
        if module.kind == knowledge.LAYER and name in weights:
            use = LayerUse(module, weights[name], recording.call_outputs[index])
            current.append(use)
            if module.consumer_method == "fx":
                use.decided = True
                if module.consumer_kind == "activation":
                    use.consumer = Activation(module.consumer or "linear", module.consumer_param)
                elif module.consumer_kind == "norm":
                    close(norm=module.consumer)
                elif module.consumer_kind == "opaque":
                    close()  # attention's matmul and the like: the scale is not ours to model
        elif module.kind == knowledge.ACTIVATION:
            last = current[-1] if current else None
            if last is not None and last.consumer is None and not last.decided:
                last.consumer = Activation(module.activation or "linear", module.activation_param)
        elif module.kind == knowledge.NORM:
            close(norm=name)
        elif module.kind == knowledge.PASSTHROUGH:
            continue
        elif module.has_parameters:
            # an embedding, recurrent or attention module: its scale is not ours to model
            close()
    close()
    return runs


def accessor(qualified_name: str, root: str = "model") -> str:
    """Python expression for a parameter or module: ``"net.2.weight"`` -> ``model.net[2].weight``."""
    if not qualified_name:
        return root
    parts = qualified_name.split(".")
    if not all(p.isidentifier() or p.isdigit() for p in parts):
        return f'{root}.get_parameter("{qualified_name}")'
    out = root
    for p in parts:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out
