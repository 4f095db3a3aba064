"""Where each layer's output goes, read from a ``torch.fx`` trace of the model.

From every layer (and norm) node, follow the output through shape-preserving operations
(dropout, reshape, transpose, a scalar scale, the add of a bias) to what consumes it: a
nonlinearity (module or functional: ``F.relu``, ``torch.tanh``, ``x.sigmoid()``,
``F.leaky_relu(x, 0.2)``, ...), a normalization, another layer, the model's output, or an
operation we do not model (``matmul`` in attention: "opaque"). On the way, an ``add`` of two
tensors is a residual connection: a zero-initialized layer whose output is added to a skip
is a deliberate design (Fixup, ZerO, LoRA's B), not a bug.

A model that does not trace as a whole (data-dependent control flow, Hugging Face models)
is traced child by child; what stays untraced falls back to forward-hook call order, and
each layer's record says which method decided its consumer.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from initaudit.core import knowledge
from initaudit.core.knowledge import Activation
from initaudit.load.trace import trace

FX = "fx"


HOOKS = "hooks"


_FUNCTIONS: Dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu", F.leaky_relu: "leaky_relu",
    torch.tanh: "tanh", F.tanh: "tanh", F.hardtanh: "tanh", torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid", F.hardsigmoid: "sigmoid", F.gelu: "gelu", F.silu: "silu",
    F.selu: "selu", torch.selu: "selu", F.elu: "elu", F.celu: "celu", F.mish: "mish",
    F.softplus: "softplus", F.hardswish: "hardswish", F.softmax: "softmax",
    torch.softmax: "softmax", F.log_softmax: "softmax", torch.log_softmax: "softmax",
}


_METHODS = {
    "relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh", "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid", "softmax": "softmax", "log_softmax": "softmax",
}


_PASS_FUNCTIONS = {
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.flatten,
    torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze,
    F.pad, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, operator.getitem,
}


_PASS_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze",
    "unsqueeze", "to", "float", "half", "bfloat16", "double", "type_as", "expand", "clone",
    "view_as", "reshape_as", "mean",
}


_ADDS = {operator.add, operator.iadd, torch.add}


_SCALES = {operator.mul, operator.imul, operator.truediv, torch.mul}


@dataclass
class Flow:
    """What consumes one module's output, as far as the trace shows."""

    consumer: str  # "activation", "norm", "layer", "output", "opaque"
    activation: Optional[Activation] = None
    via: str = ""  # the consuming node or module
    residual: Optional[str] = None  # "residual" or "lora" when the output is added to a skip
    method: str = FX

    def describe(self) -> str:
        if self.consumer == "activation" and self.activation is not None:
            return self.activation.describe()
        return f"{self.consumer} ({self.via})" if self.via else self.consumer


def _is_tensor_node(arg: Any, graph_module: fx.GraphModule) -> bool:
    """A node carrying a computed tensor (not a constant, not a parameter read)."""
    return isinstance(arg, fx.Node) and arg.op not in ("get_attr",)


class _Walker:
    def __init__(self, graph_module: fx.GraphModule) -> None:
        self.gm = graph_module
        self.order = {node: i for i, node in enumerate(graph_module.graph.nodes)}

    def follow(self, node: fx.Node) -> Flow:
        residual: Optional[str] = None
        seen = set()
        frontier = sorted(node.users, key=self.order.__getitem__)
        previous = {u: node for u in frontier}
        while frontier:
            user = frontier.pop(0)
            if user in seen:
                continue
            seen.add(user)
            step = self._step(user)
            if isinstance(step, Flow):
                step.residual = step.residual or residual
                return step
            if step == "residual" and residual is None:
                other = next(a for a in user.args if isinstance(a, fx.Node) and a is not previous[user])
                residual = "lora" if self._frozen_layer(self._source(other)) else "residual"
            for nxt in sorted(user.users, key=self.order.__getitem__):
                previous.setdefault(nxt, user)
                frontier.append(nxt)
            frontier.sort(key=self.order.__getitem__)
        return Flow("output", residual=residual)

    def _frozen_layer(self, node: fx.Node) -> bool:
        """A call of a layer whose parameters are all frozen: the base layer of a LoRA pair."""
        if node.op != "call_module":
            return False
        module = self.gm.get_submodule(node.target)
        params = list(module.parameters())
        return knowledge.classify(module)[0] == knowledge.LAYER and bool(params) and not any(
            p.requires_grad for p in params
        )

    def _source(self, node: fx.Node) -> fx.Node:
        """Walk back through shape-only operations to the node that computed a value."""
        while (node.op == "call_method" and node.target in _PASS_METHODS) or (
            node.op == "call_function" and (node.target in _PASS_FUNCTIONS or node.target in _SCALES)
        ):
            first = next((a for a in node.args if isinstance(a, fx.Node)), None)
            if first is None:
                break
            node = first
        return node

    def _step(self, user: fx.Node) -> Any:
        if user.op == "output":
            return Flow("output")
        if user.op == "call_module":
            module = self.gm.get_submodule(user.target)
            kind, act = knowledge.classify(module)
            if kind == knowledge.ACTIVATION:
                return Flow("activation", act, via=str(user.target))
            if kind == knowledge.NORM:
                return Flow("norm", via=str(user.target))
            if kind == knowledge.LAYER:
                return Flow("layer", via=str(user.target))
            if kind == knowledge.PASSTHROUGH:
                return "pass"
            return Flow("opaque", via=str(user.target))
        if user.op == "call_function":
            target = user.target
            name = _FUNCTIONS.get(target)
            if name is not None:
                return Flow("activation", Activation(name, _slope(user) if name == "leaky_relu" else 0.0),
                            via=getattr(target, "__name__", str(target)))
            if target in _PASS_FUNCTIONS:
                return "pass"
            if target in _ADDS:
                tensors = [a for a in user.args if _is_tensor_node(a, self.gm)]
                return "residual" if len(tensors) >= 2 else "pass"  # else: the add of a bias
            if target in _SCALES:
                tensors = [a for a in user.args if _is_tensor_node(a, self.gm)]
                return "pass" if len(tensors) <= 1 else Flow("opaque", via=getattr(target, "__name__", str(target)))
            return Flow("opaque", via=getattr(target, "__name__", str(target)))
        if user.op == "call_method":
            name = _METHODS.get(user.target)
            if name is not None:
                return Flow("activation", Activation(name), via=f".{user.target}()")
            if user.target in _PASS_METHODS:
                return "pass"
            if user.target in ("add", "add_"):
                tensors = [a for a in user.args if _is_tensor_node(a, self.gm)]
                return "residual" if len(tensors) >= 2 else "pass"
            if user.target in ("mul", "mul_", "div", "div_"):
                tensors = [a for a in user.args if _is_tensor_node(a, self.gm)]
                return "pass" if len(tensors) <= 1 else Flow("opaque", via=f".{user.target}()")
            return Flow("opaque", via=f".{user.target}()")
        return Flow("opaque", via=str(user.target))


def _slope(node: fx.Node) -> float:
    value = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
    return float(value) if isinstance(value, (int, float)) else 0.01


def analyze(model: nn.Module, max_depth: int = 4, only: Optional[Set[str]] = None
            ) -> Tuple[Dict[str, Flow], List[str]]:
    """``(flow by module name, names of the modules that were traced)``.

    Flows are given for layers and norms whose consumer the trace decides. A traced
    submodule's layer whose output leaves the submodule gets no flow from it: its consumer
    is outside, in an untraced parent, and forward-hook order decides it. With ``only``
    (module names), just the modules that hold one of them are traced: the autograd graph
    has decided the rest (a failed trace of a large model costs as much as a forward).
    """
    flows: Dict[str, Flow] = {}
    traced: List[str] = []
    def visit(module: nn.Module, prefix: str, depth: int) -> None:
        if next(module.children(), None) is None:
            return  # a leaf has no inner flow to trace
        if only is not None and not any(name.startswith(prefix) for name in only):
            return  # nothing below it is left for the trace to decide
        gm = trace(module)
        if gm is None:
            if depth < max_depth:
                for name, child in module.named_children():
                    visit(child, f"{prefix}{name}.", depth + 1)
            return
        traced.append(prefix[:-1])
        walker = _Walker(gm)
        for node in gm.graph.nodes:
            if node.op != "call_module":
                continue
            kind, _ = knowledge.classify(gm.get_submodule(node.target))
            if kind not in (knowledge.LAYER, knowledge.NORM):
                continue
            name = prefix + str(node.target)
            if name in flows:
                continue  # a module called twice: its first call decides
            flow = walker.follow(node)
            if flow.consumer == "output" and module is not model:
                if flow.residual is not None:
                    flows[name] = Flow("unknown", residual=flow.residual)
                continue
            flows[name] = flow

    visit(model, "", 0)
    return flows, traced
