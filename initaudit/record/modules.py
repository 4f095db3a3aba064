"""A record for every module: its kind, calls, first output and consumer."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Set, Tuple

from torch import nn

from initaudit import stats
from initaudit.core import knowledge
from initaudit.core.records import ModuleRecord, OutputRecord
from initaudit.record import flow
from initaudit.record.hooks import CallRecorder


def declared_init_std(model: nn.Module) -> Optional[float]:
    """The std of a model's own init when it declares one: Hugging Face's ``_init_weights``
    draws linear and embedding weights from N(0, ``config.initializer_range``)."""
    std = getattr(getattr(model, "config", None), "initializer_range", None)
    if callable(getattr(model, "_init_weights", None)) and isinstance(std, (int, float)) and std > 0:
        return float(std)
    return None


def declared_ties(model: nn.Module) -> Set[FrozenSet[str]]:
    """Parameter names the model itself declares tied (Hugging Face's conventions).

    - ``all_tied_weights_keys`` / ``_tied_weights_keys`` on any submodule, relative to it: a
      dict target -> source (transformers v5), or a list of targets, names or patterns (v4);
      a declaration counts where target and source are one Parameter;
    - ``get_input_embeddings()`` and ``get_output_embeddings()`` returning one weight.
    """
    params = list(model.named_parameters(remove_duplicate=False))
    names_of: Dict[int, List[str]] = {}
    by_name: Dict[str, nn.Parameter] = {}
    for name, p in params:
        names_of.setdefault(id(p), []).append(name)
        by_name[name] = p
    ties: Set[FrozenSet[str]] = set()
    for prefix, module in model.named_modules():
        declared = getattr(module, "all_tied_weights_keys", None) or getattr(module, "_tied_weights_keys", None)
        if isinstance(declared, Mapping):
            pairs = [(str(k), str(v)) for k, v in declared.items()]
        elif isinstance(declared, (list, tuple, set)):
            pairs = [(str(k), None) for k in declared]
        else:
            continue
        head = prefix + "." if prefix else ""
        for target, source in pairs:
            for name in _matching(by_name, head, target):
                group = names_of[id(by_name[name])]
                if len(group) > 1 and (source is None or head + source in group):
                    ties.add(frozenset(group))
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_in) and callable(get_out):
        try:
            emb_in, emb_out = get_in(), get_out()
        except Exception:  # a model whose accessors are not implemented declares nothing
            return ties
        w_in = getattr(emb_in, "weight", None)
        if isinstance(w_in, nn.Parameter) and w_in is getattr(emb_out, "weight", None):
            ties.add(frozenset(names_of[id(w_in)]))
    return ties


def _matching(by_name: Dict[str, nn.Parameter], head: str, target: str) -> List[str]:
    """The parameter names under ``head`` that ``target`` names: exactly, or as a v4 pattern."""
    if head + target in by_name:
        return [head + target]
    try:
        pattern = re.compile(target)
    except re.error:
        return []
    return [n for n in by_name if n.startswith(head) and pattern.fullmatch(n[len(head):])]


def module_records(
    module_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    recorder: CallRecorder,
    ignores: Dict[int, Dict[str, str]],
    flows: Dict[str, "flow.Flow"],
) -> List[ModuleRecord]:
    records = []
    for key, (module, names) in module_names.items():
        kind, act = knowledge.classify(module)
        record = ModuleRecord(
            names=names,
            type=knowledge.type_name(module),
            kind=kind,
            activation=act.name if act else None,
            activation_param=act.param if act else 0.0,
            # a parametrized layer is still a leaf: its only child holds its parametrizations
            leaf=all(child == "parametrizations" for child, _ in module.named_children()),
            has_parameters=next(module.parameters(recurse=False), None) is not None,
            calls=recorder.counts.get(key, 0),
            first_call=recorder.first_call.get(key),
            ignore=ignores.get(key, {}),
        )
        if record.first_call is not None:
            record.output = output_record(recorder, record.first_call)
        record.activation = knowledge.recurrent_nonlinearity(module) or record.activation
        found = flows.get(names[0])
        if found is not None and found.consumer != "unknown":
            record.consumer_kind = found.consumer
            record.consumer = found.activation.name if found.activation else found.via
            record.consumer_param = found.activation.param if found.activation else 0.0
            record.consumer_method = flow.FX
        elif kind in (knowledge.LAYER, knowledge.NORM):
            record.consumer_method = flow.HOOKS
        record.residual = found.residual if found is not None else None
        records.append(record)
    return records


def output_record(recorder: CallRecorder, index: int) -> Optional[OutputRecord]:
    """The statistics of call ``index``'s output, from its moments (``None``: no floating output)."""
    call = recorder.call_outputs[index]
    if call is None:
        return None
    row = call.values.moments
    extra = ([None, None, None] if call.nonlinearity is None
             else stats.activation_from_counts(row[stats.OUTPUT_MOMENTS:], call.shape, call.nonlinearity))
    return OutputRecord(call.shape, call.dtype, *stats.output_from_moments(row, call.shape), *extra)
