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

from typing import Any, List, Optional, Tuple

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
    std, mean = torch.std_mean(z, dim=1, correction=0)  # one call for both: a pass fewer over the logits
    expected = (torch.logsumexp(z, dim=1) - mean).double().mean()
    spread = std.double().mean()
    return torch.stack([expected, spread])


# a label outside [0, C) is not scored: -100 is PyTorch's and Hugging Face's ignore_index
def find_labels(example_input: Any, labels: Any = None) -> Optional[torch.Tensor]:
    """The class labels of the example batch: ``labels`` when given, else the ``labels`` of
    a dict input (Hugging Face's convention: the model computes its own loss from them).
    ``None`` unless an integer tensor."""
    if labels is None and isinstance(example_input, dict):
        labels = example_input.get("labels")
    if isinstance(labels, torch.Tensor) and not labels.is_floating_point() and not labels.is_complex() \
            and labels.dtype != torch.bool and labels.numel():
        return labels
    return None


def _label_rows(logits: torch.Tensor, labels: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The ways ``labels`` can pair with the rows of ``logits``, flattened: aligned (labels
    the shape of the logits' rows), and, for a sequence, shifted by one position as a causal
    language model scores them (the logits at position t predict the label at t + 1)."""
    classes = logits.shape[-1]
    z = logits.detach()
    y = labels.to(z.device)
    if y.shape != z.shape[:-1]:
        if y.numel() * classes != z.numel():
            return []
        y = y.reshape(z.shape[:-1])
    candidates = [(z.reshape(-1, classes), y.reshape(-1))]
    if z.dim() >= 3 and z.shape[-2] > 1:
        candidates.append((z[..., :-1, :].reshape(-1, classes), y[..., 1:].reshape(-1)))
    return candidates


def labelled_loss(logits: torch.Tensor, labels: torch.Tensor, own_loss: Optional[torch.Tensor] = None
                  ) -> Optional[torch.Tensor]:
    """``[CE, CE shuffled, its noise, H(prior), rows]`` of ``logits`` against ``labels``, on
    the logits' device, in float64 (``None`` when the labels do not fit the logits' rows; NaN
    but for ``rows`` when no label is in [0, C)):

    - ``CE``: the mean cross-entropy of the batch's own labels;
    - ``CE shuffled``: its expectation with the labels permuted across the rows, which keeps
      the batch's class frequencies ``p`` and breaks the link between a row and its label,

          E_perm[CE] = mean_i logsumexp(z_i) - mean_i sum_c p_c z_ic ;

    - its noise: the root-mean-square over rows of the std of ``z_iy`` for ``y ~ p``, over
      ``sqrt(rows)``: how far ``CE`` strays from ``CE shuffled`` by chance when nothing links
      rows and labels;
    - ``H(prior)``: the entropy of ``p``, the loss at init of a model whose logits are
      ``log p`` for every row (its output bias set to the class prior), against ln C for
      uniform logits.

    Labels pair with the rows aligned or, for a sequence, shifted by one; when the model
    returned its own loss (``own_loss``), the pairing whose CE is nearer to it is the model's
    (chosen on the device, no synchronization), else the aligned one.
    """
    stats = [_stats(z, y) for z, y in _label_rows(logits, labels)]
    if not stats:
        return None
    if own_loss is None or len(stats) == 1:
        return stats[0]
    stacked = torch.stack(stats)
    gap = (stacked[:, 0] - own_loss.detach().to(stacked.device, torch.float64)).abs()
    return stacked[gap.argmin()]


def _stats(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`labelled_loss`'s five numbers for rows ``z`` and labels ``y``, with masks rather
    than indexing so that nothing waits for the device (a label outside [0, C) weighs 0)."""
    classes = z.shape[-1]
    z = z.double()
    weight = ((y >= 0) & (y < classes)).double()
    y = y.clamp(0, classes - 1).long()
    rows = weight.sum()
    lse = torch.logsumexp(z, dim=1)
    actual = ((lse - z.gather(1, y[:, None])[:, 0]) * weight).sum() / rows
    prior = torch.zeros(classes, dtype=z.dtype, device=z.device).index_add_(0, y, weight) / rows
    mixed = z @ prior  # sum_c p_c z_ic, per row
    shuffled = ((lse - mixed) * weight).sum() / rows
    spread = (((z - mixed[:, None]).pow(2) @ prior) * weight).sum() / rows  # mean_i Var_{y~p}(z_iy)
    entropy = -torch.where(prior > 0, prior * prior.log(), torch.zeros_like(prior)).sum()
    return torch.stack([actual, shuffled, (spread / rows).sqrt(), entropy, rows])


# the autograd nodes of F.nll_loss (and so of F.cross_entropy): (N, C) and (N, C, d1, ...) inputs
NLL_NODES = ("NllLossBackward0", "NllLoss2DBackward0")
SEARCH_BUDGET = 256  # graph nodes looked at from the loss down: the loss's own terms, not the model


def find_cross_entropy(loss_value: Optional[torch.Tensor]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(log-probabilities with the classes last, labels)`` of the cross-entropy in a loss's
    autograd graph, read from the ``nll_loss`` node that ``F.cross_entropy`` and
    ``nn.CrossEntropyLoss`` (and a log-softmax followed by ``F.nll_loss``) leave there: it
    saves its input and its target. A label equal to the node's ``ignore_index`` is set to -1
    (not scored). ``None`` when the loss has no such node near its top (the first met,
    breadth first, within :data:`SEARCH_BUDGET` nodes), or one without a class dimension.

    The log-probabilities are the logits less their log-sum-exp, so the loss at init reads
    from them exactly as from the logits (:func:`initial_loss` does not see the shift)."""
    node = getattr(loss_value, "grad_fn", None)
    queue, seen = [node] if node is not None else [], set()
    while queue and len(seen) < SEARCH_BUDGET:
        node = queue.pop(0)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__ in NLL_NODES:
            logp, target = getattr(node, "_saved_self", None), getattr(node, "_saved_target", None)
            if not isinstance(logp, torch.Tensor) or not isinstance(target, torch.Tensor) or logp.dim() < 2:
                return None
            logp = logp.detach().movedim(1, -1)
            ignore = int(getattr(node, "_saved_ignore_index", -100))
            ignore = ignore - 2 ** 64 if ignore >= 2 ** 63 else ignore  # read back as unsigned
            target = target.detach()
            if 0 <= ignore < logp.shape[-1]:
                target = torch.where(target == ignore, torch.full_like(target, -1), target)
            return (logp, target) if target.shape == logp.shape[:-1] else None
        queue.extend(next_node for next_node, _ in node.next_functions)
    return None


def cross_entropy_stats(logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`labelled_loss`'s five numbers for a cross-entropy read from a loss's graph: its
    rows and labels are paired as the loss pairs them."""
    return _stats(logp.reshape(-1, logp.shape[-1]), target.reshape(-1))
