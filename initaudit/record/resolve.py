"""Bringing the queued statistics to the host and filling the records with them."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, List, Tuple

from initaudit import stats
from initaudit.core.records import GradientRecord, TensorRecord
from initaudit.record import distributed, factored, transfer
from initaudit.record.relations import relate


def resolve(
    deferred: transfer.Deferred,
    partials: distributed.Partials,
    tensors: List[Tuple[Any, TensorRecord]],
    param_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    buffer_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    grads: Dict[int, Any],
) -> Dict[Any, List[float]]:
    """Bring every statistic to the host (one transfer, plus one for the few that need
    completing), fill the tensor records with them and relate clones and aliases."""
    values = deferred.resolve()
    _combine(values, partials)
    _exact_where_needed(values, tensors, param_names, buffer_names, grads)
    for key, record in tensors:
        _fill(record, values, key)
    relate(tensors, param_names, values)
    return values


def _combine(values: Dict[Any, List[float]], partials: distributed.Partials) -> None:
    """Put the combined statistics of sharded tensors among ``values``, in the local layouts."""
    for (what, key), (sums, mins) in partials.resolve().items():
        if what == "fast":
            values[("fast", key)] = stats.from_partial_fast(sums, mins)
        elif what == "probe":
            values[("probe", key)] = sums
        elif what == "moments":
            values[("shape", key)] = [stats.kurtosis_from_moments(sums), None, None]
        elif what == "gradfast":
            values[("gradfast", key)] = sums


def _exact_where_needed(
    values: Dict[Any, List[float]],
    tensors: List[Tuple[Any, TensorRecord]],
    param_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    buffer_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    grads: Dict[int, Any],
) -> None:
    """Turn fast summaries into ``("param", key)`` and ``("grad", key)`` values, completing
    the few that need it, in one more transfer for all of them.

    Tensors with NaN or Inf, or whose variance cancels (a large mean, or a constant such as
    a norm gain), get the exact two-pass summary; tensors that may hold zeros or subnormals
    (a zero bias) get those counted. A model with neither needs no second transfer. Sharded
    tensors do the same on their pieces, combined across ranks.
    """
    redo = transfer.Deferred()
    partials = distributed.Partials()
    counted: Dict[Any, List[float]] = {}
    exact: Dict[Any, Tuple[float, float]] = {}
    for key, record in tensors:
        rows = values.pop(("fast", key), None)
        if rows is not None:
            tensor = (param_names.get(key) or buffer_names.get(key))[0]
            fast = stats.combine_fast(tensor.numel(), rows)
            sharded = distributed.is_sharded(tensor)
            piece = distributed.local(tensor)
            if stats.needs_exact(fast):
                if sharded:
                    exact[key] = (float(tensor.numel()), fast[0])
                    partials.add(("param", key), tensor, *stats.partial_exact(piece, fast[0]))
                else:
                    redo.add(("param", key), stats.tensor_summary(piece))
            elif stats.needs_counts(fast, tensor.dtype):
                counted[key] = fast
                if sharded:
                    partials.add(("counts", key), tensor, *stats.partial_counts(piece))
                else:
                    redo.add(("counts", key), stats.small_counts(piece))
            else:
                values[("param", key)] = stats.from_fast(fast)
        row = values.pop(("gradfactored", key), None)
        if row is not None:
            values[("grad", key)] = factored.gradient_from_row(record.numel, row, record.dtype)
        sums = values.pop(("gradfast", key), None)
        if sums is None:
            continue
        grad = grads[key]
        n = grad.numel()  # of the whole, also for a sharded gradient
        summary = stats.gradient_from_fast(n, sums)
        if summary is not None:
            values[("grad", key)] = summary
        elif distributed.is_sharded(grad):
            mean = sums[0] / max(n, 1)
            exact[("grad", key)] = (n, mean)
            partials.add(("grad", key), grad, *stats.partial_gradient_exact(distributed.local(grad), mean))
        else:
            redo.add(("grad", key), stats.gradient_summary(distributed.local(grad)))
    done = redo.resolve()
    for (what, key), (sums, mins) in partials.resolve().items():
        if what == "param":
            n, mean = exact[key]
            done[("param", key)] = stats.from_partial_exact(n, mean, sums, mins)
        elif what == "counts":
            done[("counts", key)] = sums
        else:
            n, _ = exact[("grad", key)]
            squares, centred, nonfinite = sums
            done[("grad", key)] = [math.sqrt(squares), math.sqrt(centred / max(n, 1)), nonfinite]
    for key, fast in counted.items():
        values[("param", key)] = stats.from_fast(fast, done.pop(("counts", key)))
    values.update(done)


def _fill(record: TensorRecord, values: Dict[Any, List[float]], key: int) -> None:
    summary = values.get(("param", key))
    if summary is not None:
        mean, std, lo, hi, zeros, nonfinite, subnormal = summary
        record.mean, record.std, record.min, record.max = mean, std, lo, hi
        record.zero_fraction = zeros / record.numel if record.numel else None
        record.nonfinite = int(nonfinite)
        record.subnormal = int(subnormal)
    if ("shape", key) in values:
        record.kurtosis, record.ortho_offdiag, record.ortho_spread = values[("shape", key)]
    if ("sv", key) in values:
        record.gate_singular_values = values[("sv", key)]
    if ("rho", key) in values:
        record.spectral_radius = values[("rho", key)][0]
    gates = values.get(("gates", key))
    if gates is not None:
        record.gate_means = gates
    grad = values.get(("grad", key))
    if grad is not None:
        record.grad = GradientRecord(norm=grad[0], std=grad[1], nonfinite=int(grad[2]))
