"""Queueing the parameter pass's statistics on a :class:`~initaudit.record.transfer.Deferred`,
small tensors together, weights of one shape batched.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch

from initaudit.record.transfer import Deferred, TensorValues
from initaudit.stats.shape import ShapeStats, shape_stats_batch
from initaudit.stats.summaries import SMALL, Summary, fast_summary, probe, small_summaries


def queue_summaries(items: Sequence[Tuple[TensorValues, torch.Tensor, bool]], deferred: Deferred) -> None:
    """Queue the summary of each ``(values, tensor, probed)`` on ``deferred``, and its
    :func:`probe` where ``probed``, for ``values`` to hold.

    CPU tensors of at most :data:`SMALL` elements are summarized together and exactly
    (:func:`small_summaries`) into ``values.summary``; the others get :func:`fast_summary`
    rows in ``values.fast_rows``, which :func:`combine_fast` turns into a summary that
    :func:`needs_exact` and :func:`needs_counts` say whether to complete.
    """
    small = []
    for values, t, probed in items:
        if t.device.type == "cpu" and 0 < t.numel() <= SMALL:
            small.append((values, t, probed))
            continue
        deferred.put(values, "fast_rows", fast_summary(t))
        if probed:
            deferred.put(values, "probe", probe(t))
    if small:
        summaries, probes = small_summaries([t for _, t, _ in small])
        for (values, _, probed), summary, points in zip(small, summaries, probes):
            deferred.put(values, "summary", summary, Summary._make)
            if probed:
                deferred.put(values, "probe", points)


def queue_shape_stats(items: List[Tuple[TensorValues, torch.Tensor]], deferred: Deferred) -> None:
    """Queue the :class:`~initaudit.stats.ShapeStats` of each ``(values, weight)`` on
    ``deferred`` for ``values.shape``, batched by shape, dtype and device
    (:func:`shape_stats_batch`)."""
    groups: Dict[Tuple[Any, ...], List[Tuple[TensorValues, torch.Tensor]]] = {}
    for values, t in items:
        groups.setdefault((tuple(t.shape), t.dtype, t.device), []).append((values, t))
    for group in groups.values():
        for (values, _), row in zip(group, shape_stats_batch([t for _, t in group])):
            deferred.put(values, "shape", row, ShapeStats._make)
