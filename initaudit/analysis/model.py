"""What a recording means: derived from it once, never from the model, read by everyone after.

The recorder writes down facts (statistics, call order, which modules started their forward
when); this module interprets them: the runs of layers and what consumes each
(:mod:`.graph`), the init each weight most likely came from (:mod:`.fingerprint`), how much
each residual branch adds to its stream (:mod:`.streams`), and which layer is the model's head. Rules receive the :class:`Analysis` in their context, the report
writes its fingerprints into the JSON, and the profile reads its runs; nobody stores
derived results in the recording.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from initaudit.analysis.fingerprint import Fingerprint, identify
from initaudit.analysis.graph import LayerUse, layer_runs
from initaudit.analysis.streams import StreamSum, stream_sums
from initaudit.core.records import Recording, TensorRecord


@dataclass
class Analysis:
    """The interpretation of one :class:`~initaudit.core.records.Recording`."""

    recording: Recording
    runs: List[List[LayerUse]]  # layer calls in forward order, split where a norm or an opaque op intervenes
    fingerprints: Dict[str, Fingerprint]  # by the tensor's first name: the init that most likely drew it
    output_layer: Optional[str]  # the model's head (see :func:`output_layer`)
    consumers: Dict[str, LayerUse] = field(default_factory=dict)  # first call of every layer, by module name
    # the residual sums x + f(x) in forward order, with the stream's and the branch's std (:mod:`.streams`)
    stream_sums: List[StreamSum] = field(default_factory=list)

    def fingerprint(self, t: TensorRecord) -> Optional[Fingerprint]:
        """The init that most likely drew ``t`` (``None``: not a weight, or not recognised)."""
        return self.fingerprints.get(t.name)

    def init_call(self, t: TensorRecord, target: str) -> Optional[str]:
        """``t``'s init as a call on ``target``, to draw another tensor the same way (``None`` for a
        constant, which a redraw would only copy)."""
        found = self.fingerprint(t)
        return found.call(target) if found is not None and found.family != "constant" else None


def analyze(recording: Recording) -> Analysis:
    """Interpret ``recording``: layer runs and consumers, fingerprints, residual sums, the output layer."""
    runs = layer_runs(recording)
    consumers: Dict[str, LayerUse] = {}
    for run in runs:
        for use in run:
            consumers.setdefault(use.module.name, use)
    fingerprints = {}
    for t in recording.tensors:
        if t.kind in ("parameter", "effective") and t.kurtosis is not None:
            found = identify(t)
            if found is not None:
                fingerprints[t.name] = found
    return Analysis(recording, runs, fingerprints, output_layer(recording), consumers, stream_sums(recording))


def output_layer(recording: Recording) -> Optional[str]:
    """The model's head: of the modules holding a weight of 2+ dimensions of their own, the
    one whose forward started last. The root counts only when it is a single module (a model
    holding a class token directly is not its own head)."""
    owners = {name.rpartition(".")[0] for t in recording.tensors if t.kind == "parameter" and t.ndim >= 2
              for name in t.names}
    head = None
    for name in recording.start_order:
        module = recording.module(name)
        if module is None or (name == "" and len(recording.modules) > 1):
            continue
        if any(n in owners for n in module.names):
            head = name
    return head
