"""A 30-layer ReLU MLP with PyTorch's default init: IA201 variance-mismatch (warning).

`nn.Linear`'s default draws U(-1/sqrt(fan_in), 1/sqrt(fan_in)), a std of 1/sqrt(3 fan_in):
1/sqrt(6) of what ReLU needs (He et al. 2015). Each layer shrinks the signal, and after
30 layers the output no longer depends on the input.

    initaudit examples/deep_mlp.py:build
    initaudit examples/deep_mlp.py:build --factory-arg depth=4

At depth 4 the signal shrinks about 20x, which such a stack survives (the trainability
benchmark's defaults range: plain stacks at this init train up to 8 layers and fail at 16):
IA201 is then info, not a warning.
"""

from torch import nn


def build(depth: int = 30, width: int = 256, inputs: int = 64, outputs: int = 10) -> nn.Module:
    layers = [nn.Linear(inputs, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)
