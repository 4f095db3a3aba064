"""A look past the first step, taken only when the first step leaves something undecided.

Two first-step facts say less than they seem:

- a parameter whose first-step gradient is exactly zero is stuck only if it stays so. A zero
  norm gain, a zero hidden weight or a zero residual branch zeroes the gradient of what lies
  behind it, but it moves itself (its own gradient is not zero), and from step 2 what it
  silenced sees a gradient; a zeroed final gain before zeroed block gains unlocks them one
  step later each. Other zeros never unlock: every gain of a post-LN stack, where nothing
  after the first zero gain depends on the input. Which holds is measured: up to
  :data:`STEPS` steps of Adam's first update ``p <- p - lr * sign(g)`` (Kingma & Ba 2015: at
  step one ``m_hat / sqrt(v_hat) = g / |g|`` elementwise) on every trainable parameter, each
  followed by the gradient again, until every such parameter has one;
- a weight whose elements are all equal makes all its output units compute the same function,
  but they stay alike only if their gradients are alike. With random weights above them, the
  rows of the gradient ``G[o] = dL/dy_o x^T`` differ and the first step tells the units apart;
  when the layers above are symmetric too, every row is the same and they never separate. The
  spread of the gradient's rows, ``max_i (max_o G[o, i] - min_o G[o, i]) / max |G|``, says which
  (:func:`row_spread`).

Both run only where such a parameter exists, so a model without one costs nothing: one
forward and backward for the full gradients (the audit's own factors some linear weights'
gradients instead of forming them), and, for a zero gradient, one more after each step, on a
saved copy of the trainable values that is copied back afterwards (bit-exact); buffers, flags,
``.grad`` and RNG are restored by the caller's :func:`~initaudit.record.state.preserved`. Sharded
parameters (FSDP2) step on their local pieces, take their gradients through ``.grad`` as the
audit's own backward does, and combine what is decided with one collective per step, so every
rank decides alike and the verdicts equal those of the whole model.
"""

from __future__ import annotations

from typing import Callable, Dict, Hashable, List, Optional, Tuple

import torch

from initaudit.record.backward import accumulated_gradients, has_custom_function
from initaudit.record.distributed import is_sharded, local, shard_groups

# Adam's default learning rate: the size of every element's first update
STEP = 1e-3
# steps looked past the first: a zero final norm gain moves at step 1, the zero gains before it
# at step 2, the weights they silenced at step 3 (a pre-LN stack with every gain zeroed)
STEPS = 3

LossOf = Callable[[], Optional[torch.Tensor]]


def row_spread(grad: torch.Tensor) -> torch.Tensor:
    """``max_i (max_o G[o, i] - min_o G[o, i]) / max |G|`` over the rows ``G[o]`` of a gradient
    (dim 0: output units), a float64 scalar on its device; 0 when every unit gets the same
    gradient (or none at all). A sharded gradient's rows are spread over ranks: the column
    extremes are combined across them."""
    g = local(grad).detach().double()
    g = g.reshape(g.shape[0], -1)
    if g.shape[0]:
        high, low, top = g.max(dim=0).values, g.min(dim=0).values, g.abs().max().reshape(1)
    else:  # a rank holding no row of an uneven split
        columns = 1 if not g.shape[1:] else g.shape[1]
        high = g.new_full((columns,), -float("inf"))
        low, top = -high, g.new_zeros(1)
    if is_sharded(grad):
        for group in shard_groups(grad):
            torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX, group=group)
            torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN, group=group)
            torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX, group=group)
    spread = (high - low).max() / top[0]
    return torch.where(top[0] > 0, torch.nan_to_num(spread, nan=0.0, posinf=0.0), torch.zeros_like(spread))


def look_ahead(
    loss_of: LossOf,
    trainable: Dict[Hashable, torch.Tensor],
    stuck: List[Hashable],
    constant: List[Hashable],
    steps: int = STEPS,
) -> Tuple[Dict[Hashable, int], Dict[Hashable, float]]:
    """``(moves_at_step, grad_row_spread)`` by key.

    ``loss_of()`` runs the audit's forward and loss again (same input, same seed);
    ``trainable`` are the parameters that a step moves, by key; ``stuck`` those whose
    first-step gradient is exactly zero, ``constant`` those with all elements equal.
    ``moves_at_step[k]`` is the first step (2 to ``1 + steps``) at which ``k``'s gradient is not
    zero, or 0 when it is still zero after ``steps`` steps.
    """
    keys = list(trainable)
    grads = dict(zip(keys, _gradients(loss_of, [trainable[k] for k in keys])))
    measured = [k for k in constant if grads.get(k) is not None and trainable[k].dim() >= 2]
    spread = dict(zip(measured, _host([row_spread(grads[k]) for k in measured])))
    if not stuck:
        return {}, spread
    moves: Dict[Hashable, int] = {}
    saved = {k: local(p).detach().clone() for k, p in trainable.items()}
    try:
        waiting = list(stuck)
        for step in range(2, 2 + steps):
            with torch.no_grad():
                for k, g in grads.items():
                    if g is not None:
                        direction = torch.nan_to_num(local(g), nan=0.0, posinf=0.0, neginf=0.0).sign()
                        local(trainable[k]).sub_(STEP * direction)
            grads = dict(zip(keys, _gradients(loss_of, [trainable[k] for k in keys])))
            nonzero = [k for k in waiting if grads[k] is not None]
            counts = _nonzero_counts([grads[k] for k in nonzero])
            moves.update({k: step for k, count in zip(nonzero, counts) if count > 0})
            waiting = [k for k in waiting if k not in moves]
            if not waiting:
                break
        moves.update({k: 0 for k in waiting})
    finally:
        with torch.no_grad():
            for k, value in saved.items():
                local(trainable[k]).copy_(value)
    return moves, spread


def _nonzero_counts(grads: List[torch.Tensor]) -> List[float]:
    """Each gradient's count of non-zero elements, over all ranks for a sharded one: one
    ``all_reduce`` per group of ranks, one transfer."""
    counts = [local(g).count_nonzero().double() for g in grads]
    if not counts:
        return []
    device = counts[0].device
    stacked = torch.stack([c.to(device) for c in counts])
    sharded = [i for i, g in enumerate(grads) if is_sharded(g)]
    if sharded:
        # a replicated gradient counts once per rank: still non-zero exactly when it is
        part = stacked[sharded].clone()
        for group in shard_groups(grads[sharded[0]]):
            torch.distributed.all_reduce(part, group=group)
        stacked[sharded] = part
    return stacked.tolist()


def _host(scalars: List[torch.Tensor]) -> List[float]:
    """Device scalars as floats, in one transfer (gathered on the first one's device)."""
    if not scalars:
        return []
    device = scalars[0].device
    return torch.stack([v.to(device) for v in scalars]).tolist()


def _gradients(loss_of: LossOf, wrt: List[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    loss = loss_of()
    if loss is None or not loss.requires_grad or not wrt:
        return [None] * len(wrt)
    if any(is_sharded(t) for t in wrt) or has_custom_function(loss):
        # FSDP2 reduce-scatters into .grad in its hooks; a custom Function may accumulate it itself
        return accumulated_gradients(loss, wrt)
    return list(torch.autograd.grad(loss.reshape(()), wrt, allow_unused=True))
