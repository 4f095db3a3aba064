"""What a parameter's role in the dataflow makes of a zero or a constant, and which zero
weight a zero gradient comes from.

The recorder writes each parameter's use as the autograd graph shows it
(:mod:`initaudit.record.dataflow`: role, what its op feeds, whether that output is a
residual branch, the nearest weights downstream); this module reads it:

- :func:`deliberate_zero`: an all-zero tensor that is a known recipe, not a fault. A zero
  *addend* (a position embedding, a class token, a bias written as a tensor) is a neutral
  start: its gradient is the gradient of what it is added to, so it moves at step one. A
  zero last product of a *residual branch* (Fixup, ReZero, zero-init residual, ``zero_init_last``)
  or of a *LoRA* pair (B, Hu et al. 2021) starts the block as the identity or the base
  layer unchanged, and the stream carries the gradient to it. A zero *head* trains from
  the features at step one.
- :func:`gradient_roots`: a parameter whose first-step gradient is exactly zero because
  every product its output reaches next has an all-zero weight (LoRA's A under a zero B,
  the layers under a zeroed hidden layer) has that weight as its root cause, directly or
  through a chain of such parameters.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

from initaudit.core.records import Recording, TensorRecord

# why an all-zero tensor is deliberate, by pattern
ZERO_PATTERNS = {
    "residual": "the last layer of a residual branch (its output is added to a skip: Fixup, "
    "zero-init residual, ZerO)",
    "lora": "the B matrix of a LoRA pair (its product with A is added to a frozen base layer)",
    "head": "the model's output layer: a zero-initialized head is a known good practice (the "
    "first step trains it from the features)",
    "additive": "added to (or concatenated with) the activations, not multiplied: a zero "
    "addend is a neutral start (a position embedding, a class token), and its gradient is "
    "that of what it is added to, so it trains from the first step",
}

ADDITIVE_ROLES = ("offset", "token")
# roles whose elements do not combine inputs: a constant there is no symmetry between units
ELEMENTWISE_ROLES = ("scale", "offset", "token", "norm", "lookup")


def deliberate_zero(t: TensorRecord, recording: Recording, output_layer: Optional[str]) -> Optional[str]:
    """The :data:`ZERO_PATTERNS` key of an all-zero trainable ``t`` that is a recipe, or ``None``."""
    if not t.requires_grad:
        return None  # frozen at zero, it never contributes: no recipe does that
    if t.role in ADDITIVE_ROLES or (t.role == "lookup" and t.feeds == "add"):
        return "additive"  # a lookup table whose rows are added (a relative position bias)
    module = recording.module(t.module)
    branch = t.branch or (module.residual if module is not None else None)
    if branch in ("residual", "lora"):
        return branch
    if t.module == output_layer and t.module:
        return "head"
    return None


def gradient_roots(recording: Recording) -> Dict[str, str]:
    """``{parameter: the all-zero weight that zeroes its first-step gradient}`` for every
    trainable parameter whose gradient is exactly zero for that reason alone.

    ``p``'s gradient is ``dL/dy`` of its op's output chained back; when the nearest product on
    every path from there to the loss (``gradient_weights``) multiplies by an all-zero weight,
    ``dL/dy`` is zero whatever the loss. A downstream weight that is not zero but whose own gradient is
    zero for such a reason passes its root on (a zeroed hidden layer silences every layer below).
    """
    by_name = {name: t for t in recording.parameters for name in t.names}
    zero_grad = {t.name for t in recording.parameters
                 if t.grad is not None and t.grad.norm == 0 and not t.grad.nonfinite}
    found: Dict[str, Optional[str]] = {}

    def root(name: str) -> Optional[str]:
        if name in found:
            return found[name]
        found[name] = None  # a cycle explains nothing
        t = by_name[name]
        if not t.gradient_weights:
            return None
        direct: List[str] = []
        passed: List[str] = []
        for weight in t.gradient_weights:
            w = by_name.get(weight)
            if w is None:
                return None
            if w.zero_fraction == 1.0:
                direct.append(w.name)
            elif w.name in zero_grad and root(w.name) is not None:
                passed.append(root(w.name) or "")
            else:
                return None
        found[name] = (direct + passed)[0]  # a zero weight on its own paths first
        return found[name]

    roots = {t.name: root(t.name) for t in recording.parameters if t.name in zero_grad}
    # the other way: a product's weight gets no gradient when its input is zero, which an
    # all-zero product right before it with nothing added makes so (LoRA's B when A is zero)
    feeders: Dict[str, str] = {}
    for t in recording.parameters:
        if t.zero_fraction == 1.0 and t.role == "mixing" and len(t.next_weights) == 1 and not _has_bias(recording, t):
            feeders.setdefault(t.next_weights[0], t.name)
    for name, r in roots.items():
        if r is None and by_name[name].role == "mixing" and name in feeders:
            roots[name] = feeders[name]
    return {name: r for name, r in roots.items() if r is not None}


def stuck(recording: Recording) -> List[str]:
    """Trainable parameters whose gradient is exactly zero at the first step and is not known to
    be anything else later (the look-ahead, ``record.lookahead``, found it zero at every step it
    took, or did not run): what no optimizer will move."""
    return [t.name for t in recording.parameters
            if t.grad is not None and t.grad.norm == 0 and not t.grad.nonfinite and not moves_later(t)]


def moves_later(t: TensorRecord) -> bool:
    """Whether ``t``'s first-step gradient is exactly zero and the look-ahead found a later step
    whose gradient is not: something it depends on moved first."""
    return t.grad is not None and t.grad.norm == 0 and bool(t.moves_at_step)


def moves_away(recording: Recording, name: str) -> bool:
    """Whether the all-zero weight ``name`` leaves zero at step 1 (its own first-step gradient is
    not zero) and nothing in the model stays stuck after it (:func:`stuck`): what it silences
    at init, a vanished signal or dead units right after it, lasts one step."""
    t = next((p for p in recording.parameters if p.name == name), None)
    return (t is not None and t.grad is not None and t.grad.norm > 0 and math.isfinite(t.grad.norm)
            and not stuck(recording))


def _has_bias(recording: Recording, t: TensorRecord) -> bool:
    """Whether ``t``'s module adds a bias that is not all zero to its product."""
    return any(b.module == t.module and b.attr == "bias" and b.zero_fraction != 1.0 for b in recording.parameters)


def inside_branch(recording: Recording, call: int) -> bool:
    """Whether module call ``call``'s output only ever ends up summed into a stream as a
    residual branch, through any normalization on the way (``record.dataflow``)."""
    reaches = recording.call_reaches
    return call < len(reaches) and reaches[call] == "branch"


def main_path(recording: Recording, call: int) -> bool:
    """Whether module call ``call``'s output carries the model's signal (``record.dataflow``):
    not inside a residual branch, and not rescaled, gated or attended right away (a normalization
    next, a squeeze-excite or GLU gate, attention's scores). ``True`` where the graph was not
    read (no backward), so that the rules judge as before."""
    if not recording.call_reaches:
        return True
    if call >= len(recording.call_reaches) or recording.call_reaches[call] is None:
        return False  # no gradient path: it takes no part in training
    if inside_branch(recording, call):
        return False
    return call >= len(recording.call_feeds) or recording.call_feeds[call] not in ("norm", "gate", "attention")
