"""Small helpers on a model: how it is called, how its tensors and modules are named,
and the floating tensors of an output.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Iterator, List, Tuple

import torch
from torch import nn


def floating_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every floating tensor in an output: a tensor, a tuple/list, a dict, a dataclass.

    ``ModelOutput`` of Hugging Face is an ``OrderedDict`` and a dataclass; it is walked as a
    dict so that each tensor is seen once.
    """
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from floating_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from floating_tensors(value)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from floating_tensors(getattr(obj, f.name))


def names_by_id(items: Iterator[Tuple[str, Any]]) -> "OrderedDict[int, Tuple[Any, List[str]]]":
    """``{id(obj): (obj, [every name it is reachable under])}`` in first-seen order (tied
    parameters and shared modules are one entry with several names)."""
    by_id: "OrderedDict[int, Tuple[Any, List[str]]]" = OrderedDict()
    for name, obj in items:
        if obj is None:
            continue
        by_id.setdefault(id(obj), (obj, []))[1].append(name)
    return by_id


def owner_and_attr(name: str) -> Tuple[str, str]:
    module, _, attr = name.rpartition(".")
    return module, attr


def call_model(model: nn.Module, example_input: Any) -> Any:
    """``model(x)``, ``model(*x)`` for a tuple, ``model(**x)`` for a dict."""
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)
