"""Forward hooks on every module: call order, and each first output reduced to statistics."""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from initaudit.core import knowledge
from initaudit.core.errors import ForwardError, describe, user_frame
from initaudit.record import factored, moments, transfer
from initaudit.record.walk import call_model, floating_tensors


class CallOutput(NamedTuple):
    """A module call's floating output: its shape and dtype, the nonlinearity of the
    activation that made it (``None`` for other modules), and its moments once on the host."""

    shape: Tuple[int, ...]
    dtype: str
    nonlinearity: Optional[str]
    values: transfer.CallValues


class CallRecorder:
    """Forward hooks on every module: call order, and the first output of each as statistics.

    A hook reduces the output to a few numbers on its device at once and keeps no
    reference to the tensor. Pre-hooks keep the stack of modules whose forward is running,
    so that a failing forward can be blamed on the innermost one.
    """

    def __init__(
        self,
        module_names: "OrderedDict[int, Tuple[Any, List[str]]]",
        deferred: transfer.Deferred,
        linear_grads: Optional[factored.LinearGradients] = None,
    ) -> None:
        self.module_names = module_names
        self.deferred = deferred
        self.moments = moments.OutputMoments(deferred)  # outputs' moments, small ones in batches
        self.linear_grads = linear_grads  # the input side of linear layers' weight gradients
        self.calls: List[str] = []
        self.counts: Dict[int, int] = {}
        self.first_call: Dict[int, int] = {}
        self.started: Dict[int, int] = {}  # order in which modules first started their forward
        self.call_outputs: List[Optional[CallOutput]] = []  # by call index; None: no floating output
        # by call index: the autograd node that made the output (None: none), for record.dataflow;
        # dropped once read, before the backward
        self.output_nodes: List[Any] = []
        # average pooling divides the Jacobian's squared norm by the window: undo it in the gain
        self.pooling = 1.0
        self.running: List[int] = []
        # the parameters each module holds while its forward runs, by id: (module key, attribute).
        # They are the model's own, except under FSDP2, which swaps in unsharded ones for the call
        self.forward_parameters: Dict[int, Tuple[int, str]] = {}
        self.handles: List[Any] = []
        self.scripted = False
        # nonlinearity of each activation module, whose outputs also get dead/saturated counts
        self.nonlinearity: Dict[int, str] = {}
        # the last output reduced, as (weak reference, version, handle of its queued moments),
        # so that a container passing on its last child's output unchanged does not reduce it again
        self.last_output: Optional[Tuple[Any, int, torch.Tensor]] = None
        for key, (module, _) in module_names.items():
            kind, act = knowledge.classify(module)
            if kind == knowledge.ACTIVATION and act is not None:
                self.nonlinearity[key] = act.name

    def attach(self) -> None:
        for module, _ in self.module_names.values():
            if isinstance(module, torch.jit.ScriptModule):
                self.scripted = True  # TorchScript takes no Python hooks
                continue
            self.handles.append(module.register_forward_pre_hook(self._pre))
            self.handles.append(module.register_forward_hook(self._post))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.moments.flush()

    def _pre(self, module: nn.Module, args: Any) -> None:
        self.running.append(id(module))
        self.started.setdefault(id(module), len(self.started))
        for attr, p in module._parameters.items():
            if p is not None:
                self.forward_parameters.setdefault(id(p), (id(module), attr))

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        key = id(module)
        if self.running and self.running[-1] == key:
            self.running.pop()
        self.counts[key] = self.counts.get(key, 0) + 1
        index = len(self.calls)
        self.calls.append(self.module_names[key][1][0])
        self.first_call.setdefault(key, index)
        if self.linear_grads is not None:
            self.linear_grads.on_call(module, args, output)
        out = next((t for t in floating_tensors(output) if not t.is_complex()), None)
        self.output_nodes.append(out.grad_fn if out is not None else None)
        if out is None:
            self.call_outputs.append(None)
            return
        if isinstance(module, knowledge.AVERAGE_POOL_TYPES):
            first = next(floating_tensors(args), None)
            if first is not None and out.numel():
                self.pooling *= first.numel() / out.numel()
        nonlinearity = self.nonlinearity.get(key)
        call = CallOutput(tuple(out.shape), str(out.dtype).replace("torch.", ""), nonlinearity, transfer.CallValues())
        self.call_outputs.append(call)
        slot = transfer.Slot(call.values, "moments")
        identity = _identity(out)
        last = self.last_output
        # compared by identity: weak references to tensors compare their values
        if nonlinearity is None and identity is not None and last is not None and last[0]() is out \
                and last[1] == identity[1]:
            handle = last[2]  # the same tensor, unchanged since: its moments lead the row already queued
            self.moments.alias(handle, slot)
        else:
            handle = self.moments.add(slot, out, nonlinearity)
        self.last_output = (*identity, handle) if identity is not None else None

    def failing_module(self) -> str:
        """`` in module 'name' (Type)`` for the innermost module still running, or ``""``."""
        if not self.running:
            return ""
        module, names = self.module_names[self.running[-1]]
        return f" in module '{names[0]}' ({knowledge.type_name(module)})" if names[0] else ""


def _identity(t: torch.Tensor) -> Optional[Tuple[Any, int]]:
    """``(weak reference, version counter)`` of ``t``: the same object with the same version
    has not changed in place since. ``None`` where either is missing (an inference-mode
    tensor keeps no version; an unusual subclass may refuse weak references)."""
    try:
        return weakref.ref(t), t._version
    except (RuntimeError, TypeError):
        return None


def forward_with_hooks(model: nn.Module, example_input: Any, recorder: CallRecorder) -> Any:
    recorder.attach()
    try:
        return call_model(model, example_input)
    except Exception as exc:
        raise ForwardError(
            f"forward of {type(model).__name__} failed{recorder.failing_module()}: {describe(exc)}",
            user_frame(exc),
        ) from exc
    finally:
        recorder.detach()
