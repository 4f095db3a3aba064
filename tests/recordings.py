"""Recordings built by hand, for unit tests of rules that run no model.

A rule reads a :class:`~initaudit.core.records.Recording` and nothing else, so a few records
with the statistics a case needs test it in microseconds. Each builder gives a record with
sensible defaults (a float32 ``Linear`` weight drawn like N(0, 0.1²), a module called once,
a unit-variance output) and takes any field as a keyword to change.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from initaudit.core.records import ModuleRecord, OutputRecord, Recording, TensorRecord
from initaudit.rules.engine import Finding, run_rules
from initaudit.rules.registry import load_rules

# module type -> (kind, nonlinearity), as initaudit.core.knowledge classifies those modules
MODULE_KINDS: Dict[str, Tuple[str, Optional[str]]] = {
    "Linear": ("layer", None),
    "Conv1d": ("layer", None),
    "Conv2d": ("layer", None),
    "ReLU": ("activation", "relu"),
    "Tanh": ("activation", "tanh"),
    "Sigmoid": ("activation", "sigmoid"),
    "LayerNorm": ("norm", None),
    "BatchNorm1d": ("norm", None),
    "BatchNorm2d": ("norm", None),
    "Dropout": ("passthrough", None),
}


def fans(shape: Sequence[int]) -> Tuple[Optional[int], Optional[int]]:
    """``(fan_in, fan_out)`` as ``torch.nn.init`` computes them (``None`` below 2 dimensions)."""
    if len(shape) < 2:
        return None, None
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def filled(value: float) -> Dict[str, Any]:
    """The statistics of a tensor whose every element is ``value``: pass as ``**filled(0.0)``."""
    return {"mean": value, "std": 0.0, "min": value, "max": value, "zero_fraction": 1.0 if value == 0 else 0.0}


def tensor_record(name: str = "0.weight", shape: Sequence[int] = (4, 4), *, kind: str = "parameter",
                  module_type: str = "Linear", **fields: Any) -> TensorRecord:
    """One parameter (or ``kind="buffer"``) named ``name``; its module and attribute come
    from the name, its fans from the shape. By default its values look drawn from N(0, 0.1²)."""
    module, _, attr = name.rpartition(".")
    fan_in, fan_out = fans(shape)
    record: Dict[str, Any] = {
        "names": [name], "kind": kind, "module": module, "module_type": module_type, "attr": attr,
        "shape": tuple(shape), "dtype": "torch.float32", "device": "cpu", "requires_grad": kind == "parameter",
        "floating": True, "numel": math.prod(shape), "mean": 0.0, "std": 0.1, "min": -0.3, "max": 0.3,
        "zero_fraction": 0.0, "fan_in": fan_in, "fan_out": fan_out, "layer_fan_in": fan_in,
        "grad_status": "not-run" if kind == "parameter" else "buffer",
    }
    record.update(fields)
    return TensorRecord(**record)


def output_record(shape: Sequence[int] = (8, 4), **fields: Any) -> OutputRecord:
    """A module's output: by default zero mean, unit variance, no zeros."""
    record: Dict[str, Any] = {"shape": tuple(shape), "dtype": "torch.float32", "mean": 0.0, "std": 1.0,
                              "zero_fraction": 0.0, "feature_std": 1.0}
    record.update(fields)
    return OutputRecord(**record)


def module_record(name: str = "0", type: str = "Linear", **fields: Any) -> ModuleRecord:
    """One leaf module, its kind and nonlinearity from its type (see :data:`MODULE_KINDS`;
    other types are ``"other"``); layers and norms have parameters of their own."""
    kind, activation = MODULE_KINDS.get(type, ("other", None))
    record: Dict[str, Any] = {
        "names": [name], "type": type, "kind": kind, "activation": activation, "activation_param": 0.0,
        "leaf": True, "has_parameters": kind in ("layer", "norm", "other"),
    }
    record.update(fields)
    return ModuleRecord(**record)


def recording(tensors: Sequence[TensorRecord] = (), modules: Optional[Sequence[ModuleRecord]] = None, *,
              calls: Optional[Sequence[str]] = None, outputs: Optional[Mapping[str, OutputRecord]] = None,
              **fields: Any) -> Recording:
    """A recording of ``tensors`` and ``modules`` (by default one module per owner of the
    tensors, typed as the tensors say). ``calls`` is the forward's call order by module
    name (default: each module once, in order), ``outputs`` a module's output on each of
    its calls; each module's ``calls``, ``first_call`` and ``output`` follow from them, and
    the modules start their forward in the order of their first call (so the last module
    holding a weight is the head)."""
    if modules is None:
        owners = dict.fromkeys((t.module, t.module_type) for t in tensors)
        modules = [module_record(name, type) for name, type in owners]
    calls = list(calls) if calls is not None else [m.name for m in modules]
    outputs = dict(outputs or {})
    for m in modules:
        m.calls = sum(1 for name in calls if name in m.names)
        m.first_call = next((i for i, name in enumerate(calls) if name in m.names), None)
        m.output = outputs.get(m.name) if m.first_call is not None else None
    record: Dict[str, Any] = {
        "tensors": list(tensors), "modules": list(modules), "call_order": calls,
        "call_outputs": [outputs.get(name) for name in calls], "start_order": list(dict.fromkeys(calls)),
        "declared_ties": set(), "backward": False,
    }
    record.update(fields)
    return Recording(**record)


def run_rule(code: str, rec: Recording, options: Optional[Mapping[str, Any]] = None) -> List[Finding]:
    """The findings of the registered rule ``code`` on ``rec``, as the engine makes them."""
    return run_rules(rec, [load_rules()[code]], options)
