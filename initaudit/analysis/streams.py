"""Residual streams: how much each branch adds to the stream it joins.

A residual block computes ``x + f(x)``. The stream ``x`` carries the signal (and, backward, the
gradient) past the block; the branch ``f(x)`` adds to it. At init the branch's weights are drawn
independently of the stream, so the two are uncorrelated and their variances add:

    S_k^2 = S_{k-1}^2 + b_k^2,        r_k = b_k / S_{k-1}

where ``S_{k-1}`` is the stream's std as block ``k`` reads it and ``b_k`` the branch's. A small
``r_k`` is the recipe (GPT-2's 0.02 and 0.02/sqrt(2N) output projections, Fixup, T-Fixup,
DeepNet, ReZero, layer scale): the block starts near the identity. At ``r_k = 1`` the stream
grows by sqrt(2) in one block; beyond, the branch dominates: the skip path carries
``1 / sqrt(1 + r_k^2)`` of what leaves the block, and over a stack that share multiplies,

    share = prod_k 1 / sqrt(1 + r_k^2),

the part of the output that the identity paths carry from the stack's input (Brock et al. 2021
measure signal propagation at residual-block outputs; Wang et al. 2022, DeepNet, bound the
branches' updates against the skip for the same reason). Without normalization the stream's
size grows by ``1 / share`` (it compounds when each branch reads the stream at its own size); a
post-LN block rescales the sum, so its size stays put, but the skip's share falls the same way:
the stack behaves as deep as a plain chain of its branches (Xiong et al. 2020). A pre-LN branch
reads a normalized stream, so its size is fixed, and its ratio falls as the stream grows:
``r_k`` about ``1/sqrt(k)`` after the first block that dominates.

The sizes come from the recorded module outputs (``Recording.call_outputs``): the branch's is
the call whose output is summed, the stream's the call whose output is the stream, or, for a
stack written inline (``h = h + f(h)``), the earlier sum's, rebuilt by adding variances; a
constant factor between them and the sum (``x * alpha + f(x)``, ``torch.add``'s ``alpha``)
scales them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

from initaudit.core.records import Recording


@dataclass
class StreamSum:
    """One residual sum ``x + f(x)`` with the sizes it adds."""

    branch: str  # the module whose output is the branch f(x)
    stream: float  # std of the stream x as the sum reads it
    added: float  # std of the branch f(x)

    @property
    def ratio(self) -> float:
        """``b / S``: the branch's std over the stream's (inf for a stream that is zero)."""
        return self.added / self.stream if self.stream > 0 else math.inf

    @property
    def total(self) -> float:
        """The sum's std: ``sqrt(S^2 + b^2)``."""
        return math.hypot(self.stream, self.added)


def stream_sums(recording: Recording) -> List[StreamSum]:
    """The residual sums of the forward, in order, with the stream's and the branch's std (those
    whose sizes the recording holds: a recorded call on each side, or an earlier sum)."""
    found: List[StreamSum] = []
    by_position: List[Optional[StreamSum]] = []
    outputs = recording.call_outputs
    for branch_call, branch_factor, stream_call, earlier, stream_factor in recording.residual_sums:
        stream: Optional[float] = None
        if stream_call is not None and stream_call < len(outputs) and outputs[stream_call] is not None:
            stream = outputs[stream_call].std * abs(stream_factor)
        elif earlier is not None and earlier < len(by_position) and by_position[earlier] is not None:
            stream = by_position[earlier].total * abs(stream_factor)
        branch = outputs[branch_call] if branch_call < len(outputs) else None
        if stream is None or branch is None or not (math.isfinite(stream) and math.isfinite(branch.std)):
            by_position.append(None)
            continue
        found.append(StreamSum(recording.call_order[branch_call], stream, branch.std * abs(branch_factor)))
        by_position.append(found[-1])
    return found


def skip_share(sums: List[StreamSum]) -> float:
    """``prod_k 1 / sqrt(1 + r_k^2)``: the part of the stack's output that its identity paths carry
    from its input (1 for branches that add nothing; 0 where a stream is zero)."""
    log_share = 0.0
    for s in sums:
        r = s.ratio
        if math.isinf(r):
            return 0.0
        log_share -= 0.5 * math.log1p(r * r)
    return math.exp(log_share)
