"""--sweep: how each layer's signal at init scales with the width (analysis.sweep)."""

import math

import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, codes

from initaudit.analysis.sweep import log_slope, parse_sweep
from initaudit.api import sweep
from initaudit.cli import main

MLP = (
    "import math\n"
    "import torch\n"
    "from torch import nn\n"
    "def build(width=64, hidden_std=None, head_std=None, depth=6):\n"
    "    layers = [nn.Linear(32, width), nn.ReLU()]\n"
    "    for _ in range(depth - 2):\n"
    "        layers += [nn.Linear(width, width), nn.ReLU()]\n"
    "    model = nn.Sequential(*layers, nn.Linear(width, 10))\n"
    "    hidden = [m for m in model if isinstance(m, nn.Linear)][1:-1]\n"
    "    with torch.no_grad():\n"
    "        for m in hidden:\n"
    "            if hidden_std == 'he':\n"
    "                nn.init.kaiming_normal_(m.weight, nonlinearity='relu')\n"
    "            elif hidden_std is not None:\n"
    "                nn.init.normal_(m.weight, std=hidden_std)\n"
    "        if head_std == 'mup':\n"
    "            nn.init.normal_(model[-1].weight, std=1.0 / width)  # muP's output layer: 1/fan_in\n"
    "        elif head_std is not None:\n"
    "            nn.init.normal_(model[-1].weight, std=head_std)\n"
    "    return model, torch.randn(64, 32)\n"
)
WIDTHS = [64, 128, 256, 512]


def test_the_slope_is_the_exponent_of_a_power_law():
    assert log_slope(WIDTHS, [3 * w ** 0.5 for w in WIDTHS]) == pytest.approx(0.5)
    assert log_slope(WIDTHS, [7.0] * 4) == pytest.approx(0.0)
    assert log_slope(WIDTHS, [None, 1.0, 0.0, None]) is None  # fewer than two usable values


def test_pytorch_default_init_is_flat_in_width_while_the_depth_rules_still_fire():
    result = sweep(f"{EXAMPLES / 'deep_mlp.py'}:build", "width", WIDTHS)
    assert result.flagged == [], result.table()
    assert all(abs(t.slope) < 0.2 for t in result.trends)
    assert all("IA201" in codes(r) for r in result.reports)  # its problem is depth, not width


def test_a_fixed_std_init_grows_with_width_and_is_flagged(write_target):
    path = write_target(MLP, name="mlp_sweep.py")
    result = sweep(f"{path}:build", "width", WIDTHS, factory_args={"hidden_std": 0.05, "head_std": 0.05})
    hidden = [t for t in result.trends if t.kind == "hidden"]
    # a fixed std instead of 1/sqrt(fan_in): each layer's gain grows as sqrt(width)
    assert hidden and all(t.flagged and t.slope == pytest.approx(0.5, abs=0.15) for t in hidden), result.table()
    head = next(t for t in result.trends if t.kind == "output")
    assert head.flagged and "1/fan_in" in head.advice
    assert next(t for t in result.trends if t.kind == "input").flagged is False  # PyTorch's default


def test_fan_in_scaled_hidden_layers_and_a_mup_head_are_not_flagged(write_target):
    path = write_target(MLP, name="mlp_sweep_mup.py")
    result = sweep(f"{path}:build", "width", WIDTHS, factory_args={"hidden_std": "he", "head_std": "mup"})
    assert result.flagged == [], result.table()
    head = next(t for t in result.trends if t.kind == "output")
    assert head.slope == pytest.approx(-0.5, abs=0.15)  # muP's logits shrink as 1/sqrt(width): allowed
    # the table names muP's exponent for each kind: the measured slopes sit on it
    assert head.mup == -0.5 and all(t.mup == 0.0 for t in result.trends if t.kind != "output")
    assert all(abs(t.slope - t.mup) < 0.15 for t in result.trends), result.table()
    assert "muP" in result.table().splitlines()[1]


def test_the_command_line(write_target):
    path = write_target(MLP, name="mlp_sweep_cli.py")
    flat = CliRunner().invoke(main, [f"{path}:build", "--sweep", "width=64,128,256", "-q"])
    assert flat.exit_code == 0 and "stays the same size" in flat.stdout, flat.output
    grows = CliRunner().invoke(main, [f"{path}:build", "--sweep", "width=64,128,256", "--factory-arg",
                                      "hidden_std=0.05", "-q"])
    assert grows.exit_code == 1 and "grow with width" in grows.stdout
    for bad in (["--sweep", "width=64"], ["--sweep", "width=a,b"], ["--sweep", "64,128"],
                ["--sweep", "width=64,128", "--fix"]):
        result = CliRunner().invoke(main, [f"{path}:build", *bad])
        assert result.exit_code == 2 and "Traceback" not in result.output, bad


def test_parse_sweep():
    assert parse_sweep("width=64,128") == ("width", [64, 128])
    assert parse_sweep("scale=0.5,1.5") == ("scale", [0.5, 1.5])
    assert math.isclose(parse_sweep("w=1e2,2e2")[1][1], 200.0)


MUP = (
    "import torch\n"
    "from torch import nn\n"
    "def build(width=64, mup=False, depth=4, lr=1e-2):\n"
    "    layers = [nn.Linear(32, width), nn.ReLU()]\n"
    "    for _ in range(depth - 2):\n"
    "        layers += [nn.Linear(width, width), nn.ReLU()]\n"
    "    model = nn.Sequential(*layers, nn.Linear(width, 10))\n"
    "    linears = [m for m in model if isinstance(m, nn.Linear)]\n"
    "    with torch.no_grad():\n"
    "        for m in linears[:-1]:\n"
    "            nn.init.kaiming_normal_(m.weight, nonlinearity='relu')\n"
    "            nn.init.zeros_(m.bias)\n"
    "        # muP's output layer: std 1/fan_in; the standard one: 1/sqrt(fan_in)\n"
    "        nn.init.normal_(linears[-1].weight, std=(1.0 / width) if mup else width ** -0.5)\n"
    "        nn.init.zeros_(linears[-1].bias)\n"
    "    if mup:  # Tensor Programs V, Table 3 (Adam): hidden and output learning rates scale as 1/fan_in\n"
    "        groups = [{'params': linears[0].parameters(), 'lr': lr}]\n"
    "        groups += [{'params': m.parameters(), 'lr': lr * 64 / width} for m in linears[1:]]\n"
    "        optimizer = torch.optim.Adam(groups, lr=lr)\n"
    "    else:\n"
    "        optimizer = torch.optim.Adam(model.parameters(), lr=lr)\n"
    "    return {'model': model, 'input': torch.randn(64, 32), 'optimizer': optimizer}\n"
)


def test_the_standard_parametrization_with_adam_is_flagged_and_mup_is_flat(write_target):
    # written from the papers' formulas, not by importing mup: with one Adam learning rate the
    # update of the logits grows with width; muP's per-layer rates keep every layer's update flat
    path = write_target(MUP, name="mup_sweep.py")
    standard = sweep(f"{path}:build", "width", WIDTHS)
    head = next(t for t in standard.updates if t.kind == "output")
    assert head.flagged and head.slope > 0.75, standard.table()
    assert all(t.flagged for t in standard.updates if t.kind == "hidden")
    assert not next(t for t in standard.updates if t.kind == "input").flagged
    mup = sweep(f"{path}:build", "width", WIDTHS, factory_args={"mup": True})
    assert mup.flagged == [], mup.table()
    assert all(abs(t.slope) < 0.2 for t in mup.updates)
    # the user's optimizer was stepped and put back: its state is empty again
    for report in standard.reports + mup.reports:
        assert report.recording.step_losses is not None


def test_the_sweep_plot_is_written(write_target, tmp_path):
    pytest.importorskip("matplotlib")
    path = write_target(MUP, name="mup_sweep_plot.py")
    png = tmp_path / "sweep.png"
    result = CliRunner().invoke(main, [f"{path}:build", "--sweep", "width=64,128", "--plot", str(png), "-q"])
    assert result.exit_code == 1, result.output  # the standard parametrization's updates grow
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


SHARED_ACTIVATION = (
    "import torch\n"
    "from torch import nn\n"
    "class Net(nn.Module):\n"
    "    def __init__(self, width):\n"
    "        super().__init__()\n"
    "        self.layers = nn.ModuleList([nn.Linear(32, width)] + [nn.Linear(width, width) for _ in range(4)])\n"
    "        self.head = nn.Linear(width, 10)\n"
    "        self.act = nn.Tanh()  # one module, called after every layer\n"
    "        with torch.no_grad():\n"
    "            nn.init.constant_(self.layers[2].weight, 0.05)  # whatever the fan-in: grows with width\n"
    "    def forward(self, x):\n"
    "        for layer in self.layers:\n"
    "            x = self.act(layer(x))\n"
    "        return self.head(x)\n"
    "def build(width=64):\n"
    "    torch.manual_seed(0)\n"
    "    return Net(width), torch.randn(64, 32)\n"
)


def test_a_layer_reading_a_shared_activation_is_judged_on_the_call_it_reads(write_target):
    # the activation module's first call is the first layer's: a later layer read against it
    # would carry the constant layer's growth into its own slope
    path = write_target(SHARED_ACTIVATION, name="shared_act_sweep.py")
    result = sweep(f"{path}:build", "width", WIDTHS)
    flagged = {t.name for t in result.flagged}
    assert flagged == {"layers.2"}, result.table()
