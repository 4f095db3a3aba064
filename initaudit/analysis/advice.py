"""The init call that gives a recorded tensor a sensible value, as a line of Python."""

from __future__ import annotations

import math
from typing import Dict, Optional

from initaudit.analysis import gains
from initaudit.analysis.graph import LayerUse, accessor
from initaudit.core import knowledge
from initaudit.core.records import TensorRecord


def reinit_call(t: TensorRecord, uses: Dict[str, LayerUse]) -> Optional[str]:
    """``torch.nn.init`` call (or module method) that re-initializes ``t`` sensibly.

    Layer weights get the init recommended for the nonlinearity that consumes them
    (:func:`initaudit.analysis.gains.init_call`); embeddings ``N(0, 1)``; recurrent tensors
    PyTorch's own ``U(-1/sqrt(hidden), 1/sqrt(hidden))``; biases zero; norm gains one.
    """
    target = accessor(t.name)
    if t.kind == "buffer":
        module = accessor(t.module)
        if t.module_type in knowledge.NORM_NAMES:
            return f"{module}.reset_running_stats()"
        return None
    if t.module_type in knowledge.RECURRENT_NAMES:
        # PyTorch draws every recurrent tensor from U(+-1/sqrt(hidden_size))
        if t.attr.startswith("weight_hr"):
            hidden = t.shape[1]  # (proj_size, hidden_size)
        else:
            hidden = t.shape[0] // knowledge.gate_count(t.module_type) if t.shape else 1
        return f"nn.init.uniform_({target}, -{1 / math.sqrt(max(hidden, 1)):.4g}, {1 / math.sqrt(max(hidden, 1)):.4g})"
    if t.ndim < 2:
        if t.module_type in knowledge.NORM_NAMES and t.attr == "weight":
            return f"nn.init.ones_({target})"
        return f"nn.init.zeros_({target})"
    if t.module_type in knowledge.EMBEDDING_NAMES:
        return f"nn.init.normal_({target})"
    use = uses.get(t.module)
    activation = use.activation if use is not None else knowledge.LINEAR
    return gains.init_call(activation, target, t.layer_fan_in or t.fan_in or 1, t.fan_in)
