"""How signal flows between recorded modules.

A layer's consumer comes from the ``torch.fx`` trace when there is one (see
:mod:`initaudit.record.flow`). Otherwise it is read from the forward's call order: the next
activation module called after the layer, unless another layer (no activation: linear) or
a normalization comes first. Layers form *runs*: maximal sequences of layers with no
normalization between them, whose scale factors compound.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple, TypeVar

from initaudit.core import knowledge
from initaudit.core.knowledge import Activation
from initaudit.core.records import ModuleRecord, OutputRecord, Recording, TensorRecord

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One call of a recorded module, at its place in the forward."""

    index: int  # position in the recording's call order
    name: str
    module: ModuleRecord
    output: Optional[OutputRecord]  # statistics of this call's output


def forward_calls(recording: Recording) -> Iterator[Call]:
    """Every call of a recorded module, in forward order: the order the calls returned (a
    container's call comes after the calls of the modules it runs)."""
    for index, name in enumerate(recording.call_order):
        module = recording.module(name)
        if module is not None:
            yield Call(index, name, module, recording.call_outputs[index])


def forward_layers(recording: Recording) -> Iterator[Call]:
    """The calls of layers (:func:`initaudit.core.knowledge.is_layer`), in forward order; a
    layer called twice appears twice."""
    return (call for call in forward_calls(recording) if call.module.kind == knowledge.LAYER)


def split_at_average_pools(recording: Recording, items: Iterable[Tuple[int, T]]) -> List[List[T]]:
    """``items``, ``(call index, value)`` in forward order, in segments between the calls of
    average pooling; empty segments are dropped.

    Average pooling averages an example's variation over its window by design, so what
    is measured after it is compared within its segment, not with what came before.
    """
    pools = [call.index for call in forward_calls(recording) if call.module.type in knowledge.AVERAGE_POOLS]
    segments: Dict[int, List[T]] = {}
    for index, value in items:
        segments.setdefault(bisect.bisect_left(pools, index), []).append(value)  # pools called before it
    return [segments[k] for k in sorted(segments)]


@dataclass
class LayerUse:
    """One call of a layer, with what consumes its output."""

    module: ModuleRecord
    weight: TensorRecord
    output: Optional[OutputRecord]  # statistics of this call's output
    consumer: Optional[Activation] = None  # None until an activation is seen; linear if none
    normalized: Optional[str] = None  # name of the norm layer its run ends in, if any
    decided: bool = False  # the trace decided the consumer; call order does not override it
    method: str = "hooks"  # what decided the consumer: "autograd", "fx" or "hooks" (call order)
    ends: Optional[str] = None  # what its output reaches when the run ends there (autograd: add, attention, ...)
    branch: Optional[str] = None  # "residual" or "lora": its output is a branch added to a stream

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

    for call in forward_calls(recording):
        name, module = call.name, call.module
        if not module.leaf:
            continue
        if module.kind == knowledge.LAYER and name in weights:
            if weights[name].grad_status == "none":
                close()  # the loss never reaches it (IA301's): it takes no part in the signal's path
                continue
            use = LayerUse(module, weights[name], call.output)
            previous = current[-1] if current else None
            if previous is not None and previous.method == "autograd" and not set(use.weight.names) & set(
                    previous.weight.next_weights):
                close()  # the graph says the previous layer's output does not come here
            current.append(use)
            if _from_autograd(use):
                follows = use.weight.next_weights
                if use.ends in ("norm",):
                    close(norm=_next_norm(recording, call.index) or "a normalization")
                elif use.ends is not None or len(follows) != 1:
                    close()
            elif module.consumer_method == "fx":
                use.decided = True
                use.method = "fx"
                if module.consumer_kind == "activation":
                    use.consumer = Activation(module.consumer or "linear", module.consumer_param)
                elif module.consumer_kind == "norm":
                    close(norm=module.consumer)
                elif module.consumer_kind == "opaque":
                    close()  # attention's matmul and the like: the scale is not ours to model
        elif module.kind == knowledge.ACTIVATION:
            last = current[-1] if current else None
            if last is not None and not last.decided and (
                last.consumer is None or (last.method == "autograd" and last.consumer.name == module.activation)
            ):
                last.consumer = Activation(module.activation or "linear", module.activation_param)
        elif module.kind == knowledge.NORM:
            if not (current and current[-1].method == "autograd"):
                close(norm=name)
        elif module.kind == knowledge.PASSTHROUGH:
            continue
        elif module.has_parameters:
            # an embedding, recurrent or attention module: its scale is not ours to model
            close()
    close()
    judged = {id(use.weight) for run in runs for use in run}
    return runs + _raw_runs(recording, judged)


def _raw_runs(recording: Recording, judged: Set[int]) -> List[List[LayerUse]]:
    """Runs of the parameters the graph shows as a matrix product's weight outside a layer
    module (``x @ A.t() @ B.t()`` with LoRA's A and B as ``nn.Parameter`` objects, Hugging Face's
    ``Conv1D``), each named by itself; a run follows ``next_weights`` from one to the next."""
    raw = [t for t in recording.parameters
           if t.kind == "parameter" and t.role == "mixing" and t.ndim == 2 and t.layer_fan_in
           and t.module_type not in knowledge.LAYER_NAMES and t.module_type not in knowledge.RECURRENT_NAMES
           and id(t) not in judged]  # a recurrent cell's weights are IA5xx's: their scale is the recurrence's
    by_name = {t.name: t for t in raw}
    continued = {n for t in raw if t.feeds in knowledge.ACTIVATION_TYPES or t.feeds == "mixing"
                 for n in t.next_weights if n in by_name and len(t.next_weights) == 1}
    runs = []
    for start in raw:
        if start.name in continued:
            continue  # in the run of the product before it
        run: List[LayerUse] = []
        current: Optional[TensorRecord] = start
        while current is not None and len(run) <= len(raw):
            stand_in = ModuleRecord(names=[current.name], type=current.module_type, kind=knowledge.LAYER,
                                    activation=None, activation_param=0.0, leaf=True, has_parameters=True)
            use = LayerUse(stand_in, current, None)
            _from_autograd(use)
            run.append(use)
            follows = current.next_weights
            current = by_name.get(follows[0]) if use.ends is None and len(follows) == 1 else None
        runs.append(run)
    return runs


def _from_autograd(use: LayerUse) -> bool:
    """Decide ``use``'s consumer from the autograd graph (``record.dataflow``) when the weight
    was seen there as a product's operand: a nonlinearity, the next layer (linear), or the end
    of its run (a norm, attention, a sum with a stream, a gate, a fork, the output)."""
    w = use.weight
    if w.role != "mixing" or w.feeds is None:
        return False
    use.method, use.decided, use.branch = "autograd", True, w.branch
    if w.feeds in knowledge.ACTIVATION_TYPES:
        if w.feeds == "leaky_relu":
            # the graph does not say the slope: F.leaky_relu's default, unless a module follows
            use.consumer, use.decided = Activation("leaky_relu", 0.01), False
        else:
            use.consumer = Activation(w.feeds)
        use.ends = None if len(w.next_weights) == 1 else "activation"
    elif w.feeds == "mixing" and len(w.next_weights) == 1:
        use.consumer = knowledge.LINEAR
    else:
        use.ends = w.feeds
    return True


def _next_norm(recording: Recording, index: int) -> Optional[str]:
    """The first normalization called after call ``index``."""
    for call in forward_calls(recording):
        if call.index > index and call.module.kind == knowledge.NORM:
            return call.name
    return None


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
