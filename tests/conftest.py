import textwrap
from pathlib import Path
from typing import Callable, List

import pytest
import torch
from torch import nn

from initaudit import Report

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# a model file: a residual stack written inline (h = h + f(h)), no module output for its stream
INLINE_RESIDUAL_STACK = """
import torch
from torch import nn

class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.fc1 = nn.ModuleList(nn.Linear(32, 32) for _ in range(3))
        self.fc2 = nn.ModuleList(nn.Linear(32, 32) for _ in range(3))
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        h = self.embed(x)
        for fc1, fc2 in zip(self.fc1, self.fc2):
            h = h + fc2(torch.relu(fc1(h)))
        return self.head(h)

def build():
    torch.manual_seed(0)
    return Stack(), torch.randn(64, 8)
"""


def codes(report: Report, severity: str = None) -> List[str]:
    """Codes of the report's findings, optionally only those of one severity."""
    return [f.code for f in report.findings if severity is None or f.severity == severity]


def findings(report: Report, code: str):
    return [f for f in report.findings if f.code == code]


def mlp(depth: int, width: int = 256, inputs: int = 64, outputs: int = 10, act=nn.ReLU,
        init: Callable[[nn.Linear], None] = None) -> nn.Sequential:
    """Linear/act stack of ``depth`` Linear layers; ``init`` re-initializes each Linear."""
    layers: List[nn.Module] = [nn.Linear(inputs, width), act()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), act()]
    layers.append(nn.Linear(width, outputs))
    model = nn.Sequential(*layers)
    if init is not None:
        for m in model:
            if isinstance(m, nn.Linear):
                init(m)
    return model


def he_init(layer: nn.Linear) -> None:
    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    nn.init.zeros_(layer.bias)


@pytest.fixture
def write_target(tmp_path):
    """Write a model file; returns its path as a string."""

    def write(source: str, name: str = "model.py") -> str:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", help="run the property tests with thousands of examples")


def pytest_configure(config):
    if config.getoption("--long"):
        import os

        os.environ["INITAUDIT_LONG"] = "1"
