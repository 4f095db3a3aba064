"""--optimizer: the first optimizer steps, recorded and undone (record.step), and IA701."""

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import ROOT, codes, findings
from torch import nn
from torch.nn import functional as F

from initaudit import audit
from initaudit.cli import main
from initaudit.record.step import parse_optimizer


def model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 10))
    x, y = torch.randn(32, 16), torch.randint(0, 10, (32,))
    return model, x, (lambda out, _x: F.cross_entropy(out, y))


def test_the_steps_are_undone_model_optimizer_grads_and_rng():
    model, x, loss = model_and_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    # an optimizer in the middle of training: state to keep, gradients the user holds
    loss(model(x), x).backward()
    opt.step()
    loss(model(x), x).backward()
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: (p.grad, p.grad.clone()) for n, p in model.named_parameters()}
    opt_state = {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                 for i, s in opt.state_dict()["state"].items()}
    rng = torch.get_rng_state()
    report = audit(model, x, loss=loss, optimizer=opt, steps=3)
    assert len(report.recording.step_losses) == 4 and report.recording.step_own_loss
    assert all(t.update_ratio > 0 for t in report.recording.parameters if t.requires_grad)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for n, p in model.named_parameters():
        assert p.grad is grads[n][0] and torch.equal(p.grad, grads[n][1]), n
    after = opt.state_dict()["state"]
    assert after.keys() == opt_state.keys()
    for i, s in opt_state.items():
        for k, v in s.items():
            assert torch.equal(after[i][k], v) if torch.is_tensor(v) else after[i][k] == v, (i, k)
    assert torch.equal(torch.get_rng_state(), rng) and not model.training


def test_a_step_that_blows_the_loss_up_is_an_error_one_that_multiplies_it_a_warning_a_rise_info():
    model, x, loss = model_and_batch()
    blown = audit(model, x, loss=loss, optimizer="SGD(lr=1e30)")
    (f,) = findings(blown, "IA701")
    assert f.severity == "error" and "non-finite" in f.message
    raised = audit(model, x, loss=loss, optimizer="SGD(lr=10.0)")  # 2.4 -> 4.5: overshoot, less than 10x
    (f,) = findings(raised, "IA701")
    assert f.severity == "info" and "raise the loss" in f.message
    multiplied = audit(model, x, loss=loss, optimizer="SGD(lr=100.0)")  # 2.4 -> 58: more than 10x
    (f,) = findings(multiplied, "IA701")
    assert f.severity == "warning" and "did not train" in f.message
    assert multiplied.recording.step_losses[-1] > 10 * multiplied.recording.step_losses[0]
    # the threshold is an option: the same step under loss-growth 100 is info again
    relaxed = audit(model, x, loss=loss, optimizer="SGD(lr=100.0)", options={"loss-growth": 100.0})
    assert [f.severity for f in findings(relaxed, "IA701")] == ["info"]


def test_a_sane_step_and_the_projection_loss_are_not_reported():
    model, x, loss = model_and_batch()
    assert "IA701" not in codes(audit(model, x, loss=loss, optimizer="SGD(lr=0.1)"))
    # without a loss of yours the audit's projection is unbounded below: no rise to judge
    projected = audit(model, x, optimizer="SGD(lr=100.0)")
    assert not projected.recording.step_own_loss and "IA701" not in codes(projected)
    assert audit(model, x, loss=loss).recording.step_losses is None  # no optimizer, no steps


def test_optimizer_specs_are_parsed_not_evaluated():
    params = [nn.Parameter(torch.zeros(2))]
    opt = parse_optimizer("AdamW(lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))")(params)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.95)
    for bad in ("os.system('true')", "AdamW(lr=__import__('os'))", "NotAnOptimizer(lr=1)", "AdamW(1e-3)", "AdamW"):
        with pytest.raises(ValueError):
            parse_optimizer(bad)


def test_the_command_line_and_the_factory(write_target, tmp_path):
    path = write_target(
        "import torch\n"
        "from torch import nn\n"
        "from torch.nn import functional as F\n"
        "def build(with_optimizer=False):\n"
        "    torch.manual_seed(0)\n"
        "    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10))\n"
        "    x, y = torch.randn(32, 16), torch.randint(0, 10, (32,))\n"
        "    out = {'model': model, 'input': x, 'loss': lambda o, _x: F.cross_entropy(o, y)}\n"
        "    if with_optimizer:\n"
        "        out['optimizer'] = torch.optim.SGD(model.parameters(), lr=1e30)\n"
        "    return out\n"
    )
    blown = CliRunner().invoke(main, [f"{path}:build", "--optimizer", "SGD(lr=1e30)", "--format", "json"])
    assert blown.exit_code == 1, blown.output
    doc = json.loads(blown.stdout)
    import jsonschema

    jsonschema.validate(doc, json.loads((ROOT / "initaudit" / "schema.json").read_text()))
    assert doc["first_steps"]["optimizer"] == "SGD(lr=1e30)" and doc["first_steps"]["own_loss"]
    assert set(doc["first_steps"]["output_changes"]) == {"0", "2"}
    assert any(f["code"] == "IA701" for f in doc["findings"])
    factory = CliRunner().invoke(main, [f"{path}:build", "--factory-arg", "with_optimizer=True"])
    assert factory.exit_code == 1 and "IA701" in factory.stdout
    for bad in (["--optimizer", "Adamm(lr=1)"], ["--optimizer", "SGD(lr=0.1)", "--steps", "4"]):
        result = CliRunner().invoke(main, [f"{path}:build", *bad])
        assert result.exit_code == 2 and "Traceback" not in result.output, bad


def test_without_a_backward_the_steps_are_not_taken_and_the_report_says_so():
    model, x, loss = model_and_batch()
    report = audit(model, x, loss=loss, optimizer="SGD(lr=1e30)", no_backward=True)
    assert report.recording.step_losses is None and "IA701" not in codes(report)
    assert any("optimizer" in note for note in report.notes)


def test_ia702_an_update_larger_than_the_weight_and_one_rounded_away():
    model, x, loss = model_and_batch()
    rewritten = findings(audit(model, x, loss=loss, optimizer="Adam(lr=1.0)"), "IA702")
    assert len(rewritten) == 1 and "rewrites the init" in rewritten[0].message
    assert set(rewritten[0].locations) == {"0.weight", "4.weight"}
    rounded = findings(audit(model, x, loss=loss, optimizer="SGD(lr=1e-12)"), "IA702")
    assert len(rounded) == 1 and "rounded away" in rounded[0].message
    assert "IA702" not in codes(audit(model, x, loss=loss, optimizer="Adam(lr=1e-3)"))
    # a weight whose gradient is exactly zero (everything after it is zero) is not moved at any
    # precision: IA302's finding, not a rounding
    torch.manual_seed(0)
    cut = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    nn.init.zeros_(cut[2].weight)
    nn.init.zeros_(cut[2].bias)
    report = audit(cut, x, loss=loss, optimizer="SGD(lr=1e-12)")
    assert next(t for t in report.recording.parameters if t.name == "0.weight").grad.norm == 0
    assert not any("0.weight" in f.locations for f in findings(report, "IA702"))
    # bfloat16 weights without a float32 copy: an update float32 would keep is lost
    bf16 = model.to(torch.bfloat16)
    report = audit(bf16, x.to(torch.bfloat16), loss=lambda out, _x: loss(out.float(), _x), optimizer="SGD(lr=1e-5)")
    assert any("rounded away" in f.message and "bfloat16" in f.message for f in findings(report, "IA702"))


def test_each_layers_output_change_over_the_steps():
    model, x, loss = model_and_batch()
    small = audit(model, x, loss=loss, optimizer="SGD(lr=1e-3)").recording.step_output_changes
    large = audit(model, x, loss=loss, optimizer="SGD(lr=1e-1)").recording.step_output_changes
    assert set(small) == {"0", "4"}
    # one SGD step changes the first layer's output by lr * (its weight's gradient) @ x: linear in lr
    assert large["0"] / small["0"] == pytest.approx(100, rel=1e-3)
    assert 0 < small["4"] < large["4"]
