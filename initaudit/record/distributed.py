"""Sharded parameters under ``torch.distributed``: statistics combined, never gathered.

A parameter that is a ``DTensor`` with a ``Shard`` placement (FSDP2's ``fully_shard``,
tensor parallelism) lives in pieces, one per rank. Each rank reduces its local piece to
partial statistics, and :class:`Partials` combines them with collective reductions: one
``all_reduce(SUM)`` over every additive statistic (counts, sums, sums of squares) and one
``all_reduce(MIN)`` over every extreme (a maximum travels as the minimum of its negation),
per bucket of tensors sharded over the same process groups. No rank ever holds a whole
parameter. A replicated ``DTensor`` is the same on every rank and is read locally.

Every rank makes the same collective calls in the same order: which tensors need a second,
exact pass is decided from combined statistics, which every rank holds alike.
"""

from __future__ import annotations

import gc
import os
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple

import torch

from initaudit.core.knowledge import is_dtensor
from initaudit.record.transfer import Slot


def active() -> bool:
    """Whether a ``torch.distributed`` process group is initialized."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's rank, 0 outside ``torch.distributed``."""
    return torch.distributed.get_rank() if active() else 0


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a ``DTensor`` split over ranks (a ``Shard`` placement on some mesh dim)."""
    return is_dtensor(t) and any(p.is_shard() for p in t.placements)


def local(t: torch.Tensor) -> torch.Tensor:
    """The piece of ``t`` this rank holds (``t`` itself for an ordinary tensor)."""
    return t.to_local() if is_dtensor(t) else t


def shard_groups(t: torch.Tensor) -> Tuple[Any, ...]:
    """The process groups of the mesh dimensions ``t`` is sharded over, in mesh order."""
    mesh = t.device_mesh
    return tuple(mesh.get_group(dim) for dim, p in enumerate(t.placements) if p.is_shard())


class Partials:
    """Partial statistics of sharded tensors, combined across ranks.

    ``add(key, t, sums, mins)`` files the rank-local ``sums`` (added across ranks) and
    ``mins`` (minimized across ranks) of the sharded tensor ``t``; ``resolve()`` returns
    ``{key: (combined sums, combined mins)}`` as Python floats after one ``all_reduce`` of
    each kind per bucket of tensors sharing their process groups.
    """

    def __init__(self) -> None:
        self._items: List[Tuple[Hashable, Tuple[Any, ...], torch.Tensor, torch.Tensor]] = []

    def add(self, key: Hashable, t: torch.Tensor, sums: torch.Tensor, mins: torch.Tensor) -> None:
        self._items.append((key, shard_groups(t), sums.reshape(-1).double(), mins.reshape(-1).double()))

    def resolve(self) -> Dict[Hashable, Tuple[List[float], List[float]]]:
        buckets: Dict[Tuple[Any, ...], List[Tuple[Hashable, torch.Tensor, torch.Tensor]]] = {}
        for key, groups, sums, mins in self._items:
            buckets.setdefault(groups, []).append((key, sums, mins))
        resolved: Dict[Hashable, Tuple[List[float], List[float]]] = {}
        for groups, items in buckets.items():
            sums = torch.cat([s for _, s, _ in items])
            mins = torch.cat([m for _, _, m in items])
            for group in groups:
                torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM, group=group)
                torch.distributed.all_reduce(mins, op=torch.distributed.ReduceOp.MIN, group=group)
            flat_sums, flat_mins = sums.tolist(), mins.tolist()
            i = j = 0
            for key, s, m in items:
                resolved[key] = (flat_sums[i : i + s.numel()], flat_mins[j : j + m.numel()])
                i += s.numel()
                j += m.numel()
        self._items.clear()
        for key, (sums, mins) in resolved.items():
            if isinstance(key, Slot):  # holder.field = decode(sums, mins)
                setattr(key.holder, key.field, key.decode(sums, mins) if key.decode is not None else sums)
        return resolved

    def put(self, holder: Any, field: str, t: torch.Tensor, sums: torch.Tensor, mins: torch.Tensor,
            combine: Optional[Callable[[List[float], List[float]], Any]] = None) -> None:
        """Queue a piece's partials for ``holder.field``, ``combine(sums, mins)`` once combined
        across ranks (the combined sums themselves without one)."""
        self.add(Slot(holder, field, combine), t, sums, mins)


def all_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors sharded alike are equal everywhere: local pieces compared, the
    verdicts combined by an ``all_reduce(MIN)``."""
    if a.placements != b.placements or a.device_mesh != b.device_mesh:
        return False
    here = torch.tensor([float(torch.equal(local(a), local(b)))], dtype=torch.float64, device=local(a).device)
    for group in shard_groups(a):
        torch.distributed.all_reduce(here, op=torch.distributed.ReduceOp.MIN, group=group)
    return bool(here.item() == 1.0)


def init_from_env(device: Optional[str] = None) -> bool:
    """Join the process group ``torchrun`` describes in the environment, if there is one.

    Returns whether a group was initialized here (the caller then destroys it). The backend
    is NCCL for CUDA audits and gloo otherwise.
    """
    if not torch.distributed.is_available() or active() or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    cuda = (device or "").startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return True


def leave(joined: bool) -> None:
    """Destroy the process group :func:`init_from_env` created (``joined``), if any.

    The audited model is collected first: an FSDP model's device mesh holds the groups, and
    a gloo group destroyed only at interpreter shutdown can abort the process (its worker
    threads release tensors after Python is gone), which a rank's exit code would show.
    """
    if joined and active():
        gc.collect()
        torch.distributed.destroy_process_group()
        gc.collect()


def agree(code: int, error: int) -> Tuple[int, List[int]]:
    """``(exit code, failed ranks)``: the code every rank leaves with, and the other ranks
    that ended with ``error``.

    It is rank 0's code (rank 0 alone reports findings), raised to ``error`` when another
    rank could not load or run its part: that rank said why on its own stderr, and a CI gate
    must not pass because rank 0 alone succeeded. Every rank calls this once, last, so it
    pairs with the same collective everywhere.
    """
    if not active():
        return code, []
    codes: List[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(codes, code)
    failed = [r for r, c in enumerate(codes) if r != 0 and c == error]
    return (error if failed else int(codes[0])), failed
