"""Queueing the parameter pass's statistics on a :class:`~initaudit.record.transfer.Deferred`,
small tensors together, weights of one shape batched.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, List, Sequence, Tuple

import torch

from initaudit.record.transfer import Deferred
from initaudit.stats.shape import shape_stats_batch
from initaudit.stats.summaries import SMALL, fast_summary, probe, small_summaries


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


def queue_shape_stats(items: List[Tuple[Hashable, torch.Tensor]], deferred: Deferred) -> None:
    """Queue ``("shape", key)`` of each ``(key, weight)`` on ``deferred``, batched by shape,
    dtype and device (:func:`shape_stats_batch`)."""
    groups: Dict[Tuple[Any, ...], List[Tuple[Hashable, torch.Tensor]]] = {}
    for key, t in items:
        groups.setdefault((tuple(t.shape), t.dtype, t.device), []).append((key, t))
    for group in groups.values():
        for (key, _), row in zip(group, shape_stats_batch([t for _, t in group])):
            deferred.add(("shape", key), row)
