"""Preparing a model to be recorded: its tensors on the audit's device for the duration,
and lazy modules materialized by one forward; both leave the model as it was found."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, List

import torch
from torch import nn

from initaudit.record.state import preserved
from initaudit.record.walk import call_model


@contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Put the model's tensors on ``device`` for the body, then the very same tensors back.

    Parameters keep their identity (only ``.data`` is swapped) and get their original
    storage back, buffers are put back as the original objects, and ``.grad`` is not
    touched at all, so nothing is copied twice and nothing is lost.
    """
    swapped_params = []
    swapped_buffers = []
    seen = set()
    try:
        with torch.no_grad():
            for module in model.modules():
                for name, p in module._parameters.items():
                    if p is not None and p.device != device and id(p) not in seen:
                        seen.add(id(p))
                        swapped_params.append((p, p.data))
                        p.data = p.data.to(device)
                for name, b in module._buffers.items():
                    if b is not None and b.device != device:
                        swapped_buffers.append((module, name, b))
                        module._buffers[name] = b.to(device)
        yield
    finally:
        for p, data in swapped_params:
            p.data = data
        for module, name, b in swapped_buffers:
            module._buffers[name] = b


def materialize_lazy(model: nn.Module, example_input: Any) -> List[str]:
    """Run one forward without gradients to give lazy modules their shapes; say which."""
    lazy = [n for n, p in model.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)]
    if not lazy:
        return []
    with preserved(model), torch.no_grad():
        # eval: a lazy BatchNorm then starts from its own running statistics (zeros and ones)
        # instead of ones already moved by this forward, which nothing could undo
        model.eval()
        call_model(model, example_input)
    return [f"materialized {len(lazy)} lazy parameter(s) ({', '.join(lazy[:4])}{', ...' if len(lazy) > 4 else ''}) "
            "by a forward on the example input: their values are the lazy modules' own init"]
