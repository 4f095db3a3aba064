"""A record for every parameter and floating buffer, with its statistics queued on the
device: summaries, fingerprint statistics, recurrent gate means and spectra.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Hashable, List, NamedTuple, Set, Tuple

import torch

from initaudit import stats
from initaudit.core import knowledge
from initaudit.core.records import TensorRecord
from initaudit.record import distributed, queue, transfer
from initaudit.record.walk import owner_and_attr


class Tracked(NamedTuple):
    """A parameter or floating buffer being recorded: its key (the id of the tensor, or
    ``("effective", name)`` for a parametrization's computed weight), its record, and its
    statistics as they arrive on the host."""

    key: Hashable
    record: TensorRecord
    values: transfer.TensorValues


def note_unjudged(tensors: List[Tracked], called: Set[str]) -> None:
    """Say in each parameter's notes why a rule could not judge it."""
    for _, record, _ in tensors:
        if record.kind != "parameter":
            continue
        if not record.floating:
            record.notes.append("not floating point: value and gradient rules not applied")
        elif not record.requires_grad:
            record.notes.append("frozen (requires_grad=False): gradient rules not applied")
        if record.floating and record.grad is None and record.module not in called:
            record.notes.append(f"not reached by the forward: module '{record.module}' was never called")


def tensor_records(
    param_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    buffer_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    module_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    deferred: transfer.Deferred,
    partials: distributed.Partials,
) -> List[Tracked]:
    """A :class:`Tracked` record for every parameter and floating buffer (and the effective
    weight of every parametrized module), its statistics queued on ``deferred`` (or, for a
    sharded tensor, on ``partials``)."""
    modules_by_name = {}
    for module, names in module_names.values():
        for n in names:
            modules_by_name[n] = module
    records = []
    summarize: List[Tuple[transfer.TensorValues, torch.Tensor, bool]] = []  # (values, tensor, probed), queued after the loop
    shaped: List[Tuple[transfer.TensorValues, torch.Tensor]] = []  # weights whose fingerprint statistics are queued after it
    for kind, table in (("parameter", param_names), ("buffer", buffer_names)):
        for key, (t, names) in table.items():
            floating = t.is_floating_point()
            if kind == "buffer" and not floating:
                continue
            module_name, attr = owner_and_attr(names[0])
            owner = modules_by_name.get(module_name)
            fans = stats.fan_in_and_fan_out(t.shape)
            record = TensorRecord(
                names=names,
                kind=kind,
                module=module_name,
                module_type=knowledge.type_name(owner) if owner is not None else "",
                attr=attr,
                shape=tuple(t.shape),
                dtype=str(t.dtype).replace("torch.", ""),
                device=str(t.device),
                requires_grad=bool(t.requires_grad),
                floating=floating,
                numel=t.numel(),
                fan_in=fans[0] if fans else None,
                fan_out=fans[1] if fans else None,
            )
            if isinstance(owner, knowledge.TRANSPOSED_CONV_TYPES) and fans:
                record.layer_fan_in = knowledge.transposed_conv_fan_in(owner.in_channels, owner.groups, t.shape)
            else:
                record.layer_fan_in = record.fan_in
            values = transfer.TensorValues()
            if floating and distributed.is_sharded(t):
                sharded_records(t, kind, record, values, partials)
            elif floating:
                t = distributed.local(t)  # a replicated DTensor is whole on every rank
                summarize.append((values, t, kind == "parameter" and t.numel() > 1))
                if kind == "parameter" and t.dim() >= 2 and t.numel() > 1:
                    shaped.append((values, t))
                gates = knowledge.gate_count(type(owner))  # 0: not a recurrent module
                # one block's mean is the tensor's own: gate means only where there are several
                if gates > 1 and knowledge.is_gate_stacked(attr) and t.shape[0] % gates == 0:
                    deferred.put(values, "gate_means", stats.chunk_means(t, gates))
                if gates and attr.startswith("weight_hh") and t.dim() == 2 and t.shape[0] % gates == 0:
                    deferred.put(values, "gate_singular_values", stats.block_singular_values(t, gates))
                    if gates == 1 and t.shape[0] == t.shape[1]:
                        deferred.put(values, "spectral_radius", stats.spectral_radius(t).reshape(1), transfer.first)
            records.append(Tracked(key, record, values))
    queue.queue_summaries(summarize, deferred)
    queue.queue_shape_stats(shaped, deferred)
    records += effective_records(module_names, deferred)
    return records


def sharded_records(t: torch.Tensor, kind: str, record: TensorRecord, values: transfer.TensorValues,
                    partials: distributed.Partials) -> None:
    """File the partial statistics of a sharded tensor's local piece, to be combined across ranks.

    The kurtosis is combined from power sums; the orthogonality test and the recurrent
    statistics need whole rows or blocks, which no rank holds, and are not computed.
    """
    piece = distributed.local(t)
    partials.put(values, "fast_rows", t, *stats.partial_fast(piece), combine=stats.from_partial_fast)
    if kind == "parameter" and t.numel() > 1:
        partials.put(values, "probe", t, stats.probe(piece), torch.zeros(0, device=piece.device))
    if kind == "parameter" and t.dim() >= 2 and t.numel() > 1:
        partials.put(values, "shape", t, *stats.partial_moments(piece, t.numel()), combine=_kurtosis_only)
    groups = distributed.shard_groups(t)
    ranks = math.prod(torch.distributed.get_world_size(g) for g in groups)
    record.notes.append(f"sharded over {ranks} ranks ({', '.join(str(p) for p in t.placements)}): statistics "
                        "combined across ranks; orthogonality and recurrent-gate statistics not computed")


def _kurtosis_only(sums: List[float], mins: List[float]) -> stats.ShapeStats:
    """A sharded weight's shape statistics: the kurtosis from the combined power sums; the
    orthogonality test needs whole rows, which no rank holds."""
    return stats.ShapeStats(stats.kurtosis_from_moments(sums), None, None)


def effective_records(
    module_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    deferred: transfer.Deferred,
) -> List[Tracked]:
    """The effective tensors of parametrized modules (``parametrize``, ``weight_norm``,
    ``spectral_norm``): what the layer computes with, named as the layer uses it, with a
    note naming the trainable originals. The value rules and IA201 judge these."""
    from torch.nn.utils import parametrize

    records = []
    for module, names in module_names.values():
        if not parametrize.is_parametrized(module):
            continue
        for attr, plist in module.parametrizations.items():
            was_training = module.training
            module.eval()  # spectral_norm's power iteration runs (and writes buffers) only in training
            try:
                with torch.no_grad():
                    value = getattr(module, attr).detach()
            finally:
                module.train(was_training)
            originals = [f"{names[0]}.parametrizations.{attr}.{n}" if names[0] else f"parametrizations.{attr}.{n}"
                         for n, _ in plist.named_parameters(recurse=False)]
            fans = stats.fan_in_and_fan_out(value.shape)
            name = f"{names[0]}.{attr}" if names[0] else attr
            record = TensorRecord(
                names=[name], kind="effective", module=names[0], module_type=type(module).__name__, attr=attr,
                shape=tuple(value.shape), dtype=str(value.dtype).replace("torch.", ""), device=str(value.device),
                requires_grad=False, floating=value.is_floating_point(), numel=value.numel(),
                fan_in=fans[0] if fans else None, fan_out=fans[1] if fans else None,
                grad_status="effective",
            )
            record.layer_fan_in = record.fan_in
            record.notes.append(
                f"effective {attr} of a parametrization ({', '.join(type(p).__name__ for p in plist)}); "
                f"trainable original(s): {', '.join(originals)}"
            )
            values = transfer.TensorValues()
            if record.floating:
                deferred.put(values, "summary", stats.tensor_summary(value), stats.Summary._make)  # small and rare: exact
                if value.dim() >= 2 and value.numel() > 1:
                    deferred.put(values, "shape", stats.shape_stats(value), stats.ShapeStats._make)
            records.append(Tracked(("effective", name), record, values))
    return records
