"""Capture and restore everything an audit's forward could disturb.

A training-mode forward updates BatchNorm running statistics, Dropout draws from the
global RNG, and ``model.train()`` flips every module's flag. An audit without ``--fix``
must leave all of that exactly as it found it, also when the forward raises.
"""

from __future__ import annotations

import random
import sys
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.parameter import is_lazy


class RNGState:
    """torch CPU and (initialized) CUDA generators, Python's ``random``, NumPy's if imported."""

    def __init__(self) -> None:
        self.torch_cpu = torch.get_rng_state()
        self.cuda: Optional[List[torch.Tensor]] = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.cuda = torch.cuda.get_rng_state_all()
        self.python = random.getstate()
        self.numpy: Any = None
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            self.numpy = numpy.random.get_state()

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        random.setstate(self.python)
        if self.numpy is not None:
            sys.modules["numpy"].random.set_state(self.numpy)


def seed_torch(seed: int) -> None:
    """Seed torch's CPU generator, and CUDA's only if CUDA is already initialized.

    ``torch.manual_seed`` would otherwise queue a seed for CUDA's lazy initialization,
    which would change the user's CUDA generator after the audit has restored it.
    """
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


class ModelState:
    """Training flags, buffer values and ``.grad`` references of a model, plus RNG state."""

    def __init__(self, model: nn.Module) -> None:
        self.training: List[Tuple[nn.Module, bool]] = [(m, m.training) for m in model.modules()]
        # a lazy module's uninitialized tensors hold nothing to save yet (and refuse to be read)
        self.buffers: List[Tuple[torch.Tensor, torch.Tensor]] = [
            (b, b.detach().clone()) for b in _unique(model.buffers()) if not is_lazy(b)
        ]
        self.grads: List[Tuple[nn.Parameter, Optional[torch.Tensor]]] = [
            (p, p.grad) for p in _unique(model.parameters()) if not is_lazy(p)
        ]
        self.requires_grad: List[Tuple[nn.Parameter, bool]] = [
            (p, p.requires_grad) for p, _ in self.grads
        ]
        self.rng = RNGState()

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, saved in self.buffers:
                if buffer.shape == saved.shape and buffer.device == saved.device:
                    buffer.copy_(saved)
        for module, training in self.training:
            module.training = training
        for param, grad in self.grads:
            if param.grad is not grad:
                param.grad = grad
        for param, flag in self.requires_grad:
            if param.requires_grad != flag:
                param.requires_grad_(flag)
        self.rng.restore()


def _unique(tensors: Iterator[torch.Tensor]) -> List[torch.Tensor]:
    seen: Dict[int, torch.Tensor] = {}
    for t in tensors:
        seen.setdefault(id(t), t)
    return list(seen.values())


@contextmanager
def preserved(model: nn.Module) -> Iterator[ModelState]:
    """Run the body, then put the model and the RNGs back as they were, whatever happens."""
    state = ModelState(model)
    try:
        yield state
    finally:
        state.restore()
