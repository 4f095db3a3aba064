"""A parameter's summary: mean, std, min, max and the counts of zeros, non-finite and
subnormal elements, by a fast one-read pass completed exactly only where it must be.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from initaudit.stats.reduce import (
    accumulation_dtype,
    added,
    buffered_slices,
    cancelled,
    dense,
    scratch_buffer,
    slice_size,
    slices,
)


class Summary(NamedTuple):
    """A tensor's summary on the host: :func:`tensor_summary`'s row, by name."""

    mean: float
    std: float  # population std
    min: float
    max: float
    zeros: float  # element counts
    nonfinite: float
    subnormal: float  # 0 < |x| < finfo.tiny


class Fast(NamedTuple):
    """A fast summary combined on the host (:func:`combine_fast`): the moments, not yet known
    to be exact."""

    mean: float
    variance: float  # x.x / n - mean^2: a small difference of large numbers when the mean is large
    min: float
    max: float
    min_abs: float  # no element is zero or subnormal when it is at least finfo.tiny
    second_moment: float  # x.x / n


def tensor_summary(t: torch.Tensor) -> torch.Tensor:
    """``[mean, std, min, max, zeros, nonfinite, subnormal]`` of a floating tensor, on its device.

    ``mean = sum(x) / n`` and ``std = sqrt(sum((x - mean)^2) / n)`` (population std,
    two passes so that a large mean does not cancel a small spread), accumulated in
    float64. ``zeros``, ``nonfinite`` and ``subnormal`` (``0 < |x| < finfo.tiny``)
    are element counts. Temporaries are made one slice (:func:`slices`) at a time.
    """
    x = dense(t)
    n = x.numel()
    if n == 0:
        nan = torch.full((), math.nan, dtype=torch.float64, device=x.device)
        zero = torch.zeros((), dtype=torch.float64, device=x.device)
        return torch.stack([nan, nan, nan, nan, zero, zero, zero])
    parts = slices(x)
    # the mean is kept in float64: in float32 it can be a whole ulp of a large mean off,
    # which a small spread's variance would take as its own
    mean = torch.stack([p.sum(dtype=torch.float64) for p in parts]).sum() / n
    centred = torch.stack([(p.double() - mean).square_().sum() for p in parts]).sum()
    extremes = torch.stack([torch.stack(torch.aminmax(p)) for p in parts])
    lo, hi = extremes[:, 0].amin(), extremes[:, 1].amax()
    nonfinite = n - torch.stack([torch.isfinite(p).sum() for p in parts]).sum()
    zeros, subnormal = small_counts(x)
    return torch.stack(
        [mean.double(), (centred / n).sqrt().double(), lo.double(), hi.double(), zeros, nonfinite.double(), subnormal]
    )


def fast_summary(t: torch.Tensor) -> torch.Tensor:
    """``[sum, x.x, min, max, min |x|]`` of each slice (:func:`slices`) of ``t``, flattened.

    Each slice is reduced five times while it is in cache: ``|x|`` is written into one kept
    buffer (:func:`scratch_buffer`), and ``sum(x)``, ``min``, ``max``, ``|x|.|x| = x.x`` and
    ``min |x|`` read the slice and that buffer there, so the tensor is read from memory about
    once. Sums and dot products are accumulated in float32 or better (float16 and bfloat16
    are widened one slice at a time); :func:`combine_fast` adds the slices up in float64 on
    the host, where the arithmetic costs nothing. An empty tensor gives the neutral row
    ``[0, 0, inf, -inf, inf]``.
    """
    x = dense(t)
    acc = accumulation_dtype(x.dtype)
    if x.numel() == 0:
        row = torch.full((5,), math.inf, dtype=acc, device=x.device)
        row[:2] = 0.0
        row[3] = -math.inf
        return row
    if x.numel() <= slice_size(x.device):  # one slice: no splitting, a third of the call's overhead
        return _slice_row(x.reshape(-1), scratch_buffer(x.numel(), acc, x.device))
    return torch.cat([_slice_row(part, magnitude) for part, magnitude in buffered_slices(x, acc)])


# the integer type of each accumulation dtype's bits
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


def _slice_row(part: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """:func:`fast_summary`'s row of one flat slice, ``|x|`` written into ``magnitude``.

    ``min |x|`` is the minimum of ``|x|``'s bits read as integers: non-negative floats
    order as their bit patterns do, and the integer minimum skips the float one's NaN
    handling (faster on data in cache; in the audit, where the slice comes from memory, it
    measured the same). A NaN's bits exceed every number's, so it is the minimum only of
    an all-NaN slice, whose sum is NaN anyway.
    """
    if part.dtype == magnitude.dtype:
        lo, hi = torch.aminmax(part)
        total = part.sum()
        torch.abs(part, out=magnitude)
    else:  # widened into the buffer first, then made |x| in place
        magnitude.copy_(part)
        lo, hi = torch.aminmax(magnitude)
        total = magnitude.sum()
        magnitude.abs_()
    smallest = magnitude.view(_BITS[magnitude.dtype]).amin().view(magnitude.dtype)
    return torch.stack([total, torch.dot(magnitude, magnitude), lo, hi, smallest])


def combine_fast(n: int, rows: Sequence[float]) -> Fast:
    """``[mean, variance, min, max, min_abs, second_moment]`` of ``n`` elements from
    :func:`fast_summary`'s rows (or one combined row of a sharded tensor's pieces).

    ``mean = sum(x) / n``, ``second_moment = x.x / n``, ``variance = second_moment - mean^2``.
    No element is zero or subnormal when ``min_abs >= finfo.tiny``; only then are the zero
    and subnormal counts known to be 0 without counting. The summary is exact when ``min``
    and ``max`` are finite (no NaN or Inf) and the variance is not a small difference of
    large numbers. :func:`needs_exact` and :func:`needs_counts` say when it is not enough,
    and :func:`tensor_summary` or :func:`small_counts` then complete it.
    """
    if n == 0:
        return Fast(*[math.nan] * 6)
    total = math.fsum(rows[0::5])
    dot = math.fsum(rows[1::5])
    mean, second = total / n, dot / n
    # a NaN in any slice makes its sum NaN, which needs_exact sees whatever min() keeps
    return Fast(mean, second - mean * mean, min(rows[2::5]), max(rows[3::5]), min(rows[4::5]), second)


# tensors of up to this many elements are summarized together (:func:`small_summaries`):
# below it five small operations per tensor cost more than the (unvectorized) segment
# reductions; measured on the benchmark models, 1024 to 16384 all did about as well
SMALL = 1 << 12


def small_summaries(tensors: List[torch.Tensor], points: int = 4) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`tensor_summary` and :func:`probe` of many small CPU tensors at once: ``(k x 7, k x points)``.

    Biases, norm gains and small convolutions would each cost several small operations, and
    a constant one (a zero bias, a unit gain) a second, exact pass; here they are
    concatenated once in float64 and reduced per segment, two passes (the mean, then the
    centred squares) like :func:`tensor_summary`, with the counts, so that none needs
    completing: ``index_add_`` for the sums, ``scatter_reduce_`` for min and max.
    """
    flats = [dense(t).reshape(-1) for t in tensors]
    if all(f.dtype == flats[0].dtype for f in flats):  # widened once, not once per tensor
        flat = torch.cat(flats).to(torch.float64)
    else:
        flat = torch.cat([f.to(torch.float64) for f in flats])
    counts = [t.numel() for t in tensors]
    k = len(tensors)
    lengths = torch.tensor(counts)
    segment = torch.repeat_interleave(torch.arange(k), lengths)
    n = lengths.to(torch.float64)

    def per_segment(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(k, dtype=torch.float64).index_add_(0, segment, values)

    mean = per_segment(flat) / n
    centred = flat - mean[segment]
    std = (per_segment(centred.square_()) / n).sqrt_()
    lo = torch.full((k,), math.inf, dtype=torch.float64).scatter_reduce_(0, segment, flat, "amin")
    hi = torch.full((k,), -math.inf, dtype=torch.float64).scatter_reduce_(0, segment, flat, "amax")
    nan = torch.isnan(flat)
    if bool(nan.any()):  # aminmax propagates NaN; scatter_reduce_ does not always
        has_nan = per_segment(nan.double()) > 0
        lo, hi = lo.masked_fill(has_nan, math.nan), hi.masked_fill(has_nan, math.nan)
    zero = flat == 0
    tiny = torch.tensor([torch.finfo(t.dtype).tiny for t in tensors], dtype=torch.float64)[segment]
    subnormal = ~zero & (flat.abs() < tiny)
    nonfinite = ~torch.isfinite(flat)
    summaries = torch.stack([mean, std, lo, hi, per_segment(zero.double()), per_segment(nonfinite.double()),
                             per_segment(subnormal.double())], dim=1)
    offset, index = 0, []
    for count in counts:
        index += [offset + i * probe_step(count, points) for i in range(points)]
        offset += count
    return summaries, flat[torch.tensor(index)].reshape(k, points)


def needs_exact(fast: Fast) -> bool:
    """Whether a :func:`fast_summary` must be redone with :func:`tensor_summary`."""
    mean, variance, lo, hi, smallest, second = fast
    if not all(math.isfinite(v) for v in (mean, lo, hi, second)):
        return True  # NaN or Inf (or a sum that overflowed): count them exactly
    return cancelled(variance, second)


def needs_counts(fast: Fast, dtype: torch.dtype) -> bool:
    """Whether a tensor may hold zeros or subnormals, which :func:`small_counts` then counts."""
    return not fast[4] >= torch.finfo(dtype).tiny


# (integer type of the bits, mantissa bits) of each float dtype: a non-negative float's bits
# shifted right by the mantissa width are its exponent field, 0 exactly for 0 and subnormals
_EXPONENT = {
    torch.float32: (torch.int32, 23),
    torch.float64: (torch.int64, 52),
    torch.bfloat16: (torch.int16, 7),
    torch.float16: (torch.int16, 10),
}


def small_counts(t: torch.Tensor) -> torch.Tensor:
    """``[zeros, subnormal]``: elements equal to 0, and with ``0 < |x| < finfo.tiny``.

    ``|x|`` of one slice at a time is written into the kept buffer; its bits read as
    integers are 0 exactly for a zero (``count_nonzero`` of them counts the rest), and
    shifted right by the mantissa width, in place, they are 0 exactly for a zero or a
    subnormal: two counts and one integer shift, no comparison's byte mask (which costs
    more than the rest together here).
    """
    x = dense(t).reshape(-1)
    if x.numel() == 0:
        return torch.zeros(2, dtype=torch.float64, device=x.device)
    bits = _EXPONENT.get(x.dtype)
    tiny = torch.finfo(x.dtype).tiny
    rows = []
    for part, magnitude in buffered_slices(x, x.dtype):
        torch.abs(part, out=magnitude)
        if bits is None:  # a float type without an integer twin here: compare
            rows.append(torch.stack([torch.count_nonzero(magnitude == 0), torch.count_nonzero(magnitude < tiny)]))
            continue
        ints = magnitude.view(bits[0])
        nonzero = torch.count_nonzero(ints)
        torch.bitwise_right_shift(ints, bits[1], out=ints)
        rows.append(part.numel() - torch.stack([nonzero, torch.count_nonzero(ints)]))
    zeros, below = added(rows).double()
    return torch.stack([zeros, below - zeros])


def from_fast(fast: Fast, counts: Optional[Sequence[float]] = None) -> Summary:
    """A :func:`fast_summary` in :func:`tensor_summary`'s layout (when it needs no redo).

    ``counts`` are the :func:`small_counts` of a tensor that may hold zeros or subnormals.
    """
    mean, variance, lo, hi, _, _ = fast
    zeros, subnormal = counts if counts is not None else (0.0, 0.0)
    return Summary(mean, math.sqrt(max(variance, 0.0)), lo, hi, zeros, 0.0, subnormal)


def probe_step(n: int, points: int = 4) -> int:
    """Distance between :func:`probe`'s positions ``0, s, 2s, ...`` in ``n`` elements:
    ``s = (n - 1) // (points - 1)``, so that the last lies within the tensor."""
    return (n - 1) // max(points - 1, 1)


def probe(t: torch.Tensor, points: int = 4) -> torch.Tensor:
    """Elements at ``points`` fixed, evenly spaced positions of the flattened tensor
    (:func:`probe_step`), read through a strided view: one small copy, no index tensor.

    With the shape, dtype, mean and std they bucket candidate clones, so that only tensors
    in one bucket are compared element by element.
    """
    x = dense(t).reshape(-1)
    n = x.numel()
    if n == 0:
        return torch.zeros(points, dtype=torch.float64, device=x.device)
    return x.as_strided((points,), (probe_step(n, points),)).double()
