"""A hidden layer initialized to zero: IA101 zero-weight (error).

    initaudit examples/zero_hidden.py:build
"""

from torch import nn


def build(width: int = 256) -> nn.Module:
    model = nn.Sequential(
        nn.Linear(64, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, 10),
    )
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    nn.init.zeros_(model[2].weight)  # the bug: meant to zero the bias
    return model
