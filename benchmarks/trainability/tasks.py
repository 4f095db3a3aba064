"""The small synthetic task each family trains on, and the loss that counts as learning it.

Every task is a fixed dataset made from its own seeded generator, with a trivial baseline
(the loss of a predictor that ignores the input) that labels are measured against:

- ``regression`` (MLPs, residual MLPs): 32 inputs, 8 outputs of a fixed random tanh teacher,
  standardized per output; baseline: predicting each output's mean, MSE 1.
- ``images`` (CNNs, ViT): 3x12x12 images whose channels have a random offset and scale; the class
  (of 4) is the argmax of a fixed linear map of those six numbers; baseline: ln 4.
- ``sequence`` (transformers, LSTM/GRU, GPT-2, Llama, BERT): tokens of a 16-word vocabulary, each position after
  the second repeating the token two places back (a delayed copy); next-token prediction;
  baseline: the unigram distribution, ln 16.
- ``adaptation`` (LoRA): the frozen base's outputs plus a fixed rank-2 change of unit
  variance; baseline: the frozen base's own MSE, which only the adapters can lower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn
from torch.nn import functional as F

EXAMPLES = 1024


@dataclass
class Task:
    name: str
    inputs: torch.Tensor
    targets: torch.Tensor
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, targets) -> scalar
    baseline: float  # the loss of ignoring the input
    batch: int = 64
    d_in: int = 0
    d_out: int = 0
    classes: int = 0
    vocab: int = 0
    length: int = 0
    base: Optional[nn.Module] = None

    def batches(self, step: int) -> Any:
        """The ``step``-th minibatch, cycling through the dataset in a fixed order."""
        start = (step * self.batch) % EXAMPLES
        index = torch.arange(start, start + self.batch) % EXAMPLES
        return self.inputs[index], self.targets[index]


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y)


def _cross_entropy(out: Any, y: torch.Tensor) -> torch.Tensor:
    logits = getattr(out, "logits", out)  # a Hugging Face model returns a ModelOutput
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def regression() -> Task:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(EXAMPLES, 32, generator=gen)
    w1 = torch.randn(32, 64, generator=gen) / math.sqrt(32)
    w2 = torch.randn(64, 8, generator=gen) / math.sqrt(64)
    y = torch.tanh(2 * x @ w1) @ w2
    y = (y - y.mean(0)) / y.std(0)
    return Task("regression", x, y, _mse, baseline=1.0, d_in=32, d_out=8)


def images() -> Task:
    gen = torch.Generator().manual_seed(2)
    offset = torch.randn(EXAMPLES, 3, 1, 1, generator=gen)
    scale = 0.5 + torch.rand(EXAMPLES, 3, 1, 1, generator=gen)
    x = offset + scale * torch.randn(EXAMPLES, 3, 12, 12, generator=gen)
    features = torch.cat([offset.flatten(1), scale.flatten(1) - 1.0], dim=1)
    y = (features @ torch.randn(6, 4, generator=gen)).argmax(dim=1)
    return Task("images", x, y, _cross_entropy, baseline=math.log(4), classes=4)


def sequence() -> Task:
    gen = torch.Generator().manual_seed(3)
    vocab, length = 16, 17
    tokens = torch.randint(0, vocab, (EXAMPLES, length), generator=gen)
    for t in range(2, length):
        tokens[:, t] = tokens[:, t - 2]
    return Task("sequence", tokens[:, :-1], tokens[:, 1:], _cross_entropy, baseline=math.log(vocab), batch=32,
                vocab=vocab, length=length - 1)


def adaptation(base: nn.Module) -> Task:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(EXAMPLES, 32, generator=gen)
    with torch.no_grad():
        before = base(x)
    change = x @ torch.randn(32, 2, generator=gen) @ torch.randn(2, 8, generator=gen)
    change = change / change.std()
    return Task("adaptation", x, before + change, _mse, baseline=float(F.mse_loss(before, before + change)),
                d_in=32, d_out=8, base=base)


_CACHE: Dict[str, Task] = {}


def task_for(cfg: Dict[str, Any]) -> Task:
    """The task of ``cfg``'s family (LoRA's is built around its own frozen base)."""
    family = cfg["family"]
    if family == "lora":
        from configs import lora_base

        torch.manual_seed(50_000 + cfg["index"])
        return adaptation(lora_base(cfg, 32, 8))
    images_family = family == "cnn" or (family == "hf" and cfg["arch"] == "vit")
    name = "images" if images_family else {"mlp": "regression", "resmlp": "regression"}.get(family, "sequence")
    if name not in _CACHE:
        _CACHE[name] = {"regression": regression, "images": images, "sequence": sequence}[name]()
    return _CACHE[name]
