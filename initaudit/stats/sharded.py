"""Partial statistics of one rank's piece of a sharded tensor: sums added and minima
taken across ranks, then combined into the layouts of :mod:`initaudit.stats.summaries`.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch

from initaudit.stats.reduce import accumulation_dtype, dense
from initaudit.stats.shape import KURTOSIS_SAMPLE, SAMPLE_BLOCKS, kurtosis_sample
from initaudit.stats.summaries import Summary, fast_summary, small_counts


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


def from_partial_exact(n: float, mean: float, sums: List[float], mins: List[float]) -> Summary:
    """:func:`tensor_summary`'s layout from combined :func:`partial_exact` pieces."""
    centred, zeros, nonfinite, subnormal, nans = sums
    lo, hi = (math.nan, math.nan) if nans else (mins[0], -mins[1])
    return Summary(mean, math.sqrt(centred / n) if n else math.nan, lo, hi, zeros, nonfinite, subnormal)


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


def partial_gradient_exact(g: torch.Tensor, mean: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``[sum(g^2), sum((g - mean)^2), nonfinite]`` of a gradient's piece, for the exact summary."""
    x = dense(g)
    xa = x.double().reshape(-1)
    sums = torch.stack([xa.square().sum(), (xa - mean).square().sum(),
                        (x.numel() - torch.isfinite(x).sum()).double()])
    return sums, torch.zeros(0, dtype=torch.float64, device=g.device)
