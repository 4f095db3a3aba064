"""The loss of the audit's step and the probe of the input-output Jacobian."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from initaudit.core.errors import ForwardError, describe, user_frame
from initaudit.record.walk import floating_tensors

LossFn = Callable[[Any, Any], torch.Tensor]


def random_projection_loss(output: Any, seed: int) -> Optional[torch.Tensor]:
    """``sum_t (t * r_t).sum()`` over the output's floating tensors, ``r_t ~ N(0, 1/numel(t))``.

    A fixed random readout: its gradient with respect to the output is ``r``, an isotropic
    probe, so first-step gradients measure the network's Jacobian rather than an invented
    target. ``out.sum()`` would not do: its gradient is all ones, which a softmax or a
    normalization maps to exactly zero. Seeded with its own generator so that no global
    RNG is consumed. ``None`` when no floating output requires a gradient.
    """
    total = None
    generators: Dict[torch.device, torch.Generator] = {}
    for t in floating_tensors(output):
        if not t.requires_grad or t.numel() == 0 or t.is_complex():
            continue
        gen = generators.get(t.device)
        if gen is None:
            gen = torch.Generator(device=t.device)
            gen.manual_seed(seed)
            generators[t.device] = gen
        r = torch.randn(t.shape, generator=gen, device=t.device, dtype=torch.float32)
        r = r.div_(math.sqrt(t.numel())).to(t.dtype)
        # a dot product, not (t * r).sum(): no product tensor the size of the output (a language
        # model's logits: 4 x 64 x 50257 floats, 60 ms of a 2 s audit on two cores for the two)
        term = torch.dot(t.reshape(-1), r.reshape(-1)).float()
        total = term if total is None else total + term
    return total


def compute_loss(output: Any, example_input: Any, loss: Optional[LossFn], seed: int) -> Optional[torch.Tensor]:
    try:
        value = loss(output, example_input) if loss else random_projection_loss(output, seed)
    except Exception as exc:
        raise ForwardError(f"the loss function failed: {describe(exc)}", user_frame(exc)) from exc
    if value is not None and not (isinstance(value, torch.Tensor) and value.numel() == 1):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ""
        raise ForwardError(f"the loss function returned {type(value).__name__}{shape}, expected a scalar tensor")
    return value


def zeroed(output: Any) -> Any:
    """``output`` with its prediction all zeros: a floating tensor's zeros, or a dict's (a Hugging
    Face ``ModelOutput``'s) copy with its ``logits`` zeroed (a regression head's one column;
    the rest, the model's own ``loss`` among it, as it was). ``None`` for anything else."""
    if isinstance(output, torch.Tensor):
        return torch.zeros_like(output) if output.is_floating_point() else None
    logits = output.get("logits") if isinstance(output, dict) else None
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        return None
    try:
        return type(output)(**{k: torch.zeros_like(v) if k == "logits" else v for k, v in output.items()})
    except TypeError:  # a dict subclass that does not take its items as keywords
        return {**output, "logits": torch.zeros_like(logits)}


def zero_output_loss(output: Any, example_input: Any, loss: Optional[LossFn]) -> Optional[torch.Tensor]:
    """``loss(0, x)``: the user's loss of a model whose output is all zeros (:func:`zeroed`), a
    float64 one-element tensor on its device, or ``None`` where the output has no prediction to zero.

    It is what a loss at init is measured against when the output is not read as logits: for
    a squared error, the targets' mean square ``E[y^2]`` (a model that has learnt nothing and
    outputs zero scores that); for a cross-entropy, ``ln C``. No forward: the loss alone, on a
    tensor of zeros shaped like the output, without a graph.
    """
    zeros = zeroed(output) if loss is not None else None
    if zeros is None:
        return None
    try:
        with torch.no_grad():
            value = loss(zeros, example_input)
    except Exception:  # a loss that needs more of the output than its values: nothing to compare with
        return None
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point():
        return None
    return value.detach().reshape(1).double()


def probe_input(example_input: Any) -> Tuple[Any, List[torch.Tensor]]:
    """The input with each floating tensor replaced by a detached copy that requires grad.

    The backward then also yields ``J^T r``, the Jacobian's action on the loss's random
    projection, at no extra cost; the user's own tensors are not touched.
    """
    leaves: List[torch.Tensor] = []

    def swap(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and obj.numel():
                leaf = obj.detach().requires_grad_(True)
                leaves.append(leaf)
                return leaf
            return obj
        if isinstance(obj, tuple):
            return tuple(swap(v) for v in obj)
        if isinstance(obj, list):
            return [swap(v) for v in obj]
        if isinstance(obj, dict):
            return {k: swap(v) for k, v in obj.items()}
        return obj

    return swap(example_input), leaves


def jacobian_gain(output: Any, input_grads: List[Optional[torch.Tensor]], input_numel: int) -> Tuple[Optional[torch.Tensor], Optional[str]]:
    """``tr(J^T J) / min(m, n)`` from one Hutchinson probe, or ``(None, why)``.

    With ``r ~ N(0, I/m)`` over the ``m`` output elements, ``E||J^T r||^2 = tr(J J^T) / m``,
    so ``tr(J^T J) = m ||J^T r||^2``. Divided by ``min(m, n)`` it is 1 when every singular
    value of the input-output Jacobian is 1 (dynamical isometry, Pennington et al. 2017),
    also for a Jacobian that is not square, where ``E||J v||^2 / E||v||^2`` is not.
    """
    outputs = [t for t in floating_tensors(output) if t.requires_grad and t.numel() and not t.is_complex()]
    if input_numel == 0:
        return None, "the input has no floating tensor (e.g. token ids)"
    if len(outputs) != 1:
        return None, f"the output has {len(outputs)} differentiable tensors, not one"
    grads = [g for g in input_grads if g is not None]
    if not grads:
        return None, "the output does not depend on the input"
    m = outputs[0].numel()
    squared = sum(g.detach().double().square().sum() for g in grads)
    return squared * m / min(m, input_numel), None
