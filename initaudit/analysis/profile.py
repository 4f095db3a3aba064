"""The depth profile: per layer, in forward order, where the signal and the gradient go.

One row per layer call: the output's RMS and its input-dependent part (per-feature std
across the batch), the weight's gradient RMS, and the weight's std against the std its
consumer asks for, with a bar on a log scale so that a collapse shows at a glance; a
signal-propagation plot (Brock et al. 2021) of the same with ``--plot``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

from initaudit.analysis.graph import forward_layers
from initaudit.analysis.model import Analysis
from initaudit.analysis.scales import recommended_std


@dataclass
class ProfileRow:
    layer: str
    type: str
    consumer: str
    method: str  # how the consumer was found: fx or hooks
    output_rms: Optional[float]
    signal: Optional[float]  # per-feature std across the batch
    grad_rms: Optional[float]
    weight_std: Optional[float]
    recommended_std: Optional[float]

    @property
    def ratio(self) -> Optional[float]:
        if not self.weight_std or not self.recommended_std:
            return None
        return self.weight_std / self.recommended_std


def depth_profile(analysis: Analysis) -> List[ProfileRow]:
    rows = []
    recording = analysis.recording
    for run in analysis.runs:
        for use in run:
            out = use.output
            scale = recommended_std(use)
            w = use.weight
            grad_rms = w.grad.norm / math.sqrt(w.numel) if w.grad is not None and w.numel else None
            rows.append(
                ProfileRow(
                    layer=use.module.name,
                    type=use.module.type,
                    consumer=use.activation.describe() + (" -> norm" if use.normalized else ""),
                    method=use.method if use.method == "autograd" else use.module.consumer_method or "hooks",
                    output_rms=math.sqrt(out.mean ** 2 + out.std ** 2) if out is not None else None,
                    signal=out.feature_std if out is not None else None,
                    grad_rms=grad_rms,
                    weight_std=w.std,
                    recommended_std=(scale.measured / scale.ratio) if scale is not None and scale.ratio else None,
                )
            )
    # by each layer's last call: a layer called several times is shown after its last use
    last_call = {call.name: call.index for call in forward_layers(recording)}
    rows.sort(key=lambda r: last_call.get(r.layer, 0))
    return rows
