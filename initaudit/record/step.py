"""The first optimizer steps, taken with the user's optimizer and then undone.

The audit's loss on the example batch, ``steps`` times: gradients by ``torch.autograd.grad``
(never accumulated into a ``.grad`` the user holds), set as each parameter's ``.grad`` for
the optimizer's ``step()``. What it records:

- the loss before each step and after the last, ``[L_0, L_1, ..., L_steps]``;
- per trainable parameter, the relative update ``||W_steps - W_0|| / ||W_0||`` (the
  update-to-weight ratio of CS231n's rule of thumb, about 1e-3 per step).

Afterwards the parameters' values are copied back (only the trainable ones change, so only
they are saved, in host memory), and the optimizer's state is restored from its
``state_dict`` (also saved in host memory); buffers,
training flags, ``.grad`` references and the RNGs are the caller's :func:`preserved` block's.
"""

from __future__ import annotations

import ast
import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from initaudit.core import knowledge
from initaudit.record import distributed
from initaudit.record.distributed import local
from initaudit.record.backward import has_custom_function
from initaudit.record.probe import LossFn, compute_loss
from initaudit.record.walk import call_model

OptimizerSpec = Union[torch.optim.Optimizer, Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer], str]


@dataclass
class StepRecord:
    losses: List[float]  # before each step, then after the last
    updates: Dict[str, float]  # parameter name -> ||W_after - W_before|| / ||W_before||
    optimizer: str  # what took the steps, in words
    own_loss: bool  # the user's loss (else the audit's random projection, unbounded below)
    # with watch: module name -> RMS of its output's change over the steps, on the batch
    output_changes: Optional[Dict[str, float]] = None


def parse_optimizer(spec: str) -> Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]:
    """``"AdamW(lr=3e-4, weight_decay=0.1)"`` -> a function of the parameters that builds it:
    a class of ``torch.optim`` with literal keyword arguments (nothing is evaluated)."""
    try:
        tree = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"--optimizer {spec!r}: not a call like AdamW(lr=3e-4) ({exc.msg})") from None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, (ast.Name, ast.Attribute))) or tree.args:
        raise ValueError(f"--optimizer {spec!r}: expected a torch.optim class called with keyword arguments, "
                         "e.g. AdamW(lr=3e-4, weight_decay=0.1)")
    name = tree.func.id if isinstance(tree.func, ast.Name) else tree.func.attr
    cls = getattr(torch.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"--optimizer {spec!r}: torch.optim has no optimizer {name!r}")
    try:
        kwargs = {k.arg: ast.literal_eval(k.value) for k in tree.keywords if k.arg is not None}
    except ValueError:
        raise ValueError(f"--optimizer {spec!r}: keyword arguments must be literals") from None
    if len(kwargs) != len(tree.keywords):
        raise ValueError(f"--optimizer {spec!r}: keyword arguments must be named")

    def build(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return cls(params, **kwargs)

    build.__name__ = spec.strip()
    return build


def _host(values: List[torch.Tensor]) -> List[Any]:
    """``[v.tolist() for v in values]`` with one transfer per device."""
    by_device: Dict[torch.device, List[int]] = {}
    for i, v in enumerate(values):
        by_device.setdefault(v.device, []).append(i)
    out: List[Any] = [None] * len(values)
    for indices in by_device.values():
        flat = torch.cat([values[i].reshape(-1) for i in indices]).tolist()
        at = 0
        for i in indices:
            n = values[i].numel()
            out[i] = flat[at] if values[i].dim() == 0 else flat[at:at + n]
            at += n
    return out


def _on_host(obj: Any) -> Any:
    """A deep copy of an optimizer's ``state_dict`` with its tensors in host memory."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _on_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_host(v) for v in obj)
    return copy.deepcopy(obj)


def _watch(model: nn.Module, names: List[str], seen: Dict[str, List[torch.Tensor]]) -> List[Any]:
    """Forward hooks that append a copy of each named module's tensor output to ``seen`` (a
    copy: an in-place activation after it would change it)."""
    hooks = []
    for name in names:
        def keep(_m: nn.Module, _args: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor):
                seen.setdefault(name, []).append(out.detach().clone())

        hooks.append(model.get_submodule(name).register_forward_hook(keep))
    return hooks


def first_steps(model: nn.Module, example_input: Any, loss: Optional[LossFn], seed: int,
                optimizer: OptimizerSpec, steps: int = 1, watch: Optional[List[str]] = None) -> StepRecord:
    """Take ``steps`` optimizer steps on the example batch (see the module docstring), record
    them, and undo them. ``optimizer`` is an optimizer over the model's parameters (stepped and
    restored), a function of the parameters that builds one, or a :func:`parse_optimizer` spec.
    With ``watch`` (module names), also the RMS of each one's output change over the steps,
    ``sqrt(mean((y_after - y_before)^2))`` on the batch: the coordinate check's update size."""
    named = {}
    ids = set()
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in ids:
            named[name] = p
            ids.add(id(p))
    # kept in host memory: the device holds no second copy of the model (nor of the optimizer's state);
    # of a sharded parameter (a DTensor) each rank keeps and restores its own piece
    saved = {name: local(p).detach().to("cpu", copy=True) for name, p in named.items()}
    if isinstance(optimizer, str):
        optimizer = parse_optimizer(optimizer)
    owned = not isinstance(optimizer, torch.optim.Optimizer)
    opt = optimizer(list(named.values())) if owned else optimizer
    state = None if owned else _on_host(opt.state_dict())
    what = getattr(optimizer, "__name__", None) if owned else None
    what = what or type(opt).__name__
    losses: List[float] = []
    seen: Dict[str, List[torch.Tensor]] = {}
    hooks = _watch(model, watch or [], seen)
    try:
        # in the modes the caller set: training mode, its stochastic regularizers off (record.stochastic)
        params = list(named.values())
        sharded = any(distributed.is_sharded(p) for p in params)
        for step in range(steps):
            if step == 1:
                for hook in hooks:  # the first forward and the last one are compared
                    hook.remove()
            value = compute_loss(call_model(model, example_input), example_input, loss, seed)
            losses.append(float(value.detach()))
            if sharded or has_custom_function(value):
                # FSDP2 reduce-scatters into .grad in hooks autograd.grad does not run; a custom
                # autograd Function may accumulate .grad in its own backward
                for p in params:
                    p.grad = None
                value.reshape(()).backward()
            else:
                grads = torch.autograd.grad(value, params, allow_unused=True)
                for p, g in zip(params, grads):
                    p.grad = g if g is not None else None
            opt.step()
        if steps > 1:
            hooks += _watch(model, watch or [], seen)
        losses.append(float(compute_loss(call_model(model, example_input), example_input, loss, seed).detach()))
        for module in model.modules():
            if knowledge.is_fsdp_module(module):
                module.reshard()  # FSDP2's root leaves its parameters unsharded after a forward with no backward
        compared = [name for name, outs in seen.items() if len(outs) >= 2 and outs[0].shape == outs[-1].shape]
        changes = dict(zip(compared, _host([(seen[n][-1].double() - seen[n][0].double()).pow(2).mean().sqrt()
                                            for n in compared])))
        with torch.no_grad():
            # the two squared norms of every parameter, brought to the host together (one transfer
            # per device); a sharded one's are its pieces', added across its ranks (one all_reduce
            # per group of shards)
            squares, pieces = [], distributed.Partials()
            for name, p in named.items():
                here = local(p).detach()
                start = saved[name].to(here.device).double()
                pair = torch.stack([start.pow(2).sum(), (here.double() - start).pow(2).sum()])
                if distributed.is_sharded(p):
                    pieces.add(name, p, pair, torch.zeros(0, dtype=torch.float64, device=pair.device))
                squares.append(pair)
            combined = {key: sums for key, (sums, _) in pieces.resolve().items()}
            updates = {}
            for name, pair in zip(named, _host(squares)):
                before, change = (math.sqrt(v) for v in combined.get(name, pair))
                updates[name] = change / before if before > 0 else (math.inf if change > 0 else 0.0)
    finally:
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            for name, p in named.items():
                local(p).copy_(saved[name])
        if state is not None:
            opt.load_state_dict(state)  # casts each state tensor back to its parameter's device
    return StepRecord(losses, updates, what, loss is not None, changes if watch else None)
