"""Rules on the first training step's gradients."""

from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Tuple

from initaudit.analysis.graph import forward_layers, split_at_average_pools
from initaudit.analysis.roles import deliberate_zero, gradient_roots, main_path, moves_later
from initaudit.core.records import Recording, TensorRecord
from initaudit.rules.builtin.values import is_norm_gain
from initaudit.rules.registry import RuleContext, Violation, rule


@rule(
    "IA301",
    "no-gradient",
    "error",
    "A trainable parameter received no gradient in the first backward.",
    needs="backward",
    fix="none",
    why_no_fix="the forward must use the parameter (or it should be frozen or removed)",
)
def no_gradient(ctx: RuleContext) -> Iterator[Violation]:
    rec = ctx.recording
    called = set(rec.call_order)
    for t in rec.parameters:
        if t.grad_status != "none":
            continue
        if t.module not in called and t.module != "":
            why = f"its module '{t.module}' ({t.module_type}) is never called by the forward"
        else:
            why = "the loss does not depend on it (its path is detached, or its output is unused)"
        yield Violation(
            t.name,
            f"trainable parameter '{t.name}' got no gradient in the first backward: {why}; "
            "the optimizer will never update it",
            fix=None,
            locations=t.names,
        )


def normalized_away(rec: Recording) -> List[TensorRecord]:
    """The trainable offsets (biases) whose op's output goes straight into a batch normalization
    (``normalized_by``, from the autograd graph): BatchNorm in training mode and InstanceNorm
    subtract each channel's mean, which removes a per-channel constant exactly, so the offset's
    gradient is zero in exact arithmetic and about 1e-8 of its neighbours' in float32."""
    return [t for t in rec.parameters if t.normalized_by and t.role == "offset" and t.requires_grad
            and t.grad is not None and not t.grad.nonfinite]


# a bias's gradient is the sum of its output's gradient over rows and positions; when what
# follows removes a constant (a softmax over positions, a mean subtracted), that sum cancels to
# float32 rounding, about 1e-8 of the weight's gradient: 2^-16 leaves a hundredfold margin above
# rounding and is far below any bias that trains (its gradient is of the order of its weight's)
CANCELLED = 2.0 ** -16


def cancelling(rec: Recording) -> List[TensorRecord]:
    """The trainable offsets whose first-step gradient is at most :data:`CANCELLED` times the
    gradient norm of a weight of their own module, which is not zero: the module's output gets
    a gradient, and its sum over the rows (the offset's) cancels."""
    weights: Dict[str, float] = {}
    for t in rec.parameters:
        if t.ndim >= 2 and t.grad is not None and not t.grad.nonfinite:
            weights[t.module] = max(weights.get(t.module, 0.0), t.grad.norm)
    return [t for t in rec.parameters if t.role == "offset" and t.requires_grad and t.grad is not None
            and not t.grad.nonfinite and weights.get(t.module, 0.0) > 0
            and t.grad.norm <= CANCELLED * weights[t.module]]


def _norm_module(rec: Recording, t: TensorRecord) -> Optional[str]:
    """The first normalization module called after ``t``'s module (for the message)."""
    order = rec.call_order
    if t.module not in order:
        return None
    for name in order[order.index(t.module) + 1:]:
        module = rec.module(name)
        if module is not None and module.kind == "norm":
            return name
    return None


@rule(
    "IA303",
    "non-finite-gradient",
    "error",
    "A first-step gradient holds NaN or Inf.",
    needs="backward",
    fix="none",
    why_no_fix="follows from the forward's arithmetic; fix the values that produce it",
)
def non_finite_gradient(ctx: RuleContext) -> Iterator[Violation]:
    for t in ctx.recording.parameters:
        if t.grad is None or not t.grad.nonfinite:
            continue
        yield Violation(
            t.name,
            f"first-step gradient of '{t.name}' holds {t.grad.nonfinite:,} NaN or Inf value(s) "
            f"out of {t.numel:,}: the first optimizer step would write them into the weights",
            fix=None,
            locations=t.names,
        )


@rule(
    "IA302",
    "zero-gradient",
    "warning",
    "A trainable parameter's first-step gradient is identically zero.",
    needs="backward",
    fix="none",
    why_no_fix="a consequence of another finding (a zero weight or dead units above it)",
)
def zero_gradient(ctx: RuleContext) -> Iterator[Violation]:
    rec = ctx.recording
    # decided by structure, not by the last bit: an offset added right before a batch norm
    normalized = normalized_away(rec)
    if normalized:
        names = [t.name for t in normalized]
        norms = sorted({n for n in (_norm_module(rec, t) for t in normalized) if n})
        largest = max(t.grad.norm for t in normalized)
        yield Violation(
            names[0],
            f"{len(names)} bias(es) cannot train: its effect is normalized away ({_listed(names)}): each is added "
            "right before a batch normalization"
            + (f" ({', '.join(repr(n) for n in norms[:3])}{', ...' if len(norms) > 3 else ''})" if norms else "")
            + ", which subtracts every channel's mean over the batch, so the bias leaves the output unchanged and "
            f"its gradient is zero in exact arithmetic (here {'exactly zero' if largest == 0 else f'at most {largest:.2g}, rounding'}); "
            "the model trains without it: drop it (bias=False before a BatchNorm, as torchvision's ResNets do)",
            fix=None,
            severity="info",
            locations=names,
        )
    skip = {t.name for t in normalized}
    # the rest decided by a relative threshold: an offset whose gradient cancels while its own
    # weight's does not (exactly zero, or zero to rounding) is removed by what follows it
    cancelled = [t for t in cancelling(rec) if t.name not in skip]
    if cancelled:
        names = [t.name for t in cancelled]
        yield Violation(
            names[0],
            f"{len(names)} bias(es) get a gradient that cancels ({_listed(names)}): at most "
            f"{CANCELLED:.1e} of their own weight's (exactly zero or rounding), while that weight's is not zero, "
            "so whatever they add is removed by what follows (a softmax over positions removes a key "
            "projection's bias; a normalization removes its mean); they will not train, and the model trains "
            "without them",
            fix=None,
            severity="info",
            locations=names,
        )
        skip |= set(names)
    zero = [t for t in rec.parameters if t.grad is not None and t.grad.norm == 0 and not t.grad.nonfinite
            and t.name not in skip]
    if not zero:
        return
    roots = gradient_roots(rec)
    by_name = {t.name: t for t in rec.parameters}
    unexplained = [t.name for t in zero if t.name not in roots]
    later = [name for name in unexplained if moves_later(by_name[name])]
    dead = [name for name in unexplained if name not in later]
    if dead:
        # one finding: dead units or a loss that ignores a path zero the gradients of many at once
        looked = all(by_name[name].moves_at_step is not None for name in dead)
        yield Violation(
            dead[0],
            f"the first-step gradient of {len(dead)} trainable parameter(s) is exactly zero "
            f"({_listed(dead)})" + (", and still zero after three optimizer steps of everything else" if looked else "")
            + ": the optimizer will not move them (dead units above them, a chain of zero weights or "
            "gains, or a loss that ignores their path)",
            fix=None,
            locations=dead,
        )
    if later:
        # what zeroes them moves first (a zero norm gain, a zero weight with more zeros in the
        # way): judged by the consequence that a few steps measure, as IA101 judges a zero weight
        last = max(by_name[name].moves_at_step or 0 for name in later)
        yield Violation(
            later[0],
            f"the first-step gradient of {len(later)} trainable parameter(s) is exactly zero "
            f"({_listed(later)}), but not once what silences them has moved: optimizer steps of everything "
            f"else give all of them a gradient by step {last}, so they train from there; reported for information",
            fix=None,
            severity="info",
            locations=later,
        )
    # the rest, one finding per root: a consequence of the zero weight, reported under it
    by_root: Dict[str, List[str]] = {}
    for name, root in roots.items():
        by_root.setdefault(root, []).append(name)
    for root, names in by_root.items():
        weight = by_name[root]
        pattern = deliberate_zero(weight, rec, ctx.analysis.output_layer)
        step = _first_move(root, by_name, roots)
        # the rule that judges the root itself: IA101 a weight, IA601 a norm's gain
        judge = "IA101" if weight.ndim >= 2 else "IA601" if is_norm_gain(weight) else None
        reported = judge is not None
        if pattern is not None and step is not None:
            why = (f"'{root}' is all zeros by design ({pattern}), so nothing reaches them through it (or, from it) yet; "
                   + ("its own gradient is not zero, so it moves at step 1"
                      if step == 1 else f"it starts moving at step {step}, once what zeroes its own gradient has moved")
                   + f", and they train from step {step + 1}")
        elif step is None and all(moves_later(by_name[name]) for name in names):
            why = (f"'{root}' is all zeros, so nothing reaches them through it (or, from it) yet, but optimizer "
                   f"steps of everything else give them a gradient by step "
                   f"{max(by_name[name].moves_at_step or 0 for name in names)}, and they train from there")
        else:
            why = f"'{root}' is all zeros, so nothing reaches them through it (or, from it)" + (
                "" if step is not None else ", and it never moves either: nothing here trains") + (
                f" (see {judge} there)" if reported else "")
        yield Violation(
            names[0],
            f"the first-step gradient of {len(names)} trainable parameter(s) is exactly zero ({_listed(names)}): {why}",
            fix=None,
            severity="info" if (pattern is not None and step is not None) or (reported and pattern is None)
            or all(moves_later(by_name[name]) for name in names) else "warning",
            locations=names,
            caused_by=f"{judge} {root}" if reported else None,
        )


def _first_move(name: str, by_name: Dict[str, TensorRecord], roots: Dict[str, str]) -> Optional[int]:
    """The step at which ``name`` first moves: 1 with a non-zero first-step gradient, one step
    after its own root moves when a zero weight downstream zeroes its gradient (a Fixup block
    under a zero head), ``None`` when neither (it never moves)."""
    steps = 1
    seen = set()
    while name not in seen:
        seen.add(name)
        t = by_name[name]
        if t.grad is not None and t.grad.norm > 0:
            return steps
        if name not in roots:
            return None
        name, steps = roots[name], steps + 1
    return None


def _listed(names: List[str]) -> str:
    return ", ".join(f"'{n}'" for n in names[:8]) + (", ..." if len(names) > 8 else "")


def weight_gradients(recording: Recording) -> List[List[Tuple[str, float]]]:
    """``(weight name, gradient RMS)`` of layer weights in the forward order of their layers,
    in segments split at average pooling.

    A layer before a pooling over ``k`` positions sums ``k`` weakly correlated terms into its
    weight gradient, each scaled by ``1/k``: its gradient RMS drops by about ``sqrt(k)`` by
    construction, so layers are compared only within a segment.
    """
    order: Dict[str, int] = {}  # each layer's first call
    for call in forward_layers(recording):
        order.setdefault(call.module.name, call.index)
    found = []
    for t in recording.parameters:
        if t.role == "lookup" or (t.module in order and not main_path(recording, order[t.module])):
            # inside a residual branch the stream carries the gradient past it (attention's query
            # and key get little at init, by design), and a layer a normalization follows is
            # rescaled by it; an embedding's rows are read sparsely
            continue
        if t.module in order and t.ndim >= 2 and t.grad is not None and t.grad.norm > 0 and t.numel:
            if math.isfinite(t.grad.norm):
                found.append((order[t.module], t.name, t.grad.norm / math.sqrt(t.numel)))
    return split_at_average_pools(recording, ((position, (name, rms)) for position, name, rms in sorted(found)))


def _gradient_trend(ctx: RuleContext, direction: str) -> Iterator[Violation]:
    limit = float(ctx.options["gradient-ratio"])
    for grads in weight_gradients(ctx.recording):
        if len(grads) < 2:
            continue
        (first_name, first), (last_name, last) = grads[0], grads[-1]
        ratio = first / last
        if direction == "vanishing" and ratio >= 1 / limit:
            continue
        if direction == "exploding" and ratio <= limit:
            continue
        per_layer = ratio ** (1 / (len(grads) - 1))
        yield Violation(
            first_name,
            f"the first-step gradient RMS of the layer weights {'shrinks' if ratio < 1 else 'grows'} "
            f"{max(ratio, 1 / ratio):.3g}x from the last layer ('{last_name}', {last:.3g}) back to the "
            f"first ('{first_name}', {first:.3g}) over {len(grads)} layers, about {per_layer:.3g}x per "
            "layer going backward: with one learning rate, the "
            + ("first layers will barely move" if ratio < 1 else "first layers will take steps far too large"),
            fix=None,
            locations=[first_name, last_name],
        )
        return


@rule(
    "IA304",
    "gradient-vanishing",
    # info, not warning: on the trainability benchmark's calibrate split, as a warning it fired on
    # 11 failing configurations and 4 that train, and was the only warning on none of the failing
    # ones and on 1 that trains: it never decided a verdict that was right
    "info",
    "The weight-gradient RMS of the first layer is over {gradient-ratio}x smaller than the last layer's.",
    options={"gradient-ratio": 100.0},
    needs="backward",
    fix="none",
    why_no_fix="a consequence of the layers' scales; fix the variance findings",
)
def gradient_vanishing(ctx: RuleContext) -> Iterator[Violation]:
    yield from _gradient_trend(ctx, "vanishing")


@rule(
    "IA305",
    "gradient-exploding",
    # info, not warning: on the trainability benchmark's calibrate split, as a warning it fired on
    # 2 failing configurations and 1 that trains, and was the only warning on none of the failing
    # ones and on the one that trains: it never decided a verdict that was right
    "info",
    "The weight-gradient RMS of the first layer is over {gradient-ratio}x larger than the last layer's.",
    options={"gradient-ratio": 100.0},
    needs="backward",
    fix="none",
    why_no_fix="a consequence of the layers' scales; fix the variance findings",
)
def gradient_exploding(ctx: RuleContext) -> Iterator[Violation]:
    yield from _gradient_trend(ctx, "exploding")
