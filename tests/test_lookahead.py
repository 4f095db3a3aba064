"""The look past the first step: a zero first-step gradient judged by whether later steps move it."""

import torch
from conftest import findings
from torch import nn

from initaudit import audit


class Block(nn.Module):
    """One transformer-style block, pre-LN (``x + f(LN(x))``) or post-LN (``LN(x + f(x))``)."""

    def __init__(self, d: int, pre_ln: bool) -> None:
        super().__init__()
        self.pre_ln = pre_ln
        self.ln = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        if self.pre_ln:
            return x + self.fc2(torch.relu(self.fc1(self.ln(x))))
        return self.ln(x + self.fc2(torch.relu(self.fc1(x))))


class Stack(nn.Module):
    def __init__(self, pre_ln: bool, d: int = 16, blocks: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.blocks = nn.Sequential(*(Block(d, pre_ln) for _ in range(blocks)))
        self.final = nn.LayerNorm(d)
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        return self.head(self.final(self.blocks(self.embed(x))))


def zero_gains(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.zeros_(m.weight)
    return model


def test_zero_gains_of_a_pre_ln_stack_unlock_within_a_few_steps():
    """The final gain moves at step 1, the block gains at step 2, what they silenced at step 3:
    measured, so the zero gains and the zero gradients behind them are information."""
    torch.manual_seed(0)
    report = audit(zero_gains(Stack(pre_ln=True)), torch.randn(32, 8))
    gains = findings(report, "IA601")
    assert len(gains) == 4 and {f.severity for f in gains} == {"info"}
    assert {f.severity for f in findings(report, "IA302")} == {"info"}
    moves = {t.name: t.moves_at_step for t in report.recording.parameters if t.moves_at_step is not None}
    assert moves["blocks.0.ln.weight"] == 2 and moves["blocks.0.fc1.weight"] == 3


def test_zero_gains_of_a_post_ln_stack_stay_stuck():
    """In a post-LN stack the first zero gain cuts the input off the stream for good: later
    steps move biases, never the gains before the last one: warnings."""
    torch.manual_seed(0)
    report = audit(zero_gains(Stack(pre_ln=False)), torch.randn(32, 8))
    assert "warning" in {f.severity for f in findings(report, "IA601")}
    assert "warning" in {f.severity for f in findings(report, "IA302")}
    stuck = [t.name for t in report.recording.parameters if t.moves_at_step == 0]
    assert "blocks.0.ln.weight" in stuck


def test_a_healthy_model_takes_no_look_ahead():
    torch.manual_seed(0)
    report = audit(Stack(pre_ln=True), torch.randn(32, 8))
    assert all(t.moves_at_step is None and t.grad_row_spread is None for t in report.recording.parameters)


def test_the_look_ahead_leaves_the_model_exactly_as_it_was():
    """Steps are taken on the real parameters and a BatchNorm and Dropout run again: values,
    running statistics, .grad, flags and the RNG are all as before."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    nn.init.zeros_(model[4].weight)  # zero gradients below it at step 1: the look-ahead runs
    model.eval()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(32, 8)
    rng = torch.get_rng_state()
    report = audit(model, x)
    assert any(t.moves_at_step is not None for t in report.recording.parameters)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training and torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[4].weight.grad is None
