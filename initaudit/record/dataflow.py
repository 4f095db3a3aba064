"""How each parameter enters the forward, read from the autograd graph of the audit's own forward.

The loss's ``grad_fn`` graph is the forward as it ran, whatever wrote it (modules, raw
``nn.Parameter``\\ s in ``x @ W.t()``, Hugging Face code that ``torch.fx`` cannot trace), and
it costs nothing to read: it exists anyway until the backward. Each parameter is an
``AccumulateGrad`` node; the operation that consumes it, once views (``.t()``, slices,
``expand``, ``view``, dtype casts, ``chunk``) are looked through, gives its **role**:

- ``mixing``: an operand of a matrix product or convolution (``F.linear``, ``x @ W.t()``,
  ``bmm``, ``conv``): its elements combine many inputs into each output, so a zero or a
  constant there is a symmetry problem;
- ``lookup``: the table of an embedding (``F.embedding``, indexing): rows picked by the input;
- ``scale``: an elementwise factor (``w * x``: layer scale, ReZero, an RMSNorm's gain);
- ``offset``: an addend (a bias, a position embedding ``x + pos``);
- ``token``: concatenated with the activations (a class or register token);
- ``norm``: the affine of a fused normalization (``layer_norm``, ``batch_norm``, ``group_norm``);
- ``recurrent``: an argument of a fused recurrent kernel (``nn.LSTM``/``nn.GRU`` on CPU or cuDNN);
- ``other``: any other operation (its name is kept).

From the consuming op, the walk follows the output toward the loss through what does not
change its meaning (views, dropout, a bias, a constant or per-channel factor):

- ``feeds``: what it reaches first: a nonlinearity (``relu``, ``gelu``, ...), ``norm``,
  ``attention`` (scaled dot-product attention, softmax, a product of two activations),
  ``add`` (a sum with another activation), ``gate`` (a product with another activation),
  ``mixing`` (the next layer, no nonlinearity between), ``output`` or the op's name;
- ``branch``: ``"residual"`` when that first thing is a sum with another activation (the
  op's output is a residual branch added to a stream), ``"lora"`` when the other addend is a
  frozen layer's output (no gradient path, or a product whose weight has none);
- ``next_weights``: the parameters consumed as weights by the nearest matrix products its
  output reaches (through nonlinearities, stopping at a sum of two streams): if all of them
  are zero, its first-step gradient is zero because of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, Iterator, List, Optional, Set, Tuple

import torch

# nodes that pass one tensor on with its elements rearranged, selected or recast: a
# parameter read through them is still the same parameter
VIEWS = frozenset({
    "TBackward0", "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "TransposeBackward0",
    "TransposeBackward1", "PermuteBackward0", "ExpandBackward0", "SqueezeBackward0", "SqueezeBackward1",
    "SqueezeBackward2", "SqueezeBackward3", "UnsqueezeBackward0", "SliceBackward0", "SelectBackward0",
    "AliasBackward0", "CloneBackward0", "ToCopyBackward0", "AsStridedBackward0", "SplitBackward0",
    "SplitWithSizesBackward0", "UnsafeSplitBackward0", "UnbindBackward0", "ChunkBackward0",
    "NarrowBackward0", "ContiguousBackward0", "FlattenBackward0", "RepeatBackward0", "ExpandAsBackward0",
    "ViewAsRealBackward0", "ViewAsComplexBackward0", "UnfoldBackward0", "DiagonalBackward0",
    # identities that distributed wrappers insert: FSDP2's backward hook, DTensor's local views
    "RegisterPostBackwardFunctionBackward", "_FromTorchTensorBackward", "_ToTorchTensorBackward",
})
DROPOUT = frozenset({"NativeDropoutBackward0", "FeatureDropoutBackward0", "DropoutBackward0"})
# op -> the input slots that are the operand being multiplied (the rest, where named, are offsets)
MIXING_OPS: Dict[str, Tuple[int, ...]] = {
    "AddmmBackward0": (1, 2), "MmBackward0": (0, 1), "BmmBackward0": (0, 1), "MvBackward0": (0, 1),
    "BaddbmmBackward0": (1, 2), "AddmvBackward0": (1, 2), "DotBackward0": (0, 1), "MatmulBackward0": (0, 1),
    "ConvolutionBackward0": (0, 1), "ConvolutionBackwardOverrideable": (0, 1), "MkldnnConvolutionBackward0": (0, 1),
    "CudnnConvolutionBackward0": (0, 1), "SlowConv2DBackward0": (0, 1), "ConvDepthwise2DBackward0": (0, 1),
    "SlowConvTranspose2DBackward0": (0, 1), "ConvolutionTransposeBackward0": (0, 1), "LinearBackward0": (0, 1),
    "EinsumBackward0": (0, 1),
}
# the slot of the weight in each mixing op (the other operand is the activation)
WEIGHT_SLOT = {"AddmmBackward0": 2, "MmBackward0": 1, "MvBackward0": 0, "AddmvBackward0": 1,
               "ConvolutionBackward0": 1, "ConvolutionBackwardOverrideable": 1, "MkldnnConvolutionBackward0": 1,
               "CudnnConvolutionBackward0": 1, "SlowConv2DBackward0": 1, "ConvDepthwise2DBackward0": 1,
               "SlowConvTranspose2DBackward0": 1, "ConvolutionTransposeBackward0": 1, "LinearBackward0": 1}
LOOKUP_OPS = frozenset({"EmbeddingBackward0", "EmbeddingBagBackward0", "EmbeddingDenseBackward0", "IndexBackward0",
                        "IndexSelectBackward0", "GatherBackward0", "TakeBackward0"})
NORM_OPS = frozenset({"NativeLayerNormBackward0", "NativeBatchNormBackward0", "CudnnBatchNormBackward0",
                      "MiopenBatchNormBackward0", "NativeGroupNormBackward0", "FusedRmsNormBackward0",
                      "RmsNormBackward0", "NativeBatchNormLegitBackward0", "BatchNormWithUpdateBackward0"})
RECURRENT_OPS = frozenset({"MkldnnRnnLayerBackward0", "CudnnRnnBackward0", "MiopenRnnBackward0", "LstmMpsBackward0",
                           "ThnnFusedLstmCellBackward0", "ThnnFusedGruCellBackward0"})
ADDS = frozenset({"AddBackward0", "SubBackward0", "AddcmulBackward0", "AddcdivBackward0", "RsubBackward0"})
SCALES = frozenset({"MulBackward0", "DivBackward0"})
CONSTANT_SCALES = frozenset({"MulBackward1", "DivBackward1", "NegBackward0", "AddBackward1", "SubBackward1"})
CONCATS = frozenset({"CatBackward0", "StackBackward0"})
ATTENTION_OPS = frozenset({
    "ScaledDotProductFlashAttentionForCpuBackward0", "ScaledDotProductEfficientAttentionBackward0",
    "ScaledDotProductFlashAttentionBackward0", "ScaledDotProductCudnnAttentionBackward0",
    "ScaledDotProductAttentionMathBackward0", "SoftmaxBackward0", "LogSoftmaxBackward0",
})
ACTIVATIONS = {
    "ReluBackward0": "relu", "Relu6Backward0": "relu", "LeakyReluBackward0": "leaky_relu", "GeluBackward0": "gelu",
    "SiluBackward0": "silu", "TanhBackward0": "tanh", "SigmoidBackward0": "sigmoid", "EluBackward0": "elu",
    "HardtanhBackward0": "tanh", "HardsigmoidBackward0": "sigmoid", "HardswishBackward0": "hardswish",
    "MishBackward0": "mish", "SoftplusBackward0": "softplus", "ThresholdBackward0": "relu",
    "CeluBackward0": "celu", "PreluKernelBackward0": "leaky_relu", "ClampMinBackward0": "relu",
}


@dataclass
class Use:
    """How one parameter enters the forward (the first of its consuming ops)."""

    op: str  # the consuming autograd node, e.g. "AddmmBackward0"
    role: str  # mixing, lookup, scale, offset, token, norm, recurrent, other
    feeds: Optional[str] = None  # what the op's output reaches first (see the module's docstring)
    branch: Optional[str] = None  # "residual" or "lora": the op's output is added to a stream
    next_weights: List[Hashable] = field(default_factory=list)  # keys of the nearest downstream weights


def node_name(node: Any) -> str:
    return type(node).__name__


class Graph:
    """The autograd graph below ``roots``, with edges both ways; ``parameters`` are the ids of
    the leaves that are parameters (the rest, an input that requires grad, are activations)."""

    def __init__(self, roots: List[Any], parameters: Set[int]) -> None:
        self.parameters = parameters
        self.parents: Dict[Any, List[Tuple[Any, int]]] = {}  # node -> [(consumer node, input slot)]
        self.inputs: Dict[Any, List[Any]] = {}  # node -> its input nodes by slot (None: no gradient)
        self.leaves: Dict[int, Any] = {}  # id(leaf tensor) -> its AccumulateGrad node
        stack = [r for r in roots if r is not None]
        while stack:
            node = stack.pop()
            if node in self.inputs:
                continue
            below = [n for n, _ in node.next_functions]
            self.inputs[node] = below
            variable = getattr(node, "variable", None)
            if variable is not None:
                self.leaves[id(variable)] = node
            for slot, child in enumerate(below):
                if child is None:
                    continue
                self.parents.setdefault(child, []).append((node, slot))
                if child not in self.inputs:
                    stack.append(child)

    def consumers(self, node: Any) -> Iterator[Tuple[Any, int]]:
        """The ops that read ``node``'s output, looking through views: ``(op, slot)``."""
        seen: Set[Any] = set()
        stack = list(self.parents.get(node, ()))
        while stack:
            parent, slot = stack.pop()
            if parent in seen:
                continue
            seen.add(parent)
            if node_name(parent) in VIEWS:
                stack.extend(self.parents.get(parent, ()))
            else:
                yield parent, slot

    def source(self, node: Any) -> Any:
        """``node`` with views looked through toward the inputs (a leaf, or the op that made it)."""
        for _ in range(64):
            if node is None or node_name(node) not in VIEWS:
                return node
            below = [n for n in self.inputs.get(node, ()) if n is not None]
            if len(below) != 1:
                return node
            node = below[0]
        return node

    def is_parameter_path(self, node: Any) -> bool:
        """Whether ``node`` is a parameter read through views (a bias, a scale), not an activation."""
        source = self.source(node)
        variable = getattr(source, "variable", None) if source is not None else None
        return variable is not None and id(variable) in self.parameters

    def other_input(self, op: Any, slot: int) -> Tuple[bool, Any]:
        """``(has another input, that input's node)`` of a binary op (``None``: no gradient path)."""
        inputs = self.inputs.get(op, [])
        others = [n for i, n in enumerate(inputs) if i != slot]
        if not others:
            return False, None
        return True, others[0]

    def weight_leaf(self, op: Any) -> Optional[Any]:
        """The leaf in the weight slot of a mixing op, through views (``None``: none with a gradient)."""
        slot = WEIGHT_SLOT.get(node_name(op))
        inputs = self.inputs.get(op, [])
        if slot is None or slot >= len(inputs) or inputs[slot] is None:
            return None
        source = self.source(inputs[slot])
        return source if self.is_parameter_path(source) else None

    def frozen_product(self, node: Any) -> bool:
        """Whether ``node`` (through views and a bias) is a matrix product whose weight takes no
        gradient: a frozen layer's output."""
        node = self.source(node)
        for _ in range(4):
            if node is None:
                return False
            name = node_name(node)
            if name in WEIGHT_SLOT:
                slot = WEIGHT_SLOT[name]
                inputs = self.inputs.get(node, [])
                return slot < len(inputs) and inputs[slot] is None
            if name in ADDS or name in CONSTANT_SCALES:
                below = [n for n in self.inputs.get(node, ()) if n is not None and not self.is_parameter_path(n)]
                if len(below) != 1:
                    return False
                node = self.source(below[0])
                continue
            return False
        return False


def role_of(op: str, slot: int) -> str:
    """The role of the input in ``slot`` of the autograd node ``op`` (see the module docstring)."""
    if op in MIXING_OPS:
        return "mixing" if slot in MIXING_OPS[op] else "offset"
    if op in LOOKUP_OPS:
        return "lookup" if slot == 0 else "other"
    if op in NORM_OPS:
        return "norm" if slot >= 1 else "other"
    if op in RECURRENT_OPS:
        return "recurrent"
    if op in SCALES:
        return "scale"
    if op in ADDS:
        return "offset"
    if op in CONCATS:
        return "token"
    return "other"


def _downstream(graph: Graph, op: Any) -> Tuple[Optional[str], Optional[str]]:
    """``(feeds, branch)`` of an op's output (see the module docstring)."""
    node = op
    for _ in range(32):
        parents = list(graph.consumers(node))
        if not parents:
            return "output", None
        if len(parents) > 1:
            # used twice (a stream read by a block and by its skip): what comes first is ambiguous
            names = {node_name(p) for p, _ in parents}
            return ("norm" if names & NORM_OPS else "fork"), None
        parent, slot = parents[0]
        name = node_name(parent)
        if name in DROPOUT or name in CONSTANT_SCALES:
            node = parent
            continue
        if name in ADDS or name in SCALES:
            has_other, other = graph.other_input(parent, slot)
            if has_other and other is not None and graph.is_parameter_path(other):
                node = parent  # a bias or a per-channel factor (layer scale): still this branch
                continue
            if name in ADDS:
                if not has_other:
                    node = parent
                    continue
                frozen = other is None or graph.frozen_product(other)
                return "add", ("lora" if frozen else "residual")
            if not has_other or other is None:
                node = parent  # a product with a constant tensor
                continue
            return "gate", None
        if name in ACTIVATIONS:
            return ACTIVATIONS[name], None
        if name in NORM_OPS:
            return "norm", None
        if name in ATTENTION_OPS or name in ("BmmBackward0", "MatmulBackward0") and graph.weight_leaf(parent) is None:
            return "attention", None
        if name in MIXING_OPS:
            return "mixing", None
        return name, None
    return None, None


def _next_weights(graph: Graph, op: Any) -> List[int]:
    """``id``\\ s of the weights of the nearest matrix products above ``op``'s output, through
    nonlinearities, views, biases and scales; empty where a sum of streams, a norm or an
    unknown op comes first."""
    found: List[int] = []
    seen: Set[Any] = set()
    stack = [op]
    while stack:
        node = stack.pop()
        for parent, slot in graph.consumers(node):
            if parent in seen:
                continue
            seen.add(parent)
            name = node_name(parent)
            if name in WEIGHT_SLOT and slot != WEIGHT_SLOT[name]:
                leaf = graph.weight_leaf(parent)
                if leaf is None:
                    return []  # a frozen product: its own input gradient flows regardless
                found.append(id(leaf.variable))
            elif name in ACTIVATIONS or name in DROPOUT or name in CONSTANT_SCALES:
                stack.append(parent)
            elif name in ADDS or name in SCALES:
                has_other, other = graph.other_input(parent, slot)
                if has_other and other is not None and not graph.is_parameter_path(other):
                    return []  # a sum or product with another activation: gradient arrives from there too
                stack.append(parent)
            else:
                return []
    return found


def parameter_uses(roots: List[torch.Tensor], keys: Dict[int, Hashable]) -> Dict[Hashable, Use]:
    """The :class:`Use` of every parameter that the graph below ``roots`` reaches, by its key
    in ``keys`` (``id`` of a tensor the graph may hold -> the parameter's key)."""
    graph = Graph([r.grad_fn for r in roots if r.grad_fn is not None], set(keys))
    uses: Dict[Hashable, Use] = {}
    for held, leaf in graph.leaves.items():
        key = keys.get(held)
        if key is None or key in uses:
            continue
        consumers = list(graph.consumers(leaf))
        if not consumers:
            continue
        # a parameter read several ways (a tied embedding and head) takes its mixing use first
        ranked = sorted(consumers, key=lambda c: role_of(node_name(c[0]), c[1]) != "mixing")
        op, slot = ranked[0]
        feeds, branch = _downstream(graph, op)
        following = [keys[i] for i in _next_weights(graph, op) if i in keys]
        uses[key] = Use(node_name(op), role_of(node_name(op), slot), feeds, branch, following)
    return uses
