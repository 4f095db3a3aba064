"""How each parameter enters the forward, read from the autograd graph of the audit's own forward.

The loss's ``grad_fn`` graph is the forward as it ran, whatever wrote it (modules, raw
``nn.Parameter`` objects in ``x @ W.t()``, Hugging Face code that ``torch.fx`` cannot trace), and
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

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Hashable, Iterator, List, Optional, Set, Tuple

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
# elementwise functions of one tensor: a parameter passed through them (``logit_scale.clamp(max=m).exp()``,
# ``1 + weight``, ``alpha.sigmoid()``) keeps the role of the op that then consumes it
UNARY = frozenset({
    "ClampBackward1", "ClampMaxBackward0", "ClampMinBackward0", "ClampBackward0", "ExpBackward0", "LogBackward0",
    "AbsBackward0", "NegBackward0", "SqrtBackward0", "PowBackward0", "SigmoidBackward0", "TanhBackward0",
    "SoftplusBackward0", "ReciprocalBackward0", "MulBackward1", "DivBackward1", "RsqrtBackward0", "Exp2Backward0",
    "LogSigmoidBackward0",
})
# a constant added to a parameter: it is then an offset (Gemma's RMSNorm gain is ``1 + weight``,
# so a zero weight is a gain of one), not the factor it feeds
SHIFTS = frozenset({"AddBackward1", "SubBackward1", "RsubBackward1"})
# what a normalization written with tensor ops computes from its input besides the division
STATISTICS = frozenset({"PowBackward0", "MeanBackward0", "MeanBackward1", "VarBackward0", "VarMeanBackward0",
                        "StdBackward0", "StdMeanBackward0", "SubBackward0", "MulBackward0", "LinalgVectorNormBackward0",
                        "NormBackward1", "SumBackward1"})
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
SUBTRACTIONS = frozenset({"SubBackward0", "RsubBackward0", "RsubBackward1"})
SCALES = frozenset({"MulBackward0", "DivBackward0"})
POOLS = frozenset({"MeanBackward0", "MeanBackward1", "AvgPool1DBackward0", "AvgPool2DBackward0", "AvgPool3DBackward0",
                   "AdaptiveAvgPool2DBackward0", "AdaptiveAvgPool3DBackward0", "MaxPool2DWithIndicesBackward0"})
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
# what a normalization's output may pass through and still be read as normalized: views aside,
# dropout, its affine, an elementwise nonlinearity, average or max pooling, padding, an in-place
# write of it into another tensor (``CopySlices``: the value written is what is read)
PASSING_TO_NORM = (DROPOUT | ADDS | SCALES | CONSTANT_SCALES | POOLS | frozenset(ACTIVATIONS)
                   | {"ConstantPadNdBackward0", "CopySlices"})

# ops between a module call's output and a product that reads it which keep what the output
# carries about the input (a pooled or padded representation depends on the input as it does)
OPERAND_PASSING = DROPOUT | POOLS | {"ConstantPadNdBackward0"}


@dataclass
class Use:
    """How one parameter enters the forward (the first of its consuming ops)."""

    op: str  # the consuming autograd node, e.g. "AddmmBackward0"
    role: str  # mixing, lookup, scale, offset, token, norm, recurrent, other
    feeds: Optional[str] = None  # what the op's output reaches first (see the module's docstring)
    branch: Optional[str] = None  # "residual" or "lora": the op's output is added to a stream
    next_weights: List[Hashable] = field(default_factory=list)  # keys of the nearest downstream weights
    reaches: Optional[str] = None  # where the op's output ends up: "branch", "norm", "output", joined by "+"
    gradient_weights: Optional[List[Hashable]] = None  # keys of the nearest weights on every path to the loss
    fan_in: Optional[int] = None  # a matrix product's operand: the dimension summed over, as the product reads it
    input_normalized: bool = False  # a product's activation operand comes straight from a normalization
    stream_reaches: Optional[str] = None  # for a residual branch: where the stream it joins ends up (as reaches)
    input_call: Optional[int] = None  # a product's: the module call whose output is its activation operand
    # the batch normalization (autograd op) the op's output goes straight into, which subtracts
    # each channel's batch mean: a per-channel offset added there is removed again
    normalized_by: Optional[str] = None


def node_name(node: Any) -> str:
    return type(node).__name__


class Graph:
    """The autograd graph below ``roots``, with edges both ways; ``parameters`` are the ids of
    the leaves that are parameters (the rest, an input that requires grad, are activations)."""

    def __init__(self, roots: List[Any], parameters: Set[int]) -> None:
        self.parameters = parameters
        self._sides: Dict[Tuple[Any, int], Optional[str]] = {}
        self._terminals: Dict[Any, FrozenSet[str]] = {}
        self._through: Dict[Any, FrozenSet[str]] = {}
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

    def downstream_ops(self, start: Any, follow: Callable[[Any, int], bool]) -> Iterator[Tuple[Any, int]]:
        """Each op that reads ``start``'s output (through views), then each op reading theirs
        where ``follow(op, slot)`` says so; every op once, as ``(op, slot)``."""
        seen: Set[Any] = set()
        stack = [start]
        while stack:
            node = stack.pop()
            for parent, slot in self.consumers(node):
                if parent in seen:
                    continue
                seen.add(parent)
                yield parent, slot
                if follow(parent, slot):
                    stack.append(parent)

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

    def parameter_source(self, node: Any) -> Optional[Any]:
        """The parameter's leaf ``node`` reads, through views and elementwise functions of it
        alone (``alpha``, ``alpha.exp()``), or ``None``."""
        for _ in range(16):
            node = self.source(node)
            if node is None:
                return None
            if getattr(node, "variable", None) is not None:
                return node if id(node.variable) in self.parameters else None
            below = [n for n in self.inputs.get(node, ()) if n is not None]
            # a function of the parameter alone: elementwise, or with a constant tensor (alpha * gain)
            if len(below) != 1 or node_name(node) not in UNARY | SCALES:
                return None
            node = below[0]
        return None

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

    def descends(self, node: Any, ancestors: Set[Any], limit: int = 4000) -> bool:
        """Whether one of ``ancestors``' outputs is among what ``node`` was computed from
        (within ``limit`` nodes of ``node``)."""
        seen: Set[Any] = set()
        stack = [node]
        while stack and len(seen) < limit:
            current = stack.pop()
            if current in ancestors:
                return True
            if current in seen or current is None:
                continue
            seen.add(current)
            stack.extend(n for n in self.inputs.get(current, ()) if n is not None)
        return False

    def addends(self, node: Any) -> Set[Any]:
        """The terms of a sum (through views, nested sums and constant factors): ``{x, a}`` for
        ``(x + a)`` and for ``(alpha * x + a)`` (DeepNet's up-weighted stream)."""
        terms: Set[Any] = set()
        stack = [self.source(node)]
        while stack and len(terms) < 64:
            current = stack.pop()
            if current is None:
                continue
            if node_name(current) in ("AddBackward0", "SubBackward0"):
                stack.extend(self.source(n) for n in self.inputs.get(current, ()))
            elif is_constant_factor(current):
                stack.extend(self.source(n) for n in self.inputs.get(current, ()) if n is not None)
            else:
                terms.add(current)
        return terms

    def residual_side(self, add: Any, slot: int) -> Optional[str]:
        """For a sum of two activations, which side the input in ``slot`` is: ``"branch"`` when
        it was computed from a term of the other addend (``x + f(x)``: it is ``f(x)``; in a
        parallel block ``(x + attn(x)) + mlp(x)``, ``mlp(x)``), ``"stream"`` when the other was
        computed from one of its terms, ``None`` for a plain sum (``tok + pos``, rotary
        embeddings' ``q cos + rot(q) sin``, a base layer plus its LoRA product)."""
        key = (add, slot)
        if key not in self._sides:
            has_other, other = self.other_input(add, slot)
            inputs = self.inputs.get(add, [])
            mine = self.source(inputs[slot]) if slot < len(inputs) else None
            other = self.source(other) if has_other else None
            side = None
            if mine is not None and other is not None and mine is not other:
                if self.descends(mine, self.addends(other)):
                    side = "branch"
                elif self.descends(other, self.addends(mine)):
                    side = "stream"
            self._sides[key] = side
        return self._sides[key]

    def normalizes(self, op: Any) -> bool:
        """Whether ``op`` divides its input by a root of its second moment, as a normalization
        written with tensor ops does (``x * rsqrt(mean(x^2) + eps)``: RMSNorm in Llama, T5;
        ``(x - mean) / sqrt(var + eps)``)."""
        name = node_name(op)
        inputs = [self.source(n) for n in self.inputs.get(op, ())]
        if name == "MulBackward0":
            return any(n is not None and node_name(n) == "RsqrtBackward0" for n in inputs)
        if name == "DivBackward0" and len(inputs) == 2 and inputs[1] is not None:
            return node_name(inputs[1]) in ("SqrtBackward0", "StdBackward0", "LinalgVectorNormBackward0",
                                            "NormBackward1", "ClampMinBackward0")
        return False

    def normalized_input(self, op: Any) -> bool:
        """Whether the activation operand of the mixing ``op`` is a normalization's output, through
        views, dropout, the norm's own affine (a gain, a bias), elementwise nonlinearities, pooling,
        and sums whose every term is one: a pre-LN block's first layer, a pre-activation block's, a
        CNN's classifier after its last BatchNorm (added to a normalized shortcut), ReLU and pooling."""
        operand = self.activation_operand(op)
        return operand is not None and self._normalized(operand, {})

    def activation_operand(self, op: Any) -> Any:
        """The source of the mixing ``op``'s one activation operand (the input it multiplies by
        the weight); ``None`` where it has none, or several."""
        slot = WEIGHT_SLOT.get(node_name(op))
        inputs = self.inputs.get(op, [])
        activations = [n for i, n in enumerate(inputs) if i != slot and n is not None and not self.is_parameter_path(n)]
        return self.source(activations[0]) if len(activations) == 1 else None

    def operand_call(self, op: Any, made: Dict[Any, int]) -> Optional[int]:
        """The module call (by index, ``made``: the node that made each call's output) whose output
        is the activation operand of the mixing ``op``, through views, dropout, padding and
        pooling (they keep what the call's output carries, or average it over a window, which
        by design leaves less that varies from one example to the next); ``None`` where an
        unrecorded op (a sum written in a forward, a functional nonlinearity) comes between."""
        node = self.activation_operand(op)
        for _ in range(16):
            if node is None:
                return None
            if node in made and node_name(node) not in POOLS:  # a pooling module: what it averages
                return made[node]
            below = [n for n in self.inputs.get(node, ()) if n is not None and not self.is_parameter_path(n)]
            if node_name(node) not in OPERAND_PASSING or len(below) != 1:
                return None
            node = self.source(below[0])
        return None

    def _normalized(self, node: Any, memo: Dict[Any, bool], depth: int = 0) -> bool:
        if node is None or depth > 12:
            return False
        if node in memo:
            return memo[node]
        memo[node] = False  # a cycle proves nothing
        name = node_name(node)
        below = [self.source(n) for n in self.inputs.get(node, ()) if n is not None and not self.is_parameter_path(n)]
        if name in NORM_OPS or self.normalizes(node):
            found = True
        elif name in ADDS and len(below) >= 2:
            found = all(self._normalized(n, memo, depth + 1) for n in below)  # a sum of normalized terms
        else:
            # an affine's factor or addend is a parameter: one activation input remains
            found = name in PASSING_TO_NORM and len(below) == 1 and self._normalized(below[0], memo, depth + 1)
        memo[node] = found
        return found

    def stream_reaches(self, op: Any, limit: int = 2000) -> FrozenSet[str]:
        """Where the streams that ``op``'s output joins as a residual branch end up (as
        :meth:`terminals`: ``{"norm"}`` when every path of those sums meets a normalization
        before the loss, as a pre-LN stack's final norm makes it); empty when it joins none."""
        found: Set[str] = set()
        seen: Set[Any] = set()
        stack = [op]
        while stack and len(seen) < limit:
            node = stack.pop()
            for parent, slot in self.consumers(node):
                if parent in seen:
                    continue
                seen.add(parent)
                if node_name(parent) in ADDS and self.residual_side(parent, slot) == "branch":
                    found |= self.terminals(parent)
                elif node_name(parent) not in NORM_OPS and not self.normalizes(parent):
                    stack.append(parent)
        return frozenset(found)

    def terminals(self, node: Any, through_norms: bool = False) -> FrozenSet[str]:
        """Where ``node``'s output ends up, on every path toward the loss: ``"branch"`` (it is
        summed into a stream as a residual branch), ``"norm"`` (a normalization comes first)
        or ``"output"`` (it reaches the loss with neither). ``through_norms``: normalizations
        do not end a path (where the signal goes, rescaled or not: ``"branch"`` or ``"output"``)."""
        memo = self._through if through_norms else self._terminals

        def stop(op: Any, slot: int) -> Optional[str]:
            found = self._stop(op, slot)
            return None if through_norms and found == "norm" else found

        stack: List[Tuple[Any, bool]] = [(node, False)]
        while stack:
            current, expanded = stack.pop()
            if current in memo:
                continue
            consumers = list(self.consumers(current))
            if not expanded:
                stack.append((current, True))
                stack.extend((p, False) for p, slot in consumers if stop(p, slot) is None and p not in memo)
                continue
            found: Set[str] = set() if consumers else {"output"}
            for p, slot in consumers:
                end = stop(p, slot)
                found |= {end} if end is not None else memo.get(p, frozenset())
            memo[current] = frozenset(found)
        return memo[node]

    def _stop(self, op: Any, slot: int) -> Optional[str]:
        if node_name(op) in NORM_OPS or self.normalizes(op):
            return "norm"
        if node_name(op) in ADDS:
            if self.residual_side(op, slot) == "branch":
                return "branch"
            if self.adapter_sum(op, slot):
                return "branch"  # an adapter's product added to a frozen layer's output (LoRA)
        return None

    def adapter_sum(self, add: Any, slot: int) -> bool:
        """Whether ``add`` sums a product (the input in ``slot``, through views and scales) with a
        frozen layer's output: a LoRA update on its base layer. Without a gradient path at all
        the other addend is a frozen layer fed by frozen layers (the first adapted layer of a
        frozen model), so it counts too, but only when this side is a product: ``x + eps``
        with a constant ``eps`` is no adapter, nor is a difference: an adapter's update is added
        to its base's output, while ``out - target`` (a regression loss written by hand) compares
        a product with a tensor that has no gradient either."""
        if node_name(add) in SUBTRACTIONS:
            return False
        has_other, other = self.other_input(add, slot)
        if not has_other or (other is not None and (self.is_parameter_path(other) or not self.frozen_product(other))):
            return False
        inputs = self.inputs.get(add, [])
        node = self.source(inputs[slot]) if slot < len(inputs) else None
        node = self.made_by(node, CONSTANT_SCALES | DROPOUT | SCALES)
        return node is not None and node_name(node) in MIXING_OPS

    def frozen_product(self, node: Any) -> bool:
        """Whether ``node`` (through views and a bias) is a matrix product whose weight takes no
        gradient: a frozen layer's output."""
        node = self.made_by(node, ADDS | CONSTANT_SCALES)
        if node is None or node_name(node) not in WEIGHT_SLOT:
            return False
        slot, inputs = WEIGHT_SLOT[node_name(node)], self.inputs.get(node, [])
        return slot < len(inputs) and inputs[slot] is None

    def made_by(self, node: Any, passing: FrozenSet[str], steps: int = 8) -> Any:
        """The op that made ``node``'s activation, looking back through views and the ops in
        ``passing`` that pass one activation on (a bias, a constant or parameter factor, dropout)."""
        node = self.source(node)
        for _ in range(steps):
            if node is None or node_name(node) not in passing:
                return node
            below = [n for n in self.inputs.get(node, ()) if n is not None and not self.is_parameter_path(n)]
            if len(below) != 1:
                return node
            node = self.source(below[0])
        return node


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
    if op in ADDS or op in SHIFTS:
        return "offset"
    if op in CONCATS:
        return "token"
    return "other"


def activation_of(node: Any) -> Optional[str]:
    """The nonlinearity an autograd node computes, by the gain family it belongs to; the saved
    arguments tell ReLU6 (``hardtanh(0, 6)``) from hardtanh and SELU from ELU."""
    name = node_name(node)
    if name == "HardtanhBackward0":
        return "relu" if getattr(node, "_saved_min_val", -1.0) == 0 else "tanh"
    if name == "EluBackward0":
        scale = getattr(node, "_saved_scale", 1.0)
        return "selu" if scale is not None and abs(float(scale) - 1.0507) < 1e-3 else "elu"
    return ACTIVATIONS.get(name)


def _past_nonlinearity(graph: Graph, op: Any) -> Optional[str]:
    """What ``op``'s output reaches first (as :func:`_downstream`), looking past one nonlinearity:
    ``"gate"`` for a squeeze-excite or GLU branch (``sigmoid`` then a product with the stream)."""
    feeds, _ = _downstream(graph, op)
    if feeds in set(ACTIVATIONS.values()) | {"selu"}:  # the names activation_of gives
        parents = list(graph.consumers(op))
        while len(parents) == 1 and node_name(parents[0][0]) not in ACTIVATIONS:
            parents = list(graph.consumers(parents[0][0]))  # views, a bias, dropout
        if len(parents) == 1:
            after, _ = _downstream(graph, parents[0][0])
            if after in ("gate", "attention", "norm"):
                return after
    return feeds


def _contracted(graph: Graph, leaf: Any, op: Any, slot: int) -> Optional[int]:
    """The dimension a 2-D parameter contributes to the sum of a matrix product (``mm``,
    ``addmm``) as its right operand: its first dimension, or its second when it is read
    transposed (``x @ W.t()``, ``F.linear``); ``None`` for anything else."""
    variable = leaf.variable
    if variable.dim() != 2 or node_name(op) not in ("MmBackward0", "AddmmBackward0"):
        return None
    if slot != WEIGHT_SLOT[node_name(op)]:
        return None
    node, flips = graph.inputs[op][slot], 0
    for _ in range(16):
        if node is None or node is leaf:
            break
        if node_name(node) in ("TBackward0", "TransposeBackward0"):
            flips += 1
        below = [n for n in graph.inputs.get(node, ()) if n is not None]
        if len(below) != 1 or node_name(node) not in VIEWS:
            return None
        node = below[0]
    if node is not leaf:
        return None
    return int(variable.shape[1] if flips % 2 else variable.shape[0])


def _through_unary(graph: Graph, leaf: Any) -> List[Tuple[Any, int]]:
    """The ops that consume a parameter, looking through views and elementwise functions of it
    alone (:data:`UNARY`)."""

    def alone(op: Any, slot: int) -> bool:  # a function of it, with a constant tensor at most
        return node_name(op) in UNARY | SCALES and len([n for n in graph.inputs.get(op, ()) if n is not None]) == 1

    return [(op, slot) for op, slot in graph.downstream_ops(leaf, alone) if not alone(op, slot)]


def _downstream(graph: Graph, op: Any) -> Tuple[Optional[str], Optional[str]]:
    """``(feeds, branch)`` of an op's output (see the module docstring)."""
    node = op
    for _ in range(32):
        parents = list(graph.consumers(node))
        if not parents:
            return "output", None
        if len(parents) > 1:
            # read twice: by a normalization written with tensor ops (its statistics and the
            # division), or by a block and its skip, where what comes first is ambiguous
            normalizing = [graph._stop(p, slot) == "norm" for p, slot in parents]
            statistics = [node_name(p) in STATISTICS for p, _ in parents]
            if any(normalizing) and all(n or t for n, t in zip(normalizing, statistics)):
                return "norm", None
            return "fork", None
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
            if graph.normalizes(parent):
                return "norm", None
            if name in ADDS:
                if not has_other:
                    node = parent
                    continue
                if graph.residual_side(parent, slot) == "branch":
                    return "add", "residual"
                return "add", ("lora" if graph.adapter_sum(parent, slot) else None)
            if not has_other or other is None:
                node = parent  # a product with a constant tensor
                continue
            return "gate", None
        if name in ACTIVATIONS:
            return activation_of(parent), None
        if name in NORM_OPS or graph.normalizes(parent):
            return "norm", None
        if name in ATTENTION_OPS or name in ("BmmBackward0", "MatmulBackward0") and graph.weight_leaf(parent) is None:
            return "attention", None
        if name in MIXING_OPS:
            return "mixing", None
        return name, None
    return None, None


# normalizations that subtract a per-channel mean over the batch (and positions): BatchNorm in
# training mode, and InstanceNorm, which PyTorch computes as a batch norm of the reshaped input
CHANNEL_MEAN_NORMS = frozenset({"NativeBatchNormBackward0", "CudnnBatchNormBackward0", "MiopenBatchNormBackward0",
                                "NativeBatchNormLegitBackward0", "BatchNormWithUpdateBackward0"})
# ops that move a channel's values without mixing channels or positions
CHANNEL_VIEWS = frozenset({"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "TransposeBackward0",
                           "PermuteBackward0", "UnsqueezeBackward0", "SqueezeBackward0", "SqueezeBackward1",
                           "CloneBackward0", "ContiguousBackward0"})


def _channel_norm_after(graph: Graph, op: Any) -> Optional[str]:
    """The batch normalization that ``op``'s output goes straight into (through views, dropout
    and parameter offsets only, read by nothing else), or ``None``."""
    node = op
    for _ in range(16):
        parents = list(graph.consumers(node))
        if len(parents) != 1:
            return None
        parent, slot = parents[0]
        name = node_name(parent)
        if name in CHANNEL_MEAN_NORMS:
            return name
        if name in CHANNEL_VIEWS or name in DROPOUT:
            node = parent
            continue
        if name in ADDS:
            has_other, other = graph.other_input(parent, slot)
            if has_other and other is not None and graph.is_parameter_path(other):
                node = parent  # a bias added separately
                continue
        return None
    return None


def _gradient_weights(graph: Graph, op: Any, limit: int = 20000) -> Optional[List[int]]:
    """The ``id`` values of the weights of the nearest products on every path from ``op``'s output to the
    loss, through any other operation; ``None`` when some path reaches the loss without one
    (or the walk grows past ``limit`` nodes). If all of them are zero, ``op``'s output gradient
    is zero: a gradient is zero wherever every path back from the loss is multiplied by zero."""
    found: List[int] = []
    seen: Set[Any] = set()
    stack = [op]
    while stack:
        node = stack.pop()
        consumers = list(graph.consumers(node))
        if not consumers:
            return None  # the loss itself
        for parent, slot in consumers:
            if parent in seen:
                continue
            seen.add(parent)
            if len(seen) > limit:
                return None
            name = node_name(parent)
            leaf = graph.weight_leaf(parent) if name in WEIGHT_SLOT and slot != WEIGHT_SLOT[name] else None
            if leaf is None and name == "MulBackward0":
                has_other, other = graph.other_input(parent, slot)
                # a product with a parameter (ReZero's alpha, a layer scale, a gain) gates it too
                leaf = graph.parameter_source(other) if has_other else None
            if leaf is not None:
                found.append(id(leaf.variable))
            else:
                stack.append(parent)
    return found


def _next_weights(graph: Graph, op: Any) -> List[int]:
    """The ``id`` values of the weights of the nearest matrix products above ``op``'s output,
    through nonlinearities, views, biases and scales; empty where a sum of streams, a norm or
    an unknown op comes first."""
    passing = ACTIVATIONS.keys() | DROPOUT | CONSTANT_SCALES | ADDS | SCALES
    found: List[int] = []
    for parent, slot in graph.downstream_ops(op, lambda p, _: node_name(p) in passing):
        name = node_name(parent)
        if name in WEIGHT_SLOT and slot != WEIGHT_SLOT[name]:
            leaf = graph.weight_leaf(parent)
            if leaf is None:
                return []  # a frozen product: its own input gradient flows regardless
            found.append(id(leaf.variable))
        elif name in ADDS or name in SCALES:
            has_other, other = graph.other_input(parent, slot)
            if has_other and other is not None and not graph.is_parameter_path(other):
                return []  # a sum or product with another activation: gradient arrives from there too
        elif name not in passing:
            return []
    return found


def stream_outputs(graph: Graph, output_nodes: List[Any]) -> List[int]:
    """The positions in ``output_nodes`` (the nodes that made modules' outputs) of the outputs
    that are a residual stream: a sum ``x + f(x)`` (through views), as a block returns it."""
    found = []
    seen: Set[Any] = set()
    for index, node in enumerate(output_nodes):
        source = graph.source(node) if node is not None else None
        if source in seen:
            continue  # a container passing its last block's sum on: one observation
        seen.add(source)
        if source is not None and node_name(source) in ACTIVATIONS:
            below = [n for n in graph.inputs.get(source, ()) if n is not None]
            source = graph.source(below[0]) if len(below) == 1 else None  # relu(x + f(x)), as ResNets end a block
        if source is None or source not in graph.inputs or node_name(source) not in ADDS:
            continue
        if any(graph.residual_side(source, slot) is not None for slot in range(len(graph.inputs[source]))):
            found.append(index)
    return found


# one residual sum x + f(x): (the call whose output is the branch f(x), the constant factor
# between that output and the sum, the call whose output is the stream x or None, the earlier
# sum (by position) that is the stream x or None, the constant factor on the stream's side)
ResidualSum = Tuple[int, float, Optional[int], Optional[int], float]


def _constant_operand(node: Any) -> Any:
    """The constant ``node`` multiplies its one activation by (``x * c``, ``c * x``, ``x / c``): a
    Python number, or a one-element tensor that takes no gradient; ``None`` for anything else (a
    parameter, a mask, a product of two activations)."""
    name = node_name(node)
    if name in ("MulBackward1", "DivBackward1"):
        other = getattr(node, "_saved_other", None)
        return other if isinstance(other, (int, float)) and not isinstance(other, bool) else None
    if name not in ("MulBackward0", "DivBackward0"):
        return None
    for slot in ("self", "other") if name == "MulBackward0" else ("other",):
        value = saved_tensor(node, slot)
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.requires_grad:
            return value
    return None


def saved_tensor(node: Any, slot: str) -> Optional[torch.Tensor]:
    """The tensor the autograd ``node`` saved as ``slot`` (``"self"``, ``"target"``, ...), or
    ``None``: none, freed, or saved through hooks (activation checkpointing, offloading), which
    reading would unpack: the checkpointed region run again, its module hooks firing."""
    raw = getattr(node, f"_raw_saved_{slot}", None)
    if raw is None or getattr(raw, "unpack_hook", True) is not None:
        return None
    try:
        value = getattr(node, f"_saved_{slot}", None)
    except RuntimeError:  # freed, or saved as something that cannot be read back
        return None
    return value if isinstance(value, torch.Tensor) else None


def is_constant_factor(node: Any) -> bool:
    """Whether ``node`` multiplies (or divides) its one activation by a constant."""
    return _constant_operand(node) is not None


def constant_factor(node: Any) -> Optional[float]:
    """The number ``node`` multiplies its one activation by (:func:`_constant_operand`: Gemma's
    ``sqrt(d)`` on its embeddings, DeepNet's ``alpha`` on the stream); ``None`` where it has none,
    where it is zero or not finite, and where the constant is a tensor on an accelerator (reading
    it would wait for the device: the audit reads the host once)."""
    value = _constant_operand(node)
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            return None
        value = value.item()
    if value is None or value == 0 or not math.isfinite(value):
        return None
    return float(value) if node_name(node).startswith("Mul") else 1.0 / float(value)


def _scaled_call(graph: Graph, node: Any, made: Dict[Any, int], limit: int = 8) -> Tuple[Any, float]:
    """The node whose value ``node`` carries, looking back through dropout, a bias and constant
    factors (which change its size by a known amount), with the product of those factors: a
    recorded call's output, an earlier sum, or where the walk stopped (a parameter's factor,
    such as layer scale, stops it: what is summed is then not a call's output times a known
    number)."""
    factor = 1.0
    node = graph.source(node)
    for _ in range(limit):
        if node is None or node in made:
            return node, factor
        below = [n for n in graph.inputs.get(node, ()) if n is not None and not graph.is_parameter_path(n)]
        if len(below) != 1:
            return node, factor
        if node_name(node) not in DROPOUT | ADDS:
            c = constant_factor(node)
            if c is None:
                return node, factor
            factor *= c
        node = graph.source(below[0])
    return node, factor


def residual_sums(graph: Graph, made: Dict[Any, int]) -> List[ResidualSum]:
    """The residual sums ``x + f(x)`` of the forward, in the order they ran, whose branch is a
    module call's output (through dropout, a bias and constant factors) and whose stream is a
    call's output or an earlier such sum (a stack written inline, ``h = h + f(h)``, has no
    module output for its stream): from them the stream's size at each sum follows from the
    recorded outputs, by adding variances, ``S_k^2 = S_{k-1}^2 + b_k^2`` (a branch drawn
    independently of the stream is uncorrelated with it at init). ``torch.add``'s ``alpha``
    counts as a factor on its second operand."""
    adds = sorted((node for node in graph.inputs if node_name(node) == "AddBackward0"),
                  key=lambda node: node._sequence_nr())
    position: Dict[Any, int] = {}
    found: List[ResidualSum] = []
    for add in adds:
        inputs = graph.inputs[add]
        sides = [graph.residual_side(add, slot) for slot in range(len(inputs))]
        if len(inputs) != 2 or sorted(s or "" for s in sides) != ["branch", "stream"]:
            continue
        alpha = getattr(add, "_saved_alpha", 1)
        alpha = float(alpha) if isinstance(alpha, (int, float)) else math.nan
        ends = {}
        for side in ("branch", "stream"):
            slot = sides.index(side)
            node, factor = _scaled_call(graph, inputs[slot], made)
            ends[side] = (node, factor * (alpha if slot == 1 else 1.0))
        (branch, branch_factor), (stream, stream_factor) = ends["branch"], ends["stream"]
        if branch not in made or not (math.isfinite(branch_factor) and math.isfinite(stream_factor)):
            continue
        if stream in made:
            found.append((made[branch], branch_factor, made[stream], None, stream_factor))
        elif stream in position:
            found.append((made[branch], branch_factor, None, position[stream], stream_factor))
        else:
            continue
        position[add] = len(found) - 1
    return found


CallFacts = Tuple[List[int], List[Optional[str]], List[Optional[str]], List[Optional[str]], List[ResidualSum]]


def read(roots: List[torch.Tensor], keys: Dict[int, Hashable], output_nodes: List[Any] = ()
         ) -> Tuple[Dict[Hashable, Use], CallFacts]:
    """``(uses, (streams, reaches, feeds, ends, sums))`` on one walk of the graph below ``roots``:
    :func:`_uses`, :func:`stream_outputs`, :func:`residual_sums`, and for each module call where its output
    ends up through normalizations and before them, and what it reaches first (as
    ``Use.reaches`` and ``Use.feeds``; ``None`` where the output has no gradient path), matched
    to the graph by the node that made it, so that a frozen layer, whose weight the graph
    does not hold, is placed too."""
    graph = Graph([r.grad_fn for r in roots if r.grad_fn is not None], set(keys))
    nodes = list(output_nodes)
    reaches: List[Optional[str]] = []
    feeds: List[Optional[str]] = []
    ends: List[Optional[str]] = []
    made: Dict[Any, int] = {}
    for index, node in enumerate(nodes):
        source = graph.source(node) if node is not None else None
        if source is not None:
            made.setdefault(source, index)  # the innermost call: a container passing it on returns later
        known = source in graph.inputs
        reaches.append("+".join(sorted(graph.terminals(source, through_norms=True))) or None if known else None)
        ends.append("+".join(sorted(graph.terminals(source))) or None if known else None)
        feeds.append(_past_nonlinearity(graph, source) if known else None)
    return _uses(graph, keys, made), (stream_outputs(graph, nodes), reaches, feeds, ends, residual_sums(graph, made))


def _uses(graph: Graph, keys: Dict[int, Hashable], made: Dict[Any, int]) -> Dict[Hashable, Use]:
    uses: Dict[Hashable, Use] = {}
    for held, leaf in graph.leaves.items():
        key = keys.get(held)
        if key is None or key in uses:
            continue
        consumers = _through_unary(graph, leaf)
        if not consumers:
            continue
        # a parameter read several ways (a tied embedding and head) takes its mixing use first
        ranked = sorted(consumers, key=lambda c: role_of(node_name(c[0]), c[1]) != "mixing")
        op, slot = ranked[0]
        role = role_of(node_name(op), slot)
        if role == "scale":
            has_other, other = graph.other_input(op, slot)
            if has_other and other is not None and graph.normalizes(graph.source(other)):
                role = "norm"  # the gain of a normalization written with tensor ops (RMSNorm)
        feeds, branch = _downstream(graph, op)
        following = [keys[i] for i in _next_weights(graph, op) if i in keys]
        reaches = "+".join(sorted(graph.terminals(op)))
        through = _gradient_weights(graph, op)
        gradient = [keys[i] for i in through if i in keys] if through is not None else None
        fan_in = _contracted(graph, leaf, op, slot) if role == "mixing" else None
        stream = "+".join(sorted(graph.stream_reaches(op))) if "branch" in (reaches or "") else ""
        uses[key] = Use(node_name(op), role, feeds, branch, following, reaches or None, gradient, fan_in,
                        role == "mixing" and graph.normalized_input(op), stream or None,
                        graph.operand_call(op, made) if role == "mixing" else None,
                        _channel_norm_after(graph, op) if feeds == "norm" else None)
    return uses
