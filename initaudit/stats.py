"""Statistics of tensors, computed on the tensor's own device.

Every function here is pure: it takes tensors (or shapes) and returns numbers or small
tensors, and never touches a module. Reductions return device tensors so that the caller
can bring everything to the host in one transfer (see :class:`Deferred`).
"""

from __future__ import annotations

import math
import threading
from typing import Dict, Hashable, Iterator, List, Optional, Sequence, Tuple

import torch


def fan_in_and_fan_out(shape: Sequence[int]) -> Optional[Tuple[int, int]]:
    """Fans of a weight of ``shape``, exactly as ``torch.nn.init`` computes them.

    ``receptive_field = prod(shape[2:])``,
    ``fan_in = shape[1] * receptive_field``, ``fan_out = shape[0] * receptive_field``.

    For a ``Linear`` weight ``(out, in)`` that is ``(in, out)``; for a ``Conv2d`` weight
    ``(out, in / groups, kh, kw)`` it is ``(in / groups * kh * kw, out * kh * kw)``.
    Returns ``None`` for tensors of fewer than two dimensions, for which ``torch.nn.init``
    raises.
    """
    if len(shape) < 2:
        return None
    receptive_field = math.prod(int(s) for s in shape[2:])
    return int(shape[1]) * receptive_field, int(shape[0]) * receptive_field


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 tensors, float32 for every narrower floating type."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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


# elements per slice when a pass needs a temporary: 2 MiB of float32 stays in a CPU's cache;
# on an accelerator, slices of 64 MiB keep the temporary small next to the model
_SLICE_CPU = 1 << 19
_SLICE_DEVICE = 1 << 24


def slice_size(device: torch.device) -> int:
    """Elements per slice on ``device`` (at most 2^24, which float32 still counts exactly)."""
    return _SLICE_CPU if device.type == "cpu" else _SLICE_DEVICE


def slices(x: torch.Tensor) -> List[torch.Tensor]:
    """``x`` flattened, in slices that a temporary of one stays small for."""
    flat = x.reshape(-1)
    size = slice_size(flat.device)
    return list(flat.split(size)) if flat.numel() > size else [flat]


def _buffered_slices(x: torch.Tensor, dtype: torch.dtype) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Each slice of ``x`` (:func:`slices`) with a view of the kept buffer of ``dtype``
    (:func:`scratch_buffer`) as large as it, for that slice's temporary."""
    parts = slices(x)
    scratch = scratch_buffer(parts[0].numel(), dtype, x.device)
    for part in parts:
        yield part, scratch[: part.numel()]


def _added(rows: List[torch.Tensor]) -> torch.Tensor:
    """The slices' partial results added up (the one row itself for one slice)."""
    return rows[0] if len(rows) == 1 else torch.stack(rows).sum(dim=0)


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
    return torch.cat([_slice_row(part, magnitude) for part, magnitude in _buffered_slices(x, acc)])


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


def combine_fast(n: int, rows: Sequence[float]) -> List[float]:
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
        return [math.nan] * 6
    total = math.fsum(rows[0::5])
    dot = math.fsum(rows[1::5])
    mean, second = total / n, dot / n
    # a NaN in any slice makes its sum NaN, which needs_exact sees whatever min() keeps
    return [mean, second - mean * mean, min(rows[2::5]), max(rows[3::5]), min(rows[4::5]), second]


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


def queue_summaries(items: Sequence[Tuple[Hashable, torch.Tensor, bool]], deferred: "Deferred") -> None:
    """Queue the summary of each ``(key, tensor, probed)`` on ``deferred``, and its
    :func:`probe` where ``probed``.

    CPU tensors of at most :data:`SMALL` elements are summarized together and exactly
    (:func:`small_summaries`), under ``("param", key)`` in :func:`tensor_summary`'s layout;
    the others get :func:`fast_summary` rows under ``("fast", key)``, which
    :func:`combine_fast` turns into a summary that :func:`needs_exact` and
    :func:`needs_counts` say whether to complete.
    """
    small = []
    for key, t, probed in items:
        if t.device.type == "cpu" and 0 < t.numel() <= SMALL:
            small.append((key, t, probed))
            continue
        deferred.add(("fast", key), fast_summary(t))
        if probed:
            deferred.add(("probe", key), probe(t))
    if small:
        summaries, probes = small_summaries([t for _, t, _ in small])
        for (key, _, probed), summary, points in zip(small, summaries, probes):
            deferred.add(("param", key), summary)
            if probed:
                deferred.add(("probe", key), points)


_SCRATCH = threading.local()  # per thread: two audits in two threads never share a buffer


def scratch_buffer(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer of ``numel`` elements for one slice's temporary.

    On the CPU one buffer per dtype is kept (2 MiB for float32): a fresh one would be
    fresh pages from the OS on every call, and faulting them in cost more than the pass it
    serves. Elsewhere the caching allocator already reuses memory.
    """
    if device.type != "cpu":
        return torch.empty(numel, dtype=dtype, device=device)
    buffers = _SCRATCH.__dict__.setdefault("by_dtype", {})
    kept = buffers.get(dtype)
    if kept is None or kept.numel() < numel:
        kept = buffers[dtype] = torch.empty(max(numel, _SLICE_CPU), dtype=dtype)
    return kept[:numel]


# below this share of the second moment, the variance from x.x - n mean^2 has lost its digits
CANCELLATION = 1e-3


def needs_exact(fast: List[float]) -> bool:
    """Whether a :func:`fast_summary` must be redone with :func:`tensor_summary`."""
    mean, variance, lo, hi, smallest, second = fast
    if not all(math.isfinite(v) for v in (mean, lo, hi, second)):
        return True  # NaN or Inf (or a sum that overflowed): count them exactly
    return second > 0 and variance < CANCELLATION * second


def needs_counts(fast: List[float], dtype: torch.dtype) -> bool:
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
    for part, magnitude in _buffered_slices(x, x.dtype):
        torch.abs(part, out=magnitude)
        if bits is None:  # a float type without an integer twin here: compare
            rows.append(torch.stack([torch.count_nonzero(magnitude == 0), torch.count_nonzero(magnitude < tiny)]))
            continue
        ints = magnitude.view(bits[0])
        nonzero = torch.count_nonzero(ints)
        torch.bitwise_right_shift(ints, bits[1], out=ints)
        rows.append(part.numel() - torch.stack([nonzero, torch.count_nonzero(ints)]))
    zeros, below = _added(rows).double()
    return torch.stack([zeros, below - zeros])


def from_fast(fast: List[float], counts: Optional[List[float]] = None) -> List[float]:
    """A :func:`fast_summary` in :func:`tensor_summary`'s layout (when it needs no redo).

    ``counts`` are the :func:`small_counts` of a tensor that may hold zeros or subnormals.
    """
    mean, variance, lo, hi, _, _ = fast
    zeros, subnormal = counts if counts is not None else (0.0, 0.0)
    return [mean, math.sqrt(max(variance, 0.0)), lo, hi, zeros, 0.0, subnormal]


def partial_fast(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(sums, mins)`` of one piece of a sharded tensor, from its :func:`fast_summary`.

    ``sums = [n, sum(x), x.x]`` (added across ranks), ``mins = [min, -max, min |x|]``
    (minimized across them); an empty piece gives the neutral ``[0, 0, 0]`` and
    ``[inf, inf, inf]``. :func:`from_partial_fast` turns combined pieces into one row.
    """
    x = dense(x)
    rows = fast_summary(x).reshape(-1, 5).double()
    n = torch.full((1,), float(x.numel()), dtype=torch.float64, device=x.device)
    mins = torch.stack([rows[:, 2].amin(), -rows[:, 3].amax(), rows[:, 4].amin()])
    return torch.cat([n, rows[:, :2].sum(dim=0)]), mins


def from_partial_fast(sums: List[float], mins: List[float]) -> List[float]:
    """The combined pieces as one :func:`fast_summary` row, for :func:`combine_fast`."""
    _, total, dot = sums
    return [total, dot, mins[0], -mins[1], mins[2]]


def partial_exact(x: torch.Tensor, mean: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(sums, mins)`` of a piece for the exact summary, given the whole tensor's ``mean``.

    ``sums = [sum((x - mean)^2), zeros, nonfinite, subnormal, NaNs]``, ``mins = [min, -max]``
    over the values that are not NaN. :func:`from_partial_exact` combines them into
    :func:`tensor_summary`'s layout.
    """
    x = dense(x)
    xa = x.to(accumulation_dtype(x.dtype)).reshape(-1)
    nans = torch.isnan(xa)
    inf = torch.full((), math.inf, dtype=xa.dtype, device=x.device)
    lo = torch.where(nans, inf, xa).amin() if xa.numel() else inf
    hi = torch.where(nans, -inf, xa).amax() if xa.numel() else -inf
    zeros, subnormal = small_counts(x)
    counts = torch.stack([zeros, (x.numel() - torch.isfinite(x).sum()).double(), subnormal, nans.sum().double()])
    centred = (xa.double() - mean).square().sum().reshape(1)
    return torch.cat([centred, counts]), torch.stack([lo.double(), -hi.double()])


def from_partial_exact(n: float, mean: float, sums: List[float], mins: List[float]) -> List[float]:
    """:func:`tensor_summary`'s layout from combined :func:`partial_exact` pieces."""
    centred, zeros, nonfinite, subnormal, nans = sums
    lo, hi = (math.nan, math.nan) if nans else (mins[0], -mins[1])
    return [mean, math.sqrt(centred / n) if n else math.nan, lo, hi, zeros, nonfinite, subnormal]


def partial_counts(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(sums, mins)`` of a piece for :func:`small_counts`: ``[zeros, subnormal]``, no minima."""
    return small_counts(x), torch.zeros(0, dtype=torch.float64, device=x.device)


def partial_moments(x: torch.Tensor, numel: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(sums, mins)`` of a piece for the kurtosis: ``[n, sum x, sum x^2, sum x^3, sum x^4]``
    over the piece's :func:`kurtosis_sample`, at the rate the whole tensor of ``numel``
    elements is sampled (every element when it has at most 65536).
    """
    flat = dense(x).reshape(-1)
    blocks = max(1, round(SAMPLE_BLOCKS * flat.numel() / numel)) if numel > KURTOSIS_SAMPLE else 0
    sample = kurtosis_sample(flat, blocks).double()
    powers = [sample.new_full((), float(sample.numel()))]
    term = torch.ones_like(sample)
    for _ in range(4):
        term = term * sample
        powers.append(term.sum())
    return torch.stack(powers), torch.zeros(0, dtype=torch.float64, device=x.device)


def kurtosis_sample(flat: torch.Tensor, blocks: int = 0) -> torch.Tensor:
    """A view of ``blocks`` runs of 1024 consecutive elements, evenly spaced over ``flat``
    (all of ``flat`` when ``blocks`` is 0 or it is too short to split).

    Runs, not single elements at a stride, so that only the sample is read from memory:
    a stride of one element per cache line would read the whole tensor.
    """
    n = flat.numel()
    if blocks == 0 or n < blocks * SAMPLE_RUN:
        return flat
    step = n // blocks
    return flat[: blocks * step].view(blocks, step)[:, :SAMPLE_RUN]


def kurtosis_from_moments(sums: List[float]) -> float:
    """``E[(x - m)^4] / Var^2`` from raw power sums ``[n, s1, s2, s3, s4]``.

    ``m = s1/n``, ``Var = s2/n - m^2``, ``E[(x-m)^4] = s4/n - 4 m s3/n + 6 m^2 s2/n - 3 m^4``.
    """
    n, s1, s2, s3, s4 = sums
    if n == 0:
        return math.nan
    m = s1 / n
    var = s2 / n - m * m
    fourth = s4 / n - 4 * m * s3 / n + 6 * m * m * s2 / n - 3 * m ** 4
    return fourth / (var * var) if var > 0 else math.nan


def partial_gradient_exact(g: torch.Tensor, mean: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``[sum(g^2), sum((g - mean)^2), nonfinite]`` of a gradient's piece, for the exact summary."""
    x = dense(g)
    xa = x.double().reshape(-1)
    sums = torch.stack([xa.square().sum(), (xa - mean).square().sum(),
                        (x.numel() - torch.isfinite(x).sum()).double()])
    return sums, torch.zeros(0, dtype=torch.float64, device=g.device)


# elements of the sample the kurtosis is taken from (32 runs of 1024): its standard error on
# a normal draw, sqrt(24 / n), is 0.027 there, against the 0.6 that separates the families.
# Each run is a page read from memory at random, which costs more than its arithmetic: 64
# runs (0.019) took 12 ms on the benchmark MLP's thirty weights, 32 runs 6.5 ms
SAMPLE_RUN = 1024
SAMPLE_BLOCKS = 32
KURTOSIS_SAMPLE = SAMPLE_BLOCKS * SAMPLE_RUN


def dense(t: torch.Tensor) -> torch.Tensor:
    """A detached, strided view of ``t``: sparse tensors are densified for their statistics."""
    x = t.detach()
    return x.to_dense() if x.layout != torch.strided else x


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


def block_singular_values(w: torch.Tensor, blocks: int) -> torch.Tensor:
    """``[min_0, max_0, min_1, max_1, ...]``: extreme singular values of each gate block.

    The recurrent weight ``weight_hh`` of an LSTM stacks its gates (i, f, g, o) along
    dimension 0; an orthogonal block has every singular value equal to 1 (Saxe et al. 2014).
    ``sigma_i = sqrt(lambda_i(B B^T))``: the eigenvalues of all blocks' Gram matrices in one
    batched ``eigvalsh``, in float32 (float64 for float64 weights), about three times
    cheaper than an SVD per block. Squaring costs digits only at the small end: a singular
    value below about 1e-3 of the block's largest is resolved to about 3e-4 of the largest,
    which leaves its spread (the rule's limit is 2) far beyond any limit either way.
    """
    x = w.detach().to(accumulation_dtype(w.dtype))
    rows = x.shape[0] // blocks
    stacked = x[: rows * blocks].reshape(blocks, rows, -1)
    if rows > stacked.shape[2]:
        stacked = stacked.transpose(1, 2)
    gram = stacked @ stacked.transpose(1, 2)
    values = torch.linalg.eigvalsh(gram).clamp_min_(0).sqrt_()
    return torch.stack([values[:, 0], values[:, -1]], dim=1).reshape(-1).double()


def spectral_radius(w: torch.Tensor) -> torch.Tensor:
    """``max |eigenvalue|`` of a square matrix: how a vanilla RNN's state grows per step."""
    x = w.detach().to(torch.float64 if w.device.type == "cpu" else torch.float32)
    return torch.linalg.eigvals(x).abs().max().double()


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


def activation_from_counts(counts: Sequence[float], shape: Sequence[int], nonlinearity: str) -> List[float]:
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
    return [dead_last, dead_channel, saturated]


def activation_summary(out: torch.Tensor, nonlinearity: str) -> List[float]:
    """One activation output's ``[dead_last, dead_channel, saturated]`` fractions."""
    values = output_moments(out, nonlinearity).tolist()
    return activation_from_counts(values[OUTPUT_MOMENTS:], out.shape, nonlinearity)


# values of output_moments before an activation's counts
OUTPUT_MOMENTS = 5


def output_from_moments(moments: Sequence[float], shape: Sequence[int]) -> List[float]:
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
        return [math.nan] * 4
    total, squares, roots, nonzero, spread = moments[:OUTPUT_MOMENTS]
    batch = shape[0] if len(shape) else 1
    features = numel // batch
    mean = total / numel
    variance = squares / numel + spread / (features * batch * batch)
    # sign(NaN) is 0, so the zeros of an output holding NaN are not known: NaN (its mean is NaN)
    zero_fraction = 1 - nonzero / numel if not math.isnan(mean) else math.nan
    return [mean, math.sqrt(max(variance, 0.0)), zero_fraction,
            roots / (features * math.sqrt(batch)) if batch >= 2 else math.nan]


def output_summary(out: torch.Tensor) -> List[float]:
    """``[mean, std, zero_fraction, feature_std]`` of one output (:func:`output_moments`,
    finished by :func:`output_from_moments`)."""
    return output_from_moments(output_moments(out).tolist(), out.shape)


def gradient_summary(g: torch.Tensor) -> torch.Tensor:
    """``[norm, std, nonfinite]`` of a gradient: ``norm = sqrt(sum(g^2))``, population std."""
    x = dense(g)
    n = x.numel()
    xa = x.to(accumulation_dtype(x.dtype))
    norm = xa.square().sum().sqrt()
    mean = xa.sum() / max(n, 1)
    std = ((xa - mean).square().sum() / max(n, 1)).sqrt()
    nonfinite = n - torch.isfinite(x).sum()
    return torch.stack([norm.double(), std.double(), nonfinite.double()])


def gradient_fast(g: torch.Tensor) -> torch.Tensor:
    """``[sum(g), g.g]`` of a gradient (or of one piece of a sharded one): two reductions.

    Accumulated in float32 or better; a float16 or bfloat16 gradient is widened one slice
    at a time into the kept buffer, never as a whole copy. The pieces of a sharded gradient
    add up to the whole's. :func:`gradient_from_fast` turns it into
    :func:`gradient_summary`'s layout, or says that the exact summary is needed (NaN or
    Inf, or a variance that cancels).
    """
    x = dense(g).reshape(-1)
    acc = accumulation_dtype(x.dtype)
    if x.dtype == acc:
        return torch.stack([x.sum(), torch.dot(x, x)])
    rows = []
    for part, wide in _buffered_slices(x, acc):
        wide.copy_(part)
        rows.append(torch.stack([wide.sum(), torch.dot(wide, wide)]))
    return _added(rows)


def gradient_from_fast(n: int, sums: Sequence[float]) -> Optional[List[float]]:
    """``[norm, std, nonfinite]`` of a gradient of ``n`` elements from its :func:`gradient_fast`,
    or ``None`` when it must be redone.

    ``norm = sqrt(g.g)``, ``std = sqrt(g.g / n - mean^2)``; a NaN or Inf anywhere makes the
    sum or the dot product non-finite, so finite ones mean none.
    """
    total, dot = sums
    if not (math.isfinite(total) and math.isfinite(dot)):
        return None
    mean, second = total / max(n, 1), dot / max(n, 1)
    variance = second - mean * mean
    if second > 0 and variance < CANCELLATION * second:
        return None
    return [math.sqrt(dot), math.sqrt(max(variance, 0.0)), 0.0]


def chunk_means(t: torch.Tensor, chunks: int) -> torch.Tensor:
    """Means of ``chunks`` equal slices along dimension 0 (the gate blocks of an RNN)."""
    x = t.detach().to(accumulation_dtype(t.dtype))
    rows = x.shape[0] // chunks
    return x[: rows * chunks].reshape(chunks, -1).mean(dim=1).double()


class Deferred:
    """Collects device tensors under keys and brings them to the host in one go.

    One ``tolist()`` per device, however many tensors were added, so that an audit makes
    a constant number of host-device synchronizations.
    """

    def __init__(self) -> None:
        self._items: List[Tuple[Hashable, torch.Tensor]] = []

    def add(self, key: Hashable, values: torch.Tensor) -> None:
        self._items.append((key, values.reshape(-1)))

    def resolve(self) -> Dict[Hashable, List[float]]:
        by_device: Dict[torch.device, Dict[torch.dtype, List[Tuple[Hashable, torch.Tensor]]]] = {}
        for key, values in self._items:
            by_device.setdefault(values.device, {}).setdefault(values.dtype, []).append((key, values))
        resolved: Dict[Hashable, List[float]] = {}
        for by_dtype in by_device.values():
            # one concatenation per dtype, widened once (an int64 count keeps every digit)
            groups = list(by_dtype.values())
            flat = torch.cat([torch.cat([v for _, v in items]).to(torch.float64) for items in groups]).tolist()
            offset = 0
            for items in groups:
                for key, values in items:
                    resolved[key] = flat[offset : offset + values.numel()]
                    offset += values.numel()
        self._items.clear()
        return resolved


def finite_or_none(value: Optional[float]) -> Optional[float]:
    """``value`` if it is a finite number, else ``None`` (JSON has no NaN or Infinity)."""
    if value is None or not math.isfinite(value):
        return None
    return value
