"""Clones (bit-identical values) and aliases (shared memory) among parameters."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Set, Tuple

import torch

from initaudit.core import knowledge
from initaudit.core.records import TensorRecord
from initaudit.record import distributed
from initaudit.record.tensors import Tracked


def relate(records: List[Tracked], param_names: "OrderedDict[int, Tuple[Any, List[str]]]") -> None:
    """Fill ``clones`` (bit-identical values) and ``aliases`` (shared memory) of parameters.

    Clones are bucketed by shape, dtype, mean, std and a few probed elements, and only
    tensors in one bucket are compared element by element, so the cost stays linear in
    the bytes. Constant tensors (zero biases, unit gains) are not clones of each other.
    """
    by_key = {key: record for key, record, _ in records if record.kind == "parameter"}
    probes = {key: values.probe for key, _, values in records}
    aliased = _aliases(by_key, param_names)
    buckets: Dict[Tuple[Any, ...], List[int]] = {}
    for key, record in by_key.items():
        probe = probes.get(key)
        if probe is None or record.min is None or record.min == record.max or record.nonfinite:
            continue
        bucket = (record.shape, record.dtype, record.mean, record.std, *probe)
        buckets.setdefault(bucket, []).append(key)
    for keys in buckets.values():
        # each tensor is compared with one member of each set of equal tensors found so far:
        # a bucket of k copies costs k - 1 comparisons, not k (k - 1) / 2
        classes: List[List[int]] = []
        for key in keys:
            tensor = param_names[key][0].detach()
            for members in classes:
                first = param_names[members[0]][0].detach()
                if _equal(tensor, first):
                    members.append(key)
                    break
            else:
                classes.append([key])
        for members in classes:
            if len(members) < 2:
                continue
            for a in members:
                by_key[a].clones += [by_key[b].name for b in members if b != a and (a, b) not in aliased]


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical values; sharded tensors compare their pieces and agree across ranks."""
    if distributed.is_sharded(a) or distributed.is_sharded(b):
        return distributed.is_sharded(a) and distributed.is_sharded(b) and distributed.all_equal(a, b)
    a, b = distributed.local(a), distributed.local(b)
    return a.device == b.device and torch.equal(a, b)


def _byte_span(t: torch.Tensor) -> Optional[Tuple[int, int]]:
    """``[first, last)`` byte addresses a tensor's elements can occupy in its storage."""
    if t.numel() == 0 or t.device.type == "meta" or t.is_sparse:
        return None
    try:
        base = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # wrapper tensors have no storage of their own
        return None
    reach = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    start = base + t.storage_offset() * t.element_size()
    return start, start + (reach + 1) * t.element_size()


def _element_offsets(t: torch.Tensor) -> torch.Tensor:
    """Storage offsets of every element: ``offset + sum_i index_i * stride_i``."""
    offsets = torch.tensor([t.storage_offset()], dtype=torch.int64)
    for size, stride in zip(t.shape, t.stride()):
        offsets = (offsets[:, None] + torch.arange(size, dtype=torch.int64)[None, :] * stride).reshape(-1)
    return offsets


def _aliases(by_key: Dict[int, TensorRecord], param_names: "OrderedDict[int, Tuple[Any, List[str]]]") -> Set[Tuple[int, int]]:
    """Fill ``aliases`` of parameters whose elements share memory; returns the pairs.

    Byte spans rule out most pairs at once; two strided views whose spans overlap (two
    column blocks of one matrix) are compared element by element.
    """
    spans = []
    for key in by_key:
        if knowledge.is_dtensor(param_names[key][0]):
            continue  # its local piece's memory says nothing of another rank's
        span = _byte_span(param_names[key][0])
        if span is not None:
            spans.append((span[0], span[1], key))
    spans.sort()
    pairs: Set[Tuple[int, int]] = set()
    for i, (start, end, key) in enumerate(spans):
        for other_start, _, other in spans[i + 1:]:
            if other_start >= end:
                break
            a, b = param_names[key][0], param_names[other][0]
            if not (a.is_contiguous() and b.is_contiguous()) and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr():
                if a.element_size() != b.element_size() or not bool(torch.isin(_element_offsets(a), _element_offsets(b)).any()):
                    continue
            by_key[key].aliases.append(by_key[other].name)
            by_key[other].aliases.append(by_key[key].name)
            pairs |= {(key, other), (other, key)}
    return pairs
