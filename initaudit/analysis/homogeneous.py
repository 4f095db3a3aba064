"""Where a scale too large ends up: in a ReLU-family classifier, only in the size of its logits.

A nonlinearity ``phi`` is positively homogeneous when ``phi(c z) = c phi(z)`` for every
``c > 0`` (ReLU, leaky ReLU), and nearly so for the large inputs a scale too large makes:
GELU, SiLU, Mish, Softplus and Hardswish approach ReLU (or the identity) away from 0. A
stack of linear maps, such sums, average or max pooling and such nonlinearities computes
``f(c x) = c^L f(x)`` up to its biases, which a large scale makes small by comparison: a
weight scale ``c`` times too large in every layer changes the size of the output, not what
the layers compute (the rescaling invariance of ReLU networks: Neyshabur et al. 2015,
Path-SGD; Dinh et al. 2017). In a classifier the output's size is the logits' spread, whose
consequence IA207 measures as the expected cross-entropy at init: a signal that "explodes"
through such layers harms training through that, and only through that (with Adam's steps,
which do not depend on the gradient's size; the trainability benchmark's gains range: CNNs
drawn 2-4x He's std with logits of std 14-420 train, those above 2,500 do not).

A saturating nonlinearity (tanh, sigmoid, ReLU6, SELU's negative side), a softmax (attention)
or a gate (a product of two signals) is not homogeneous: a scale too large there saturates
units or attention, a harm inside the model that the logits do not show.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

from initaudit.core import knowledge
from initaudit.core.records import Recording

if TYPE_CHECKING:
    from initaudit.analysis.model import Analysis

# ReLU and leaky ReLU, and those that approach them (or the identity) for large inputs
HOMOGENEOUS = frozenset({"relu", "leaky_relu", "gelu", "silu", "mish", "softplus", "hardswish", "linear"})
# module types whose name says relu or tanh but that saturate: ReLU6 clamps at 6
_SATURATING_TYPES = frozenset({"ReLU6", "Hardtanh"})
# what a layer's output may reach and stay homogeneous (``LayerUse.ends``: ``None`` is the next
# layer): not attention, a gate, a sum with a stream (a residual or LoRA branch: scaling both
# sides by different powers of c changes what the sum computes), or a fork the graph does not
# resolve (q, k and v split from one product; a GELU written with tensor ops reads its input
# several times)
_HOMOGENEOUS_ENDS = frozenset({None, "activation", "norm", "output"})


def homogeneous_classifier(analysis: Analysis) -> bool:
    """Whether the model is a classifier (its logits' expected loss at init was measured) whose
    every layer call feeds a :data:`HOMOGENEOUS` nonlinearity, with no residual stream, no
    recurrent module, no saturating activation module, and no layer but the head whose output
    reaches anything but a layer, a nonlinearity, a norm or the output (attention's softmax, a
    gate, a sum with a stream, a fork)."""
    rec: Recording = analysis.recording
    if rec.classes is None or rec.expected_initial_loss is None or rec.logit_std is None:
        return False
    uses = [use for run in analysis.runs for use in run]
    if not uses or rec.stream_calls:  # a residual stream: x + f(x) is not c^L f(x)
        return False
    # the head's output reaches the loss's softmax: those are the logits, judged by IA207
    if any(use.activation.name not in HOMOGENEOUS
           or (use.ends not in _HOMOGENEOUS_ENDS and use.module.name != analysis.output_layer) for use in uses):
        return False
    for module in rec.modules:
        if module.type in _SATURATING_TYPES or module.type in knowledge.RECURRENT_NAMES:
            return False
        if module.kind == knowledge.ACTIVATION and module.calls and module.activation not in HOMOGENEOUS:
            return False
    return True


def logit_excess(recording: Recording) -> Optional[float]:
    """The expected cross-entropy at init above ``ln C`` (IA207's measure), ``None`` where unknown."""
    if recording.classes is None or recording.expected_initial_loss is None:
        return None
    excess = recording.expected_initial_loss - math.log(recording.classes)
    return excess if not math.isnan(excess) else None


def only_logits_grow(analysis: Analysis, loss_severe: float) -> Optional[float]:
    """The logits' expected-loss excess at init where a scale too large reaches the loss only as
    their size and that stays at or below ``loss_severe`` (IA207's warning line); ``None`` otherwise
    (not such a classifier, or logits that large)."""
    if not homogeneous_classifier(analysis):
        return None
    excess = logit_excess(analysis.recording)
    return excess if excess is not None and math.isfinite(excess) and excess <= loss_severe else None


def logits_note(excess: float, loss_severe: float) -> str:
    """Why a growth judged by :func:`only_logits_grow` is information: the clause a message ends with."""
    return (f"; every layer of this classifier feeds a ReLU-like (positively homogeneous) nonlinearity, so a "
            "scale too large changes the size of its logits, not what its layers compute, and that size is "
            f"what reaches the loss: the expected cross-entropy at init is {excess:.3g} nats above ln C, "
            f"within IA207's {loss_severe:g} (logits that large train; IA207 reports them)")
