"""Does ``--fix`` rescue a model whose normalization gains are drawn small?

    python benchmarks/fix_norm_gains.py [--steps N] [--seeds S]

transformers 5's MobileViT and MobileViT v2 ``_init_weights`` draw every BatchNorm weight
from N(0, initializer_range = 0.02) (transformers 4 left them at PyTorch's 1, as the
original MobileViT does). After each convolution the BatchNorm normalizes, and its gain
then sets the signal's size: about 0.02 at every one, so the signal shrinks some fifty-fold
per normalization (IA202 warns). This script builds each model from the small config of
``tests/corpus.py`` (offline, no weights), and trains three copies from one draw on the same
task: at its own init, with the BatchNorm gains set to 1, and after ``initaudit``'s fix
(LSUV through each normalization's gain on the main path). The task: 64x64 noise images,
labelled by which quadrant of channel 0 is brightest (4 classes, chance 25%); AdamW lr 1e-3,
batches of 32, ``--steps`` steps; it prints the training loss and accuracy on the 256
images after training, per seed, measured in one process.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from typing import Tuple

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def quadrant_task(seed: int, n: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of noise and, for each, which quadrant of channel 0 has the largest mean."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 64, 64, generator=g)
    c = x[:, 0]
    means = torch.stack([c[:, :32, :32].mean((1, 2)), c[:, :32, 32:].mean((1, 2)),
                         c[:, 32:, :32].mean((1, 2)), c[:, 32:, 32:].mean((1, 2))], 1)
    return x, means.argmax(1)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> Tuple[float, float]:
    """AdamW (lr 1e-3) on batches of 32; returns (loss, accuracy) on all of ``x`` after training."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(x), (32,), generator=g)
        loss = nn.functional.cross_entropy(model(pixel_values=x[i]).logits, y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=x).logits
    return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()

    import initaudit
    from corpus import CORPUS

    print(f"{'model':<16} {'seed':>4} {'own init':>18} {'BN gains 1':>18} {'after --fix':>18}   (loss, accuracy)")
    for name in ("hf-mobilevit", "hf-mobilevitv2"):
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model, example = CORPUS[name]()
            ones = copy.deepcopy(model)
            for m in ones.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    nn.init.ones_(m.weight)
            fixed = copy.deepcopy(model)
            initaudit.audit(fixed, example, fix=True)
            x, y = quadrant_task(seed)
            cells = [train(m, x, y, args.steps, seed) for m in (model, ones, fixed)]
            print(f"{name:<16} {seed:>4} " + " ".join(f"{loss:>9.3f} {acc:>7.1%} " for loss, acc in cells), flush=True)


if __name__ == "__main__":
    main()
