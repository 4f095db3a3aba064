"""Moments of a module's output, per feature across the batch, and an activation's dead
and saturated counts.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence

import torch

from initaudit.stats.reduce import accumulation_dtype, scratch_buffer, slice_size


class OutputSummary(NamedTuple):
    """A module output's statistics on the host (:func:`output_from_moments`)."""

    mean: float
    std: float
    zero_fraction: float
    feature_std: float  # per-feature std across the batch, averaged over features


class ActivationCounts(NamedTuple):
    """An activation output's fractions (:func:`activation_from_counts`), NaN where one does
    not apply."""

    dead_last: float  # units along the last dim zero for every example
    dead_channel: float  # channels (dim 1) zero for every example
    saturated: float  # tanh beyond |0.99|, sigmoid outside (0.01, 0.99)


def feature_std(out: torch.Tensor) -> float:
    """Per-feature std across the batch, averaged over features.

    With ``out`` viewed as ``(batch, features)`` (dimension 0 is the batch, every other
    element a feature), ``mean_f sqrt(Var_b[out[b, f]])``. This is the input-dependent part
    of a layer's output: a bias shifts every example alike and does not raise it, so it
    falls to zero when the input is lost even while the raw RMS looks healthy.
    NaN for a batch of one.
    """
    return output_summary(out)[3]


def column_passes(rows: torch.Tensor, table: torch.Tensor, per_column: bool, drift: torch.Tensor) -> torch.Tensor:
    """Fill :func:`output_moments`'s table from ``rows`` (``B x F``) and the column sums
    ``s_f`` in its row 0: ``q_f = sum_b (x[b, f] - s_f / B)^2`` in row 1 and, when
    ``per_column``, the count of nonzero elements ``c_f = sum_b |sign(x[b, f])|`` (a NaN's
    sign is 0) in row 3; ``drift`` (``F``) gets ``sum_b d`` below. Returns ``[sum_f c_f]``.

    ``q_f`` is the corrected two-pass sum (Chan, Golub and LeVeque 1983): with
    ``d = x - s_f / B``, ``q_f = sum_b d^2 - (sum_b d)^2 / B``, which is exact however the
    rounded mean ``s_f / B`` missed the true one. A column that varies by a few units in
    the last place around a large value (a layer whose signal has vanished behind its
    bias) keeps that variation, and its value does not depend on the order in which the
    column sum was added up. The same ``sum_b d`` is what the rounded column sum missed
    (:func:`feature_spread` adds it back).

    Both temporaries are made in the kept scratch buffer (:func:`scratch_buffer`), a block of
    columns at a time when ``rows`` is larger than one slice, so that no copy as large as
    the output is allocated (and, on the CPU, faulted in) per module call. Each block's
    count is a float32 sum of at most 2^24 ones (:func:`slice_size`), which float32 still
    counts exactly; several blocks add up in float64.
    """
    batch, features = rows.shape
    sums = table[0]
    size = slice_size(rows.device)
    width = features if rows.numel() <= size else max(1, size // batch)
    counts = []
    for start in range(0, features, width):
        block = rows[:, start : start + width]
        scratch = scratch_buffer(block.numel(), table.dtype, rows.device).view(block.shape)
        torch.sub(block, sums[start : start + width], alpha=1.0 / batch, out=scratch)
        part = torch.sum(scratch, dim=0, out=drift[start : start + width])  # 0 but for rounding
        squares = torch.sum(scratch.square_(), dim=0, out=table[1, start : start + width])
        squares.addcmul_(part, part, value=-1.0 / batch).clamp_min_(0.0)
        if block.dtype == scratch.dtype:
            torch.sign(block, out=scratch)
        else:  # sign takes no wider output: widen into the buffer first
            scratch.copy_(block).sign_()
        if per_column:
            counts.append(torch.sum(scratch.abs_(), dim=0, out=table[3, start : start + width]).sum(0, keepdim=True))
        else:
            flat = scratch.view(-1)
            counts.append(torch.dot(flat, flat).reshape(1))
    return counts[0] if len(counts) == 1 else torch.cat(counts).double().sum(dim=0, keepdim=True)


def feature_spread(sums: torch.Tensor, drift: torch.Tensor, count: int) -> torch.Tensor:
    """``sum_f (s'_f - mean_f s'_f)^2`` for each of ``count`` equal blocks of columns, where
    ``s' = s + drift`` are the column sums corrected by :func:`column_passes`.

    The plain sums' mean is subtracted first (float32 sums that differ by little differ
    exactly), the drift added to those small offsets, and the result centred again, so the
    spread of nearly equal column means is not lost to the rounding of large sums.
    """
    columns = sums.view(count, -1)
    offsets = columns - columns.mean(dim=1, keepdim=True)
    offsets += drift.view(count, -1)
    offsets -= offsets.mean(dim=1, keepdim=True)
    return offsets.square_().sum(dim=1)


def output_moments(out: torch.Tensor, nonlinearity: Optional[str] = None) -> torch.Tensor:
    """A module output's reductions, on its device, that :func:`output_from_moments` (and,
    for an activation's output, :func:`activation_from_counts`) finish on the host.

    With ``out`` viewed as ``(batch B, features F)``, ``s_f = sum_b x[b, f]`` and
    ``q_f = sum_b (x[b, f] - s_f / B)^2`` (two passes, so that a shared offset cancels, the
    second corrected for the rounding of the mean: :func:`column_passes`), the row is ``[sum_f s_f, sum_f q_f, sum_f sqrt(q_f), nonzero,
    sum_f (s_f - mean_f s_f)^2]``, where ``nonzero`` counts the elements that are not 0
    (:func:`column_passes`). Given the ``nonlinearity`` of an activation module,
    :func:`activation_counts` of the same output follow, from the per-column counts.

    Every operation costs microseconds of overhead on a small output, more than its
    arithmetic, so there are as few as the row needs: ``s``, ``q`` and ``sqrt(q)`` are the
    rows of one table that a single reduction sums. The centred copy and the signs live
    in the kept buffer, a block at a time; no reference to the output is kept.
    """
    x = out.detach()
    if x.numel() == 0:
        return torch.zeros(OUTPUT_MOMENTS, dtype=torch.float64, device=x.device)
    rows = x.reshape(x.shape[0] if x.dim() else 1, -1)
    activation = nonlinearity is not None
    table = torch.empty(4 if activation else 3, rows.shape[1], dtype=accumulation_dtype(x.dtype), device=x.device)
    torch.sum(rows, dim=0, dtype=table.dtype, out=table[0])
    drift = torch.empty_like(table[0])
    nonzero = column_passes(rows, table, activation, drift)
    torch.sqrt(table[1], out=table[2])
    totals = table[:3].sum(dim=1)
    parts = [totals, nonzero, feature_spread(table[0], drift, 1)]
    if activation:
        parts += activation_counts(x, nonlinearity, table[3] + table[2])
    return torch.cat(parts).double()


def activation_counts(x: torch.Tensor, nonlinearity: str, column_zero: torch.Tensor) -> List[torch.Tensor]:
    """``[dead_last]``, ``[dead_channel]``, ``[saturated]``: element counts of an activation's
    output ``x``, each a one-element tensor; ``column_zero`` is 0 exactly for the columns of
    ``x`` (viewed as ``batch x features``) that are all zero: :func:`output_moments`'s
    ``c_f + sqrt(q_f)`` (no nonzero element, and no NaN, whose ``sqrt(q_f)`` is NaN).

    A unit is dead when it is zero for every example (and position) in the batch:
    ``dead_last`` counts units along the last dimension (Linear features),
    ``dead_channel`` along dimension 1 (conv channels); both come from ``column_zero``, with
    no further pass over the output. ``saturated`` counts outputs with ``|y| > 0.99`` for
    tanh, or outside ``(0.01, 0.99)`` for sigmoid. A count that does not apply to this
    output is left out here and is NaN after :func:`activation_from_counts`.
    """
    # float64 sums of the masks: exact counts, which also make torch.cat keep float64
    counts = []
    if x.dim() >= 2:
        zero = column_zero == 0
        if x.dim() == 2:
            counts.append(zero.sum(dim=0, keepdim=True, dtype=torch.float64))
        else:
            counts.append(zero.view(-1, x.shape[-1]).all(dim=0).sum(dim=0, keepdim=True, dtype=torch.float64))
            counts.append(zero.view(x.shape[1], -1).all(dim=1).sum(dim=0, keepdim=True, dtype=torch.float64))
    if nonlinearity == "tanh":
        counts.append((x.abs() > 0.99).sum(dtype=torch.float64).reshape(1))
    elif nonlinearity == "sigmoid":
        counts.append(((x < 0.01) | (x > 0.99)).sum(dtype=torch.float64).reshape(1))
    return counts


def activation_from_counts(counts: Sequence[float], shape: Sequence[int], nonlinearity: str) -> ActivationCounts:
    """``[dead_last, dead_channel, saturated]`` fractions from :func:`activation_counts`, NaN
    where a count does not apply (fewer dimensions, or a nonlinearity that cannot saturate)."""
    numel = math.prod(shape)
    left = list(counts)
    dead_last = dead_channel = saturated = math.nan
    if len(shape) >= 2 and numel:
        dead_last = left.pop(0) / shape[-1]
        if len(shape) >= 3:
            dead_channel = left.pop(0) / shape[1]
    if nonlinearity in ("tanh", "sigmoid") and numel:
        saturated = left.pop(0) / numel
    return ActivationCounts(dead_last, dead_channel, saturated)


def activation_summary(out: torch.Tensor, nonlinearity: str) -> ActivationCounts:
    """One activation output's ``[dead_last, dead_channel, saturated]`` fractions."""
    values = output_moments(out, nonlinearity).tolist()
    return activation_from_counts(values[OUTPUT_MOMENTS:], out.shape, nonlinearity)


# values of output_moments before an activation's counts
OUTPUT_MOMENTS = 5


def output_from_moments(moments: Sequence[float], shape: Sequence[int]) -> OutputSummary:
    """``[mean, std, zero_fraction, feature_std]`` of an output of ``shape`` from its
    :func:`output_moments`.

    With ``B`` the batch and ``F`` the features, ``n = B F``: ``mean = sum_f s_f / n``;
    per feature ``m_f = s_f / B`` and ``v_f = q_f / B``; ``std^2 = mean_f v_f + Var_f(m_f)``
    (the law of total variance), ``Var_f(m_f) = sum_f (s_f - mean_f s_f)^2 / (F B^2)``;
    ``feature_std = mean_f sqrt(v_f)`` (:func:`feature_std`, NaN for a batch of one);
    every value is NaN for an empty output.
    """
    numel = math.prod(shape)
    if numel == 0:
        return OutputSummary(*[math.nan] * 4)
    total, squares, roots, nonzero, spread = moments[:OUTPUT_MOMENTS]
    batch = shape[0] if len(shape) else 1
    features = numel // batch
    mean = total / numel
    variance = squares / numel + spread / (features * batch * batch)
    # sign(NaN) is 0, so the zeros of an output holding NaN are not known: NaN (its mean is NaN)
    zero_fraction = 1 - nonzero / numel if not math.isnan(mean) else math.nan
    return OutputSummary(mean, math.sqrt(max(variance, 0.0)), zero_fraction,
            roots / (features * math.sqrt(batch)) if batch >= 2 else math.nan)


def output_summary(out: torch.Tensor) -> OutputSummary:
    """``[mean, std, zero_fraction, feature_std]`` of one output (:func:`output_moments`,
    finished by :func:`output_from_moments`)."""
    return output_from_moments(output_moments(out).tolist(), out.shape)
