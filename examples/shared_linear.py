"""One Linear reused twice in a Sequential: IA401 shared-parameter (warning).

The author meant two hidden layers; `[hidden] * 2` (or passing the same object twice)
gives one set of weights under two names.

    initaudit examples/shared_linear.py:build
"""

from torch import nn


def build(width: int = 128) -> nn.Module:
    hidden = nn.Linear(width, width)
    model = nn.Sequential(
        nn.Linear(32, width), nn.ReLU(),
        hidden, nn.ReLU(),
        hidden, nn.ReLU(),  # the bug: the same module object again
        nn.Linear(width, 1),
    )
    for layer in (model[0], hidden):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    nn.init.xavier_uniform_(model[-1].weight)
    return model
