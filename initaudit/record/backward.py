"""The first step's backward: every trainable parameter's gradient, or its statistics."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Set, Tuple

import torch

from initaudit import stats
from initaudit.core import knowledge
from initaudit.core.errors import ForwardError, describe, user_frame
from initaudit.record import distributed, factored, transfer
from initaudit.record.tensors import Tracked


def first_step_gradients(
    loss_value: Optional[torch.Tensor],
    param_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    leaves: List[torch.Tensor],
    linear_grads: Optional[factored.LinearGradients] = None,
) -> Tuple[bool, Dict[int, Any], List[Optional[torch.Tensor]]]:
    """``(backward_made, gradient by parameter id, gradient of each input leaf)``.

    A parameter's gradient is a tensor, ``None`` where the loss does not reach it, or, for
    the linear weights that ``linear_grads`` factors, the device row of
    :func:`~initaudit.record.factored.gradient_row` (wrapped in :class:`Factored`).
    """
    trainable = [(i, p) for i, (p, _) in param_names.items() if p.requires_grad and p.is_floating_point()]
    if loss_value is None or not loss_value.requires_grad:
        # the loss depends on no parameter
        return bool(trainable), {i: None for i, _ in trainable}, [None] * len(leaves)
    wrt = [p for _, p in trainable] + leaves
    sharded = any(knowledge.is_dtensor(p) for p in wrt)
    # a custom autograd Function may write gradients itself (reversible layers, reentrant
    # checkpointing: its backward calls torch.autograd.backward), which autograd.grad never sees
    through_grad = sharded or has_custom_function(loss_value)
    skipped: Set[int] = set()
    if linear_grads is not None and not sharded:
        skipped = linear_grads.plan(loss_value, wrt)
        wrt = [t for t in wrt if id(t) not in skipped]
    try:
        if through_grad:
            # every trainable parameter's .grad is cleared, the factored ones' too: a backward
            # accumulates into whatever .grad it finds (the caller puts the user's back)
            grads = accumulated_gradients(loss_value, wrt, also=[p for _, p in trainable])
        else:
            grads = torch.autograd.grad(loss_value.reshape(()), wrt, allow_unused=True) if wrt else ()
    except Exception as exc:
        raise ForwardError(f"the backward failed: {describe(exc)}", user_frame(exc)) from exc
    finally:
        if linear_grads is not None:
            linear_grads.close()
    computed = iter(grads)
    by_param: Dict[int, Any] = {}
    for i, p in trainable:
        if id(p) in skipped:
            row = linear_grads.rows.get(id(p)) if linear_grads is not None else None
            by_param[i] = Factored(row) if row is not None else None
        else:
            by_param[i] = next(computed)
    return bool(trainable), by_param, list(computed)


@dataclasses.dataclass
class Factored:
    """A weight's first-step gradient known by its statistics alone (:mod:`~initaudit.record.factored`)."""

    row: torch.Tensor  # [sum(G), ||G||^2, nonfinite(G)], float64, on the device


def has_custom_function(loss_value: torch.Tensor) -> bool:
    """Whether the loss's autograd graph holds a node of a Python ``torch.autograd.Function``
    (whose ``backward`` may accumulate into ``.grad`` by its own ``torch.autograd.backward``)."""
    custom = torch.autograd.function.BackwardCFunction
    stack, seen = [loss_value.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, custom):
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def accumulated_gradients(loss_value: torch.Tensor, wrt: List[torch.Tensor],
                          also: Optional[List[torch.Tensor]] = None) -> List[Optional[torch.Tensor]]:
    """Gradients through ``.grad``, for sharded parameters (FSDP2) whose gradient is
    reduce-scattered into ``.grad`` by hooks that ``torch.autograd.grad`` does not run, and
    for graphs with a custom ``autograd.Function`` that may accumulate ``.grad`` itself.

    The ``.grad`` of ``wrt`` and of ``also`` (the other tensors the backward reaches) is
    cleared first and after, so that nothing accumulates onto the user's; the caller's
    :func:`~initaudit.record.state.preserved` puts the user's ``.grad`` back afterwards.
    """
    cleared = list(wrt) + list(also or [])
    for t in cleared:
        t.grad = None
    loss_value.reshape(()).backward()
    grads = [t.grad for t in wrt]
    for t in cleared:
        t.grad = None
    return grads


def gradient_status(
    records: List[Tracked],
    grads: Dict[int, Any],
    backward: bool,
    deferred: transfer.Deferred,
    partials: distributed.Partials,
) -> None:
    """Set each parameter's ``grad_status`` and queue the sums of its gradient (or its
    factored row) for its values to hold."""
    for key, record, values in records:
        if record.kind != "parameter":
            continue
        if not record.floating:
            record.grad_status = "not-floating"
        elif not record.requires_grad:
            record.grad_status = "frozen"
        elif not backward:
            record.grad_status = "not-run"
        elif grads.get(key) is None:
            record.grad_status = "none"
        else:
            record.grad_status = "ok"
            grad = grads[key]
            if isinstance(grad, Factored):
                deferred.put(values, "grad_row", grad.row)
                continue
            fast = stats.gradient_fast(distributed.local(grad))
            if distributed.is_sharded(grad):
                partials.put(values, "grad_sums", grad, fast, fast.new_zeros(0))
            else:
                deferred.put(values, "grad_sums", fast)
