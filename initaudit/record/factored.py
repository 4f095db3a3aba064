"""First-step gradients of ``nn.Linear`` weights from their factors, never formed.

A linear layer ``y = x W^T + b`` called once on ``N`` rows (every leading dimension of its
input) gets the weight gradient ``G = D^T X``, where ``X`` (``N x in``) is its input and
``D = dL/dy`` (``N x out``) the gradient of its output. The audit needs only the sum, the
squared norm and the non-finite count of ``G``, and all three follow from the factors:

- ``sum(G) = sum_n (D 1)_n (X 1)_n``;
- ``||G||^2 = sum_{n,m} (D D^T)_{nm} (X X^T)_{nm}`` (the identity behind per-example
  gradient norms, Goodfellow 2015), two ``N x N`` Gram matrices;
- ``G_oi`` is non-finite exactly when column ``o`` of ``D`` or column ``i`` of ``X`` holds
  a NaN or Inf (a NaN or Inf times anything, 0 included, is NaN or Inf), so
  ``nonfinite(G) = out in - f_D f_X`` with ``f`` the counts of finite columns (a sum of
  finite products that overflows float32, from factors near 1e19 and up, is not seen).

The Grams cost ``N^2 (in + out)`` multiply-adds against the ``N in out`` of forming ``G``,
and ``G`` is then never read again: for a 1024-wide layer on 64 rows, an eighth. They are
taken only where they cost at most half of ``G`` (:func:`worthwhile`), multiplied in the
layer's dtype and combined in float64 (:func:`gradient_from_row` says what that keeps).
Everything else about the gradient is as ``torch.autograd.grad`` makes it: the weights
factored are simply not among its inputs, so autograd skips their products. Small inputs
and output gradients are copied at their hooks into staging matrices (:mod:`~initaudit.record.staging`)
and their factors taken several at once (:func:`staged_factors`).

A weight is factored only when nothing else can add to its gradient or change it: a plain
``nn.Linear`` forward (no parametrization, no other forward hook that could replace the
output), called once, the weight a float32 or float64 leaf with no gradient hooks, of the
same dtype as the input, and exactly one edge into it in the loss's autograd graph; and
only when the gradient of its output is sure to be computed (some requested tensor lies
behind it). Anything else gets its gradient from autograd as before.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from initaudit import stats
from initaudit.core import knowledge
from initaudit.record import dataflow
from initaudit.record.staging import Staging

_DTYPES = (torch.float32, torch.float64)


def worthwhile(rows: int, fan_in: int, fan_out: int) -> bool:
    """Whether the Grams are cheap and small next to the gradient they stand in for.

    ``N (in + out) <= in out / 2`` (at most half the multiply-adds of ``G = D^T X``), and
    ``8 N^2 <= in out`` (the float64 ``N x N`` Gram kept from the forward to the backward
    is at most a quarter of the float32 ``G`` that is no longer allocated).
    """
    area = fan_in * fan_out
    return rows >= 1 and 2 * rows * (fan_in + fan_out) <= area and 8 * rows * rows <= area


def factors(rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(R R^T, R 1, finite columns)`` of ``rows`` (``N x k``): the Gram and the row sums
    widened to float64, the count an integer.

    The Gram and the sums are formed in the rows' own dtype (float32 or float64, as
    autograd would multiply ``G``) and only their ``N x N`` and ``N`` results widened; the
    count is ``k`` less :func:`nan_columns`.
    """
    rows = rows.detach()
    finite = rows.shape[1] - nan_columns(rows, 1)[0]
    return (rows @ rows.T).to(torch.float64), rows.sum(dim=1).to(torch.float64), finite


def staged_factors(matrix: torch.Tensor, count: int) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`factors` of each of ``count`` same-shape row blocks staged side by side in
    ``matrix`` (``N x count k``, :mod:`~initaudit.record.staging`), in one batched product."""
    rows, width = matrix.shape[0], matrix.shape[1] // count
    blocks = matrix.view(rows, count, width).transpose(0, 1)  # count x N x k, a view
    grams = torch.bmm(blocks, blocks.transpose(1, 2)).to(torch.float64)
    sums = blocks.sum(dim=2).to(torch.float64)
    finite = width - nan_columns(matrix, count)
    return [(grams[k], sums[k], finite[k]) for k in range(count)]


def nan_columns(matrix: torch.Tensor, count: int) -> torch.Tensor:
    """How many columns holding a NaN or Inf each of ``count`` equal blocks of columns of
    ``matrix`` has: an integer tensor of ``count``.

    A column is finite exactly when the sum of ``0 * x`` down it is 0 and not NaN: ``0 * x``
    is 0 for every finite ``x`` and NaN for NaN or Inf, so, unlike a plain column sum, it
    cannot overflow, and one ``isnan`` tells (``isfinite`` is several operations). ``0 * x``
    is written into the kept scratch buffer (:func:`~initaudit.stats.scratch_buffer`), a
    slice of columns at a time: a fresh temporary as large as the matrix would be fresh
    pages from the OS per call.
    """
    rows, width = matrix.shape
    step = max(1, stats.slice_size(matrix.device) // max(rows, 1))  # columns per slice
    flags = []
    for start in range(0, width, step):
        block = matrix[:, start : start + step]
        zeros = torch.mul(block, 0, out=stats.scratch_buffer(block.numel(), matrix.dtype, matrix.device).view(block.shape))
        flags.append(torch.isnan(zeros.sum(dim=0)))
    flagged = flags[0] if len(flags) == 1 else torch.cat(flags)
    return flagged.view(count, width // count).sum(dim=1)


def gradient_row(
    output_side: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    input_side: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    numel: int,
) -> torch.Tensor:
    """``[sum(G), ||G||^2, nonfinite(G)]`` of ``G = D^T X`` from :func:`factors` of ``D``
    and of ``X``, on their device, float64; ``numel = out * in``."""
    gram_d, sums_d, finite_d = output_side
    gram_x, sums_x, finite_x = input_side
    squares = torch.dot(gram_d.reshape(-1), gram_x.reshape(-1))
    return torch.stack([torch.dot(sums_d, sums_x), squares, (numel - finite_d * finite_x).double()])


# below this share of the second moment, the variance ||G||^2 / n - mean^2 has lost its
# digits: float32 Grams carry a relative error of about 1e-6 (as the fast summaries' float32
# dot products do, whose limit this is), float64 ones about 1e-14
CANCELLATION = {"float32": stats.CANCELLATION, "float64": 1e-9}


def gradient_from_row(numel: int, row: Sequence[float], dtype: str = "float32") -> stats.GradientSummary:
    """``[norm, std, nonfinite]`` (:func:`~initaudit.stats.gradient_summary`'s layout) from
    :func:`gradient_row`: ``norm = sqrt(||G||^2)``, ``std = sqrt(||G||^2 / n - mean^2)``.

    Both are NaN where ``G`` holds a NaN or Inf. The std is NaN (unknown) where it is
    below the digits the Grams of ``dtype`` keep (:data:`CANCELLATION`): a gradient whose
    entries are all nearly equal, which has no factors to take an exact second pass over.
    The norm, and an exact 0 of it, do not suffer from this.
    """
    total, squares, nonfinite = row
    if nonfinite or not (math.isfinite(total) and math.isfinite(squares)):
        return stats.GradientSummary(math.nan, math.nan, nonfinite)
    mean, second = total / max(numel, 1), squares / max(numel, 1)
    variance = second - mean * mean
    if stats.cancelled(variance, second, CANCELLATION.get(dtype, stats.CANCELLATION)):
        return stats.GradientSummary(math.sqrt(squares), math.nan, nonfinite)
    return stats.GradientSummary(math.sqrt(max(squares, 0.0)), math.sqrt(max(variance, 0.0)), nonfinite)


def plain_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` whose forward is the stock one and whose weight is its own parameter
    (not a parametrization or a ``weight_norm`` recomputed per call)."""
    return (
        isinstance(module, nn.Linear)
        and type(module).forward is nn.Linear.forward
        and isinstance(module._parameters.get("weight"), torch.Tensor)
    )


class _Call:
    """One linear call's weight, autograd node (and which of its outputs), and input side."""

    __slots__ = ("weight", "node", "output_nr", "input_side")

    def __init__(self, weight: torch.Tensor, node: Any, output_nr: int,
                 input_side: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        self.weight, self.node, self.output_nr, self.input_side = weight, node, output_nr, input_side


class LinearGradients:
    """Collects the input side of each linear call during the forward (:meth:`on_call`),
    decides which weights to factor once the loss is known (:meth:`plan`), and reduces the
    output side in a hook on the layer's autograd node while the backward runs.

    Keeps, per call, the ``N x N`` input Gram and the layer's autograd node (which the loss's
    graph holds anyway), never a reference to the input or the output tensor; a small input
    or output gradient is copied into a staging matrix until that matrix is reduced.
    """

    def __init__(self) -> None:
        self.calls: Dict[int, _Call] = {}  # by id(weight); a second call of the module drops it
        self.dropped: Set[int] = set()
        self.rows: Dict[int, torch.Tensor] = {}  # by id(weight), once the backward ran
        self._handles: List[Any] = []
        # small inputs and output gradients are staged and their factors taken several at once
        self._inputs = Staging(self._inputs_reduced)
        self._outputs = Staging(self._outputs_reduced)

    def on_call(self, module: nn.Module, args: Any, output: Any) -> None:
        """From a forward hook: the input side of a plain linear layer's call."""
        if not plain_linear(module):
            return
        weight = module._parameters["weight"]
        key = id(weight)
        if key in self.dropped:
            return
        if key in self.calls:  # called again: its gradient sums over calls
            del self.calls[key]
            self.dropped.add(key)
            return
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if (
            x is None
            or not isinstance(output, torch.Tensor)
            or x.layout != torch.strided
            or x.is_nested
            or output.grad_fn is None
            or not weight.requires_grad
            or weight.dtype not in _DTYPES
            or x.dtype != weight.dtype
            or output.dtype != weight.dtype
            or type(weight) not in (torch.Tensor, nn.Parameter)
            or knowledge.is_dtensor(weight)
            or weight._backward_hooks
            or getattr(weight, "_post_accumulate_grad_hooks", None)
            or len(module._forward_hooks) != 1  # ours: another could have replaced the output
            or nn.modules.module._global_forward_hooks
        ):
            return
        fan_out, fan_in = weight.shape
        rows = x.numel() // fan_in if fan_in else 0
        if not worthwhile(rows, fan_in, fan_out):
            return
        call = self.calls[key] = _Call(weight, output.grad_fn, output.output_nr, None)
        x = x.reshape(rows, fan_in)
        if not self._inputs.add(x, call):
            call.input_side = factors(x)

    def _inputs_reduced(self, matrix: torch.Tensor, count: int, calls: List[_Call]) -> None:
        for call, side in zip(calls, staged_factors(matrix, count)):
            call.input_side = side

    def plan(self, loss: torch.Tensor, requested: Sequence[torch.Tensor]) -> Set[int]:
        """The weights (by ``id``) to leave out of ``torch.autograd.grad``'s inputs, with a hook
        on each one's layer node that reduces the output side; ``requested`` are every tensor
        the backward would otherwise be asked for."""
        self._inputs.flush()
        if not self.calls or loss.grad_fn is None:
            self.calls.clear()
            return set()
        try:
            graph = dataflow.Graph([loss.grad_fn], set())
            children = {node: [n for n in below if n is not None] for node, below in graph.inputs.items()}
            edges_into = {key: len(graph.parents.get(leaf, ())) for key, leaf in graph.leaves.items()}
        except (AttributeError, RuntimeError, TypeError):  # a graph node of an unusual kind: autograd forms every gradient
            self.calls.clear()
            return set()
        chosen = {
            key: call for key, call in self.calls.items()
            if call.node in children and edges_into.get(key, 0) == 1
        }
        asked = {id(t) for t in requested}
        # a layer's node runs only if some tensor still asked for lies behind it
        while True:
            wanted = asked - set(chosen)
            reaching = _reaching(children, wanted)
            unreached = [key for key, call in chosen.items() if call.node not in reaching]
            if not unreached:
                break
            for key in unreached:
                del chosen[key]
        self.calls = chosen
        for key, call in chosen.items():
            self._handles.append(call.node.register_prehook(self._hook(key, call)))
        return set(chosen)

    def _hook(self, key: int, call: _Call) -> Any:
        fan_out = call.weight.shape[0]

        def reduce_output_side(grad_outputs: Tuple[Optional[torch.Tensor], ...]) -> None:
            grad = grad_outputs[call.output_nr]
            if grad is None or call.input_side is None:  # undefined: so is the weight's gradient
                call.input_side = None
                return None
            grad = grad.reshape(-1, fan_out)
            if not self._outputs.add(grad, (key, call)):
                self._gradient_row(key, call, factors(grad))
            return None

        return reduce_output_side

    def _outputs_reduced(self, matrix: torch.Tensor, count: int, calls: List[Tuple[int, _Call]]) -> None:
        for (key, call), side in zip(calls, staged_factors(matrix, count)):
            self._gradient_row(key, call, side)

    def _gradient_row(self, key: int, call: _Call, output_side: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        if call.input_side is not None:
            fan_out, fan_in = call.weight.shape
            self.rows[key] = gradient_row(output_side, call.input_side, fan_out * fan_in)
        call.input_side = None  # the Gram is not needed again

    def close(self) -> None:
        """Reduce the output gradients still staged, remove the hooks, and drop every kept
        Gram and node."""
        self._outputs.flush()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.calls.clear()


def _reaching(children: Dict[Any, List[Any]], wanted: Set[int]) -> Set[Any]:
    """The nodes from which some leaf in ``wanted`` (by ``id``) can be reached."""
    reaching: Set[Any] = set()
    done: Set[Any] = set()
    for start in children:
        if start in done:
            continue
        stack: List[Tuple[Any, bool]] = [(start, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                variable = getattr(node, "variable", None)
                if (variable is not None and id(variable) in wanted) or any(c in reaching for c in children[node]):
                    reaching.add(node)
                done.add(node)
                continue
            if node in done:
                continue
            stack.append((node, True))
            stack.extend((c, False) for c in children[node] if c not in done)
    return reaching
