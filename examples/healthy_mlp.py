"""A healthy He-initialized MLP: nothing at warning or above, exit code 0.

    initaudit examples/healthy_mlp.py:build
"""

from torch import nn


def build(depth: int = 12, width: int = 256, inputs: int = 64, outputs: int = 10) -> nn.Module:
    layers = [nn.Linear(inputs, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, outputs))
    model = nn.Sequential(*layers)
    for module in model:
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    head = model[-1]
    nn.init.xavier_uniform_(head.weight)  # the head feeds no activation
    return model
