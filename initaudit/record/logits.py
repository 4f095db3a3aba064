"""The loss at init of a classifier, read from its logits without labels.

For logits ``z`` over ``C`` classes and a label drawn uniformly, the expected cross-entropy is

    E_y[CE] = logsumexp(z) - mean_c(z)

(the cross-entropy of class ``y`` is ``logsumexp(z) - z_y``, and the mean over ``y`` of
``z_y`` is ``mean_c(z)``). By Jensen's inequality it is at least ``ln C``, with equality
exactly when all logits of a row are equal; for logits drawn i.i.d. ``N(0, s^2)`` it is about
``ln C + s^2 / 2`` while ``s`` is small. A model whose logits at init are large starts far
above ``ln C``: over-confident at random (Karpathy 2019, "verify loss @ init").
"""

from __future__ import annotations

from typing import Any, Optional

import torch


def find_logits(output: Any, classes: Optional[int] = None) -> Optional[torch.Tensor]:
    """The classification logits in a model's ``output``: its ``logits`` (a Hugging Face
    ``ModelOutput``, or a dict with that key), or, with ``classes`` declared, the output
    tensor itself when its last dimension has that size. ``None`` when there are none
    (a regression, or an output this cannot read)."""
    logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    if logits is None and classes is not None and isinstance(output, torch.Tensor):
        logits = output
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() < 1:
        return None
    if logits.shape[-1] < 2 or (classes is not None and logits.shape[-1] != classes) or logits.numel() == 0:
        return None
    return logits


def initial_loss(logits: torch.Tensor) -> torch.Tensor:
    """``[E_y[CE], logit std]`` of ``logits`` (classes on the last dimension), on its device:
    the expected cross-entropy for a uniformly drawn label, averaged over the rows, and the
    std of a row's logits across the classes, averaged likewise (see the module docstring).
    Per row in float32 at least (no float64 copy of a language model's logits: the row
    reductions are exact enough), the means over the rows in float64."""
    z = logits.detach().reshape(-1, logits.shape[-1])
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()
    expected = (torch.logsumexp(z, dim=1) - z.mean(dim=1)).double().mean()
    spread = z.std(dim=1, correction=0).double().mean()
    return torch.stack([expected, spread])
