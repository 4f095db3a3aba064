"""Rules on parameter values alone: zero, constant, non-finite, garbage and cloned tensors."""

from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Set

from initaudit.analysis.advice import reinit_call
from initaudit.analysis.graph import LayerUse, accessor
from initaudit.analysis.roles import ELEMENTWISE_ROLES, ZERO_PATTERNS, deliberate_zero, moves_later, stuck
from initaudit.core.knowledge import NORM_NAMES
from initaudit.core.records import TensorRecord
from initaudit.rules.registry import RuleContext, Violation, rule


def _elements(n: int) -> str:
    return f"{n:,} elements"


@rule(
    "IA101",
    "zero-weight",
    "error",
    "A weight of two or more dimensions is all zeros.",
    fix="safe",
)
def zero_weight(ctx: RuleContext) -> Iterator[Violation]:
    rec = ctx.recording
    for t in rec.parameters:
        if not t.floating or t.ndim < 2 or t.nonfinite or t.zero_fraction != 1.0:
            continue
        if t.grad_status == "none":
            continue  # the loss never reaches it: IA301 says so, and its value changes nothing
        pattern = deliberate_zero(t, rec, ctx.analysis.output_layer)
        if pattern is not None:
            yield Violation(
                t.name,
                f"'{t.name}' ({t.module_type or 'a parameter'}, shape {list(t.shape)}) is all zeros, and it is "
                f"{ZERO_PATTERNS[pattern]}: a deliberate zero init, reported for information",
                fix=None,
                severity="info",
                locations=t.names,
            )
            continue
        if not t.requires_grad:
            # a frozen tensor takes no gradient, so the graph does not show how it is used
            yield Violation(
                t.name,
                f"'{t.name}' ({t.module_type or 'a parameter'}, shape {list(t.shape)}) is all zeros and frozen "
                "(requires_grad=False): it never changes, so what it multiplies stays cut off from the "
                "input and what it is added to never gets anything from it (a weight that failed to load?)",
                fix=None,
                locations=t.names,
            )
            continue
        if t.grad is not None and t.grad.norm > 0 and math.isfinite(t.grad.norm):
            # judged by its consequence: it moves at the first step, and what it cuts off gets a
            # gradient through it from the second (a zero-initialized layer trains: Zhao et al. 2022, ZerO)
            yield Violation(
                t.name,
                f"'{t.name}' ({t.module_type or 'a parameter'}, shape {list(t.shape)}) is all zeros: its output "
                "does not depend on its input at init, but its own first-step gradient is not zero, so it "
                "moves at step 1 and what lies before it trains from step 2; reported for information",
                fix=None,
                severity="info",
                locations=t.names,
            )
            continue
        yield Violation(
            t.name,
            f"weight of '{t.module}' ({t.module_type}, shape {list(t.shape)}) is all zeros"
            + (" and so is its own first-step gradient" if t.grad is not None else "")
            + ": its output does not depend on its input, every layer before it gets zero gradient, "
            "and nothing moves it (with ReLU and a zero bias, it and everything below stay dead)",
            fix=reinit_call(t, ctx.analysis.consumers),
            locations=t.names,
        )


# the gradient-row spread above which the units of a constant weight are told apart at step 1:
# far above float32 rounding (about 1e-7 of the largest element), far below the O(1) spread
# that random weights above it give
SYMMETRY_BROKEN = 1e-4


@rule(
    "IA102",
    "constant-weight",
    "error",
    "A weight of two or more dimensions has all elements equal and non-zero.",
    fix="safe",
)
def constant_weight(ctx: RuleContext) -> Iterator[Violation]:
    """A constant weight whose units get different first-step gradients (``grad_row_spread``,
    measured by ``record.lookahead``) separates at step 1: information. One whose units all get
    the same gradient stays symmetric: an error."""
    for t in ctx.recording.parameters:
        if not t.floating or t.ndim < 2 or t.numel < 2 or t.nonfinite:
            continue
        if t.role in ELEMENTWISE_ROLES:
            # a layer scale, an addend, a token: each element acts on its own feature, so equal
            # elements mix nothing and no two units are tied (CaiT's layer scale, Swin v2's logit scale)
            continue
        if t.min is None or t.min != t.max or t.min == 0:
            continue
        if t.grad_row_spread is not None and t.grad_row_spread > SYMMETRY_BROKEN:
            # judged by its consequence: the units are alike now, but the layers above are not,
            # so each unit's gradient row differs and the first step tells them apart
            yield Violation(
                t.name,
                f"every element of '{t.name}' ({t.module_type}, shape {list(t.shape)}) is {t.min:g}: its units "
                "compute the same function at init, but the rows of its first-step gradient differ (spread "
                f"{t.grad_row_spread:.2g} of the largest), so the first step makes them different; reported "
                "for information",
                fix=None,
                severity="info",
                locations=t.names,
            )
            continue
        yield Violation(
            t.name,
            f"every element of '{t.name}' ({t.module_type}, shape {list(t.shape)}) is "
            f"{t.min:g}: all units of the layer compute the same function, and while the layers "
            "above treat them alike they get the same gradient and never become different",
            fix=reinit_call(t, ctx.analysis.consumers),
            locations=t.names,
        )


@rule(
    "IA103",
    "non-finite-parameter",
    "error",
    "A parameter or buffer holds NaN or Inf.",
    fix="safe",
)
def non_finite_parameter(ctx: RuleContext) -> Iterator[Violation]:
    for t in ctx.recording.tensors:
        if not t.floating or not t.nonfinite:
            continue
        if t.kind == "buffer" and t.module_type not in NORM_NAMES and _infinities_only(t):
            # a mask or a sentinel, not a statistic: -inf in an additive attention mask is how
            # causality is written (a norm's running statistics are always checked)
            continue
        yield Violation(
            t.name,
            f"{t.kind} '{t.name}' ({t.module_type}) holds {t.nonfinite:,} NaN or Inf value(s) "
            f"out of {_elements(t.numel)}: they propagate into the outputs and gradients that touch it",
            fix=reinit_call(t, ctx.analysis.consumers),
            locations=t.names,
        )


def _infinities_only(t: TensorRecord) -> bool:
    """Whether every non-finite element of ``t`` is +-inf, none NaN. The recorded min and max
    propagate NaN (``aminmax`` does), so neither is NaN exactly when no element is."""
    return t.min is not None and t.max is not None and not (math.isnan(t.min) or math.isnan(t.max))


# the dtypes whose smallest normal number no sane init comes near; float16's (6e-5) it does
_SUBNORMAL_DTYPES = {"float32", "float64", "bfloat16"}


def expected_std(t: TensorRecord) -> float:
    """A generous scale for an initialized tensor: ``1 / sqrt(fan_in)``, or 1 without a fan."""
    fan = t.layer_fan_in or t.fan_in
    return 1 / math.sqrt(fan) if fan else 1.0


@rule(
    "IA104",
    "uninitialized-memory",
    "error",
    "Values that look like torch.empty garbage: huge magnitudes or subnormal numbers.",
    options={"magnitude-factor": 1e6},
    fix="safe",
)
def uninitialized_memory(ctx: RuleContext) -> Iterator[Violation]:
    factor = float(ctx.options["magnitude-factor"])
    for t in ctx.recording.parameters:
        if not t.floating or t.nonfinite or t.min is None or t.numel == 0:
            continue
        largest = max(abs(t.min), abs(t.max))
        limit = factor * expected_std(t)
        subnormal = t.subnormal if t.dtype in _SUBNORMAL_DTYPES else 0
        if largest <= limit and not subnormal:
            continue
        why = []
        if largest > limit:
            why.append(f"its largest magnitude {largest:.3g} is {largest / expected_std(t):.2g}x the expected scale {expected_std(t):.3g}")
        if subnormal:
            why.append(f"{subnormal:,} of its {t.numel:,} values are subnormal (below {t.dtype}'s smallest normal number)")
        yield Violation(
            t.name,
            f"'{t.name}' ({t.module_type}) looks like uninitialized memory (torch.empty): "
            + " and ".join(why)
            + "; an init call was probably skipped",
            fix=reinit_call(t, ctx.analysis.consumers),
            locations=t.names,
        )


@rule(
    "IA105",
    "cloned-init",
    "warning",
    "Distinct parameters hold bit-identical values.",
    fix="safe",
)
def cloned_init(ctx: RuleContext) -> Iterator[Violation]:
    seen: Set[str] = set()
    by_name = {t.name: t for t in ctx.recording.parameters}
    for t in ctx.recording.parameters:
        if not t.clones or t.name in seen:
            continue
        group: List[TensorRecord] = [t] + [by_name[n] for n in t.clones if n in by_name]
        seen.update(g.name for g in group)
        if _two_valued(t) or sum(g.requires_grad for g in group) < 2:
            # a frozen copy never trains away from the other: a fixed table built twice
            # (sinusoidal position embeddings in an encoder and a decoder) is that by design
            continue
        names = [g.name for g in group]
        listed = ", ".join(f"'{n}'" for n in names)
        if _gradients_differ(group):
            # judged by its consequence: copies in series (nn.TransformerEncoder's deep copies) sit
            # at different depths, get different first-step gradients and part at step 1
            yield Violation(
                t.name,
                f"{len(group)} distinct parameters hold bit-identical values ({listed}), but their first-step "
                "gradients differ (their inputs or what follows them do), so the first step makes them "
                "different; reported for information",
                fix=None,
                severity="info",
                locations=names,
            )
            continue
        # each copy redrawn the way the first was drawn, so that only the values change
        fixes = [_redraw(t, g, ctx.analysis.init_call(t, accessor(g.name)), ctx.analysis.consumers) for g in group[1:]]
        yield Violation(
            t.name,
            f"{len(group)} distinct parameters hold bit-identical values ({listed}): they "
            "receive the same gradients while their inputs agree, and start as copies of one "
            "layer (copy.deepcopy of an initialized layer, as nn.TransformerEncoder does: "
            "pytorch issue 86274); re-initialize each copy",
            fix="\n".join(f for f in fixes if f) or None,
            locations=names,
        )


def _gradients_differ(group: List[TensorRecord]) -> bool:
    """Whether the first-step gradients of identical copies differ: their norms are more than
    float rounding apart (equal norms are read as equal gradients: copies that see the same
    input and the same gradient from above, such as two heads of one sum, stay copies)."""
    norms = [g.grad.norm for g in group if g.requires_grad and g.grad is not None]
    if len(norms) < 2 or not all(math.isfinite(n) for n in norms):
        return False
    return max(norms) - min(norms) > 1e-4 * max(norms)


def _redraw(template: TensorRecord, copy: TensorRecord, same_init: Optional[str],
            uses: Dict[str, LayerUse]) -> Optional[str]:
    """The call that redraws ``copy``: the template's own init (``same_init``, a call on the
    copy) when the fingerprint named one, else a uniform over its range or a fresh init."""
    target = accessor(copy.name)
    if same_init:
        return same_init
    if copy.ndim < 2 and template.min is not None:
        return f"nn.init.uniform_({target}, {template.min:.4g}, {template.max:.4g})"
    return reinit_call(copy, uses)


@rule(
    "IA601",
    "zero-norm-scale",
    "warning",
    "A normalization layer's scale (gain) is all zeros.",
    fix="safe",
)
def zero_norm_scale(ctx: RuleContext) -> Iterator[Violation]:
    rec = ctx.recording
    for t in rec.parameters:
        if not is_norm_gain(t) or not t.floating or t.zero_fraction != 1.0:
            continue
        module = rec.module(t.module)
        if t.branch is not None or (module is not None and module.residual is not None):
            yield Violation(
                t.name,
                f"scale of '{t.module}' ({t.module_type}) is all zeros, and its output is added to "
                "a skip connection: the zero-init residual pattern (Goyal et al. 2017; torchvision's "
                "zero_init_residual), a deliberate choice, reported for information",
                severity="info",
                locations=t.names,
            )
            continue
        moves = t.grad is not None and math.isfinite(t.grad.norm) and (t.grad.norm > 0 or moves_later(t))
        if moves and not stuck(rec):
            # judged by its consequence, as IA101 judges a zero weight: it moves at step 1 (or once
            # a zero gain after it has), and the look-ahead shows everything it silenced moving next
            step = 1 if t.grad is not None and t.grad.norm > 0 else t.moves_at_step
            yield Violation(
                t.name,
                f"scale of '{t.module}' ({t.module_type}) is all zeros: its output is its bias alone at init, "
                f"but it moves at step {step}, and a few optimizer steps give every parameter it silences a "
                "gradient (measured); reported for information",
                fix=None,
                severity="info",
                locations=t.names,
            )
            continue
        yield Violation(
            t.name,
            f"scale of '{t.module}' ({t.module_type}) is all zeros: its output is its bias alone, "
            "whatever the input, which silences everything after it. A common cause is the "
            "generic loop `xavier_ if p.dim() > 1 else zeros_`, which also zeroes every norm gain",
            fix=f"nn.init.ones_({accessor(t.name)})",
            locations=t.names,
        )


def is_norm_gain(t: TensorRecord) -> bool:
    """A normalization's scale: the weight of a torch norm layer, or a tensor the graph shows
    multiplying a normalized activation (an RMSNorm written with tensor ops)."""
    return t.attr == "weight" and (t.module_type in NORM_NAMES or t.role == "norm")


def _two_valued(record: TensorRecord) -> bool:
    """Whether a tensor holds only its min and max: a deliberate pattern (a forget-gate slice
    of ones among zeros), not a random draw that was copied: IA105 leaves such copies alone.

    By the Bhatia-Davis inequality ``Var <= (max - mean)(mean - min)``, with equality exactly
    when every value is ``min`` or ``max``; read from the recorded summary, no pass needed.
    """
    if record.std is None or record.mean is None or record.min is None or record.max is None:
        return False
    bound = (record.max - record.mean) * (record.mean - record.min)
    return bound > 0 and record.std ** 2 >= bound * (1 - 1e-4)
