"""The shape of a weight's distribution and spectrum: kurtosis from a sample, the
orthogonality of sampled rows (the init fingerprint's inputs), the gate blocks' singular
values and the spectral radius of recurrent weights.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple

import torch

from initaudit.stats.reduce import accumulation_dtype


class ShapeStats(NamedTuple):
    """A weight's distribution shape on the host (:func:`shape_stats`), the init fingerprint's
    inputs; the orthogonality figures are ``None`` where they were not computed (a sharded
    weight, whose rows no rank holds whole)."""

    kurtosis: float
    ortho_offdiag: Optional[float]  # max |G_ij| / mean G_ii off the diagonal of sampled rows' Gram G
    ortho_spread: Optional[float]  # (max G_ii - min G_ii) / mean G_ii


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


# elements of the sample the kurtosis is taken from (32 runs of 1024): its standard error on
# a normal draw, sqrt(24 / n), is 0.027 there, against the 0.6 that separates the families.
# Each run is a page read from memory at random, which costs more than its arithmetic: 64
# runs (0.019) took 12 ms on the benchmark MLP's thirty weights, 32 runs 6.5 ms
SAMPLE_RUN = 1024


SAMPLE_BLOCKS = 32


KURTOSIS_SAMPLE = SAMPLE_BLOCKS * SAMPLE_RUN


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


def chunk_means(t: torch.Tensor, chunks: int) -> torch.Tensor:
    """Means of ``chunks`` equal slices along dimension 0 (the gate blocks of an RNN)."""
    x = t.detach().to(accumulation_dtype(t.dtype))
    rows = x.shape[0] // chunks
    return x[: rows * chunks].reshape(chunks, -1).mean(dim=1).double()


# rows (or columns) whose Gram matrix tests orthogonality: of a random matrix with 1024
# columns, the largest of their 496 off-diagonal cosines is about 0.1, against the 1e-3 an
# orthogonal one stays under; 64 rows cost four times the arithmetic for no sharper verdict
ORTHO_SAMPLE = 32


def shape_stats(t: torch.Tensor) -> torch.Tensor:
    """``[kurtosis, ortho_offdiag, ortho_spread]`` of a weight of 2+ dims, on its device.

    ``kurtosis = E[(x - m)^4] / Var^2`` over 32 evenly spaced runs of 1024 elements
    (:func:`~initaudit.stats.kurtosis_sample`; every element of a tensor of up to 32768).
    With ``W`` viewed as ``(out, -1)`` and ``S`` the first 32 rows (or columns, when ``W``
    is tall), ``G = S S^T``: ``ortho_offdiag`` is
    ``max |G_ij| / mean G_ii`` off the diagonal and ``ortho_spread`` is
    ``(max G_ii - min G_ii) / mean G_ii``; both are ~0 for an orthogonal ``W``. Only the
    sample and ``S`` are read, so the cost does not grow with the size of ``W``.
    """
    return shape_stats_batch([t])[0]


# elements stacked at once by shape_stats_batch (16 MB of float32)
_BATCH_ELEMENTS = 1 << 22


def _parts(t: torch.Tensor, acc: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(kurtosis sample, S)`` of one weight (views where no widening is needed)."""
    x = t.detach()
    x = x.to_dense() if x.layout != torch.strided else x
    flat = x.reshape(-1)
    sample = kurtosis_sample(flat, SAMPLE_BLOCKS if flat.numel() > KURTOSIS_SAMPLE else 0).to(acc)
    w = x.reshape(x.shape[0], -1)
    rows = (w[:ORTHO_SAMPLE] if w.shape[0] <= w.shape[1] else w[:, :ORTHO_SAMPLE].T).to(acc)
    return sample, rows


def shape_stats_batch(ts: List[torch.Tensor]) -> torch.Tensor:
    """:func:`shape_stats` of weights of one shape, dtype and device: a ``k x 3`` tensor.

    Their samples and ``S`` are stacked (a few MB at a time, :data:`_BATCH_ELEMENTS`) so that
    the dozen small operations each weight needs are made once per batch: with thirty
    1024 x 1024 weights, 9 ms instead of 13 here.
    """
    acc = accumulation_dtype(ts[0].dtype)  # float32 keeps the Gram's relative error near 1e-6, far below 1e-3
    parts = [_parts(t, acc) for t in ts]
    per_weight = parts[0][0].numel() + parts[0][1].numel()
    step = max(1, _BATCH_ELEMENTS // max(per_weight, 1))
    results = []
    for first in range(0, len(parts), step):
        chunk = parts[first : first + step]
        k = len(chunk)
        sample = torch.stack([p[0] for p in chunk]).reshape(k, -1)
        squares = (sample - sample.mean(dim=1, keepdim=True)).square_()
        variance = squares.mean(dim=1)
        fourth = torch.bmm(squares.unsqueeze(1), squares.unsqueeze(2)).reshape(k) / squares.shape[1]
        rows = torch.stack([p[1] for p in chunk])
        gram = torch.bmm(rows, rows.transpose(1, 2))
        diag = gram.diagonal(dim1=1, dim2=2)
        lo, hi = torch.aminmax(diag, dim=1)
        scale = diag.mean(dim=1)
        spread = (hi - lo) / scale
        diag.zero_()  # its statistics are taken
        off = gram.abs_().amax(dim=(1, 2)) / scale
        results.append(torch.stack([fourth / (variance * variance), off, spread], dim=1))
    return torch.cat(results).double()
