"""Bringing the queued statistics to the host and filling the records with them."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from initaudit import stats
from initaudit.core.records import GradientRecord, TensorRecord
from initaudit.record import distributed, factored, queue, transfer
from initaudit.record.relations import relate
from initaudit.record.tensors import Tracked


def resolve(
    deferred: transfer.Deferred,
    partials: distributed.Partials,
    tensors: List[Tracked],
    param_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    buffer_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    grads: Dict[int, Any],
) -> None:
    """Bring every statistic to the host (one transfer, plus one for the few that need
    completing), fill the tensor records with them and relate clones and aliases."""
    deferred.resolve()
    partials.resolve()
    _exact_where_needed(tensors, param_names, buffer_names, grads)
    for _, record, values in tensors:
        _fill(record, values)
    relate(tensors, param_names)


def _exact_where_needed(
    tensors: List[Tracked],
    param_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    buffer_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    grads: Dict[int, Any],
) -> None:
    """Turn each tensor's fast sums into its ``summary`` and ``grad``, completing the few that
    need it, in one more transfer for all of them.

    Tensors with NaN or Inf, or whose variance cancels (a large mean, or a constant such as
    a norm gain), get the exact two-pass summary; tensors that may hold zeros or subnormals
    (a zero bias) get those counted. A model with neither needs no second transfer. Sharded
    tensors do the same on their pieces, combined across ranks.
    """
    redo = transfer.Deferred()
    partials = distributed.Partials()
    counted: List[Tuple[transfer.TensorValues, stats.Fast]] = []
    for key, record, values in tensors:
        if values.fast_rows is not None:
            tensor = (param_names.get(key) or buffer_names.get(key))[0]
            fast = complete_summary(values, tensor, redo, partials)
            if fast is not None:
                counted.append((values, fast))
        if values.grad_row is not None:
            values.grad = factored.gradient_from_row(record.numel, values.grad_row, record.dtype)
        if values.grad_sums is None:
            continue
        grad = grads[key]
        n = grad.numel()  # of the whole, also for a sharded gradient
        summary = stats.gradient_from_fast(n, values.grad_sums)
        if summary is not None:
            values.grad = summary
        elif distributed.is_sharded(grad):
            mean = values.grad_sums[0] / max(n, 1)
            partials.put(values, "grad", grad, *stats.partial_gradient_exact(distributed.local(grad), mean),
                         combine=lambda sums, mins, n=n: _sharded_gradient(n, sums))
        else:
            redo.put(values, "grad", stats.gradient_summary(distributed.local(grad)), stats.GradientSummary._make)
    redo.resolve()
    partials.resolve()
    for values, fast in counted:
        values.summary = stats.from_fast(fast, values.counts)


def complete_summary(values: transfer.TensorValues, tensor: torch.Tensor, redo: transfer.Deferred,
                     partials: distributed.Partials) -> Optional[stats.Fast]:
    """Make ``values.summary`` from ``values.fast_rows`` where the fast sums are exact, or
    queue what completes it: the exact two-pass summary (NaN or Inf, or a variance that
    cancels) or the zero and subnormal counts, on ``redo`` (``partials`` for a sharded
    tensor). Returns the fast summary when the counts were queued: once they are on the host,
    ``stats.from_fast(fast, values.counts)`` is the summary."""
    fast = stats.combine_fast(tensor.numel(), values.fast_rows)
    sharded = distributed.is_sharded(tensor)
    piece = distributed.local(tensor)
    if stats.needs_exact(fast):
        if sharded:
            n, mean = float(tensor.numel()), fast.mean
            partials.put(values, "summary", tensor, *stats.partial_exact(piece, mean),
                         combine=lambda sums, mins: stats.from_partial_exact(n, mean, sums, mins))
        else:
            redo.put(values, "summary", stats.tensor_summary(piece), stats.Summary._make)
    elif stats.needs_counts(fast, tensor.dtype):
        if sharded:
            partials.put(values, "counts", tensor, *stats.partial_counts(piece))
        else:
            redo.put(values, "counts", stats.small_counts(piece))
        return fast
    else:
        values.summary = stats.from_fast(fast)
    return None


def summarize(tensors: Sequence[torch.Tensor]) -> List[stats.Summary]:
    """The summary of each tensor exactly as the parameter pass makes it (queued, brought over
    in one transfer, completed where it must be in one more), without the rest of the pass:
    what ``benchmarks/`` times against one read of the parameters."""
    held = [transfer.TensorValues() for _ in tensors]
    first = transfer.Deferred()
    queue.queue_summaries([(values, t, False) for values, t in zip(held, tensors)], first)
    first.resolve()
    redo, partials = transfer.Deferred(), distributed.Partials()
    counted = [(values, complete_summary(values, t, redo, partials)) for values, t in zip(held, tensors)
               if values.fast_rows is not None]
    redo.resolve()
    partials.resolve()
    for values, fast in counted:
        if fast is not None:
            values.summary = stats.from_fast(fast, values.counts)
    return [values.summary for values in held]


def _sharded_gradient(n: float, sums: List[float]) -> stats.GradientSummary:
    """A sharded gradient's exact summary from its pieces' combined
    :func:`~initaudit.stats.partial_gradient_exact` sums ``[sum g^2, sum (g - mean)^2, nonfinite]``."""
    squares, centred, nonfinite = sums
    return stats.GradientSummary(math.sqrt(squares), math.sqrt(centred / max(n, 1)), nonfinite)


def _fill(record: TensorRecord, values: transfer.TensorValues) -> None:
    summary = values.summary
    if summary is not None:
        record.mean, record.std, record.min, record.max = summary.mean, summary.std, summary.min, summary.max
        record.zero_fraction = summary.zeros / record.numel if record.numel else None
        record.nonfinite = int(summary.nonfinite)
        record.subnormal = int(summary.subnormal)
    if values.shape is not None:
        record.kurtosis, record.ortho_offdiag, record.ortho_spread = values.shape
    if values.gate_singular_values is not None:
        record.gate_singular_values = values.gate_singular_values
    if values.spectral_radius is not None:
        record.spectral_radius = values.spectral_radius
    if values.gate_means is not None:
        record.gate_means = values.gate_means
    if values.grad is not None:
        record.grad = GradientRecord(norm=values.grad.norm, std=values.grad.std, nonfinite=int(values.grad.nonfinite))
