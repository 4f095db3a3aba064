"""Fixing a deep ReLU MLP makes it train: the before/after demonstration of `initaudit --fix`.

A 30-layer, 256-wide ReLU MLP with PyTorch's default init loses its input within a few
layers (IA201, IA202). Trained with SGD (lr 1e-3, momentum 0.9) on a synthetic regression
target of variance 0.09, it does not reduce the loss; after `initaudit.fix` (He init for
the hidden layers, LSUV on the main path; the output layer is not scaled to unit output
variance, which would start it at a loss 100x the target's variance and diverge), the
same steps do.

    initaudit examples/fix_deep_relu.py:build --fix
    python examples/fix_deep_relu.py           # trains both and prints the two losses
"""

import torch
from torch import nn

DEPTH, WIDTH, INPUTS = 30, 256, 16
TARGET_STD = 0.3


def build(depth: int = DEPTH, width: int = WIDTH) -> nn.Module:
    layers = [nn.Linear(INPUTS, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def dataset(n: int = 256, seed: int = 0):
    """y = a smooth non-linear function of x, plus a little noise, with std TARGET_STD."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, INPUTS, generator=g)
    w = torch.randn(INPUTS, generator=g) / INPUTS ** 0.5
    y = torch.sin(2 * x @ w) + 0.5 * (x[:, 0] * x[:, 1]) + 0.05 * torch.randn(n, generator=g)
    return x, TARGET_STD * (y - y.mean()).unsqueeze(1) / y.std()


def train(model: nn.Module, steps: int = 100, lr: float = 1e-3, seed: int = 0) -> float:
    """SGD with momentum 0.9 on the mean squared error, full batch; returns the final loss on
    the training set."""
    x, y = dataset(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def main() -> None:
    from initaudit import audit

    torch.manual_seed(0)
    plain = build()
    torch.manual_seed(0)
    fixed = build()
    x, _ = dataset()
    result = audit(fixed, x, fix=True)
    print("findings before:", sorted({f.code for f in result.fix.before.findings}))
    print("findings after: ", sorted({f.code for f in result.findings}))
    print(f"loss after training, original init: {train(plain):.4f}")
    print(f"loss after training, fixed init:    {train(fixed):.4f}")


if __name__ == "__main__":
    main()
