"""The model as handed in: unwrapped from ``torch.compile`` and data-parallel wrappers, its
device resolved, and its tensors checked to hold values on one device."""

from __future__ import annotations

from typing import List, Tuple, Union

import torch
from torch import nn

from initaudit.core.errors import InputError
from initaudit.load import inputs


def resolve_device(device: Union[str, torch.device, None], model: nn.Module) -> torch.device:
    """``None``: where the model is; ``"auto"``: cuda if available, else cpu; else as given."""
    if device is None:
        return inputs.model_device(model)
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested, but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r} requested, but there are {torch.cuda.device_count()} CUDA device(s)")
    return dev


def unwrap(model: nn.Module) -> Tuple[nn.Module, List[str]]:
    """The model inside ``torch.compile``, ``DataParallel`` and ``DistributedDataParallel``
    wrappers, so that names read as the user wrote them (no ``_orig_mod.``, no ``module.``)."""
    notes = []
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            notes.append("audited the module inside torch.compile (its original, uncompiled forward)")
            model = inner
            continue
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            notes.append(f"audited the module inside {type(model).__name__}")
            model = model.module
            continue
        return model, notes


def check_devices(model: nn.Module, device: Union[str, torch.device, None]) -> None:
    """Meta tensors hold no values; a model on two devices needs ``device=`` to be audited."""
    tensors = list(model.parameters()) + list(model.buffers())
    meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if meta:
        raise InputError(
            f"parameter '{meta[0]}' (and {len(meta) - 1} more) is on the meta device and holds no values: "
            "materialize the model first, e.g. model.to_empty(device='cpu') and then initialize it"
        )
    devices = sorted({str(t.device) for t in tensors})
    if len(devices) > 1 and device is None:
        raise InputError(
            f"the model is spread over {' and '.join(devices)}: audit it on one device "
            "(--device, or audit(..., device=...))"
        )
