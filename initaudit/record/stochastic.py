"""Stochastic regularizers, run deterministically for the audit.

The audit's forward runs in training mode (a first training step: normalization uses the
batch's statistics), which also makes dropout, drop-path (stochastic depth) and similar
modules sample masks. With a small batch a mask can drop a whole residual block for every
example, and its parameters' first-step gradient is then exactly zero under one seed and not
under another: a finding that depends on the seed is noise. So those modules run as in
evaluation mode (the identity, for inverted dropout and drop-path), while everything else
stays in training mode:

- every ``nn.Dropout*`` and ``nn.AlphaDropout`` / ``nn.FeatureAlphaDropout`` (subclasses of
  ``torch.nn.modules.dropout._DropoutNd``), switched off before the forward;
- any other module found stochastic by behaviour, not by name (the drop-path modules of
  Hugging Face, timm and others): a leaf module without parameters or buffers whose output,
  at its first call, changes between two training-mode calls on the same input. The input
  is repeated along its first dimension up to :data:`PROBE_ROWS` rows for the test, so that
  a per-example mask (drop-path drops whole examples) is all but certain to differ between
  the two calls even for a batch of one or two. Found stochastic, its output is replaced by
  its evaluation-mode output and it stays in evaluation mode for the rest of the audit. The
  test is made once per kind of module, its class and its plain attributes (:func:`kind_of`):
  a library's activation module used in every block (GPT-2's ``NewGELUActivation``) is
  tested at its first call and the verdict holds for the others, while drop-path modules of
  different rates (stochastic depth's rate grows with the depth, from 0) are each tested.

The modules' training flags are the caller's :func:`~initaudit.record.state.preserved`
block's to restore. Dropout written as a function inside a module with parameters (an
attention's ``F.dropout`` on its weights) cannot be switched off alone; its masks remain.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from initaudit.core import knowledge

PROBE_ROWS = 64  # rows of the repeated input a behavioural test draws masks for
PROBE_ELEMENTS = 1 << 22  # ... unless that would exceed this many elements


def _is_candidate(module: nn.Module) -> bool:
    """A leaf module with no parameters and no buffers of its own that torch's own classes do
    not already name (activations, pooling, reshapes are deterministic): one that can only be
    stochastic through the RNG, such as a library's drop-path."""
    return (training_leaf(module) and knowledge.classify(module)[0] == knowledge.OTHER
            and not any(True for _ in module.parameters(recurse=False))
            and not any(True for _ in module.buffers(recurse=False)))


def training_leaf(module: nn.Module) -> bool:
    return module.training and not any(True for _ in module.children())


def _repeated(x: torch.Tensor) -> torch.Tensor:
    rows = max(x.shape[0], 1) if x.dim() else 1
    times = max(1, min(PROBE_ROWS // rows, PROBE_ELEMENTS // max(x.numel(), 1)))
    return x.repeat(times, *([1] * (x.dim() - 1))) if x.dim() else x


def kind_of(module: nn.Module) -> Any:
    """``(class, its public attributes)``: modules alike in both compute alike, so one behavioural
    test decides for all of them. A plain attribute (a drop rate) counts by value, any other (a
    tensor, a config object) by identity: two modules holding different objects are two kinds."""
    plain = (bool, int, float, str, type(None))
    return type(module), tuple(sorted((k, v if isinstance(v, plain) else ("id", id(v)))
                                      for k, v in vars(module).items() if not k.startswith("_")))


class Deterministic:
    """Switches the stochastic regularizers of a model off for the audit (see the module
    docstring). ``attach()`` before the forward, ``detach()`` after it; ``names`` lists the
    modules run deterministically."""

    def __init__(self, model: nn.Module, module_names: Any) -> None:
        self.model = model
        self.names_of = {key: names for key, (_, names) in module_names.items()}
        self.names: List[str] = []
        self.handles: List[Any] = []
        self.tested: set = set()
        self.verdicts: Dict[Any, bool] = {}  # kind_of(module) -> found stochastic

    def attach(self) -> None:
        for module in self.model.modules():
            if isinstance(module, torch.jit.ScriptModule):
                continue  # TorchScript takes no Python hooks, nor a changed flag
            if isinstance(module, _DropoutNd) and module.training and module.p > 0:
                module.train(False)
                self._found(module)
            elif _is_candidate(module) and not isinstance(module, _DropoutNd):
                self.handles.append(module.register_forward_hook(self._test, prepend=True))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _found(self, module: nn.Module) -> None:
        names = self.names_of.get(id(module))
        if names:
            self.names.append(names[0])

    def _test(self, module: nn.Module, args: Any, output: Any) -> Any:
        if id(module) in self.tested:
            return None
        self.tested.add(id(module))
        if not (len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor)
                and args[0].is_floating_point() and args[0].numel()):
            return None
        kind = kind_of(module)
        if kind not in self.verdicts:
            with torch.no_grad():
                probe = _repeated(args[0].detach())
                self.verdicts[kind] = not torch.equal(module.forward(probe), module.forward(probe))
        if not self.verdicts[kind]:
            return None
        module.train(False)
        self._found(module)
        return module.forward(*args)
