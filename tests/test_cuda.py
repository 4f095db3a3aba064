"""The --device cuda path: statistics computed on the GPU, the user's model left where it was.

These run where CUDA is available (checked on a lent H100); on a CPU-only machine there is
no GPU path to exercise, and test_cli checks that `--device cuda` there is a clean exit 2.
"""

import copy
import json

import pytest
import torch
from click.testing import CliRunner
from conftest import EXAMPLES
from torch import nn

from initaudit import audit
from initaudit.cli import main

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


@cuda
def test_api_device_cuda_measures_on_gpu_and_moves_the_model_back():
    model = ConvNet()
    model.head.weight.grad = torch.ones_like(model.head.weight)
    grad = model.head.weight.grad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rep = audit(model, torch.randn(8, 3, 8, 8), device="cuda")
    assert model.head.weight.grad is grad and grad.device.type == "cpu"
    assert all(b.device.type == "cpu" for b in model.buffers())
    assert rep.device.startswith("cuda")
    assert all(t.device.startswith("cuda") for t in rep.parameters)
    assert all(p.device.type == "cpu" for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@cuda
def test_cuda_and_cpu_statistics_agree():
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 4))
    x = torch.randn(32, 16)
    # a deterministic loss: the default projection is drawn by each device's own generator
    loss = lambda out, inp: out.square().mean()  # noqa: E731
    cpu = {t.name: t for t in audit(model, x, loss=loss).parameters}
    gpu = {t.name: t for t in audit(model, x, loss=loss, device="cuda").parameters}
    for name, t in cpu.items():
        assert gpu[name].std == pytest.approx(t.std, rel=1e-5)
        assert gpu[name].grad.norm == pytest.approx(t.grad.norm, rel=1e-4)


@cuda
@pytest.mark.parametrize("example, code, exit_code",
                         [("deep_mlp", "IA201", 1), ("lstm_forget", "IA501", 0), ("zero_hidden", "IA101", 1)])
def test_cli_device_cuda(example, code, exit_code):
    result = CliRunner().invoke(main, [f"{EXAMPLES / example}.py:build", "--device", "cuda", "--format", "json"])
    assert result.exit_code == exit_code, result.output
    doc = json.loads(result.stdout)
    assert doc["device"].startswith("cuda")
    assert all(p["device"].startswith("cuda") for p in doc["parameters"])
    assert code in {f["code"] for f in doc["findings"]}


@cuda
def test_cli_device_auto_picks_cuda():
    result = CliRunner().invoke(main, [f"{EXAMPLES / 'healthy_mlp'}.py:build", "--device", "auto", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["device"].startswith("cuda")


@cuda
def test_same_findings_on_cuda_as_on_cpu():
    import sys

    sys.path.insert(0, str(EXAMPLES))
    import deep_mlp
    import lstm_forget

    rnn = nn.RNN(16, 64)
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(torch.linalg.qr(torch.randn(64, 64))[0] * 1.5)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    cases = [
        (deep_mlp.build(), None),
        (lstm_forget.build(), None),
        (rnn, None),
        (encoder, torch.randn(4, 6, 32)),
    ]
    for model, x in cases:
        cpu = sorted((f.code, f.location) for f in audit(model, x).findings)
        gpu = audit(model, x, device="cuda")
        assert sorted((f.code, f.location) for f in gpu.findings) == cpu, type(model).__name__
        assert gpu.recording.jacobian_gain is None or gpu.recording.jacobian_gain > 0


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fix_on_cuda_stays_on_cuda(dtype):
    import sys

    sys.path.insert(0, str(EXAMPLES))
    import lstm_forget
    import zero_hidden

    for module in (zero_hidden, lstm_forget):
        model = module.build().to("cuda", dtype)
        result = audit(model, fix=True)
        assert result.fix.before.findings and not [f for f in result.findings if f.severity != "info"]
        assert all(p.device.type == "cuda" and p.dtype == dtype for p in model.parameters())


@cuda
def test_model_on_cpu_and_cuda_is_a_clear_error_unless_a_device_is_given():
    from initaudit import InputError

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2).cuda())
    with pytest.raises(InputError, match="spread over cpu and cuda:0"):
        audit(model, torch.randn(4, 8))
    rep = audit(model, torch.randn(4, 8), device="cuda")
    assert rep.device.startswith("cuda") and model[0].weight.device.type == "cpu"


@cuda
def test_statistics_on_the_gpu_never_wait_for_it():
    """Every per-tensor and per-call statistic only queues work on the GPU: with CUDA's sync
    debug mode set to error, anything that waits for the device (an ``.item()``, a blocking
    host-to-device copy of a Python scalar) raises. The one wait is ``Deferred.resolve``."""
    from initaudit import stats

    gen = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(1 << 21, device="cuda", generator=gen).reshape(2048, 1024)
    half = w.to(torch.bfloat16)
    out = torch.relu(torch.randn(16, 8, 4, 4, device="cuda", generator=gen))
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        queued = [
            stats.fast_summary(w), stats.fast_summary(half), stats.tensor_summary(w), stats.small_counts(w),
            stats.probe(w), stats.shape_stats(w), stats.gradient_fast(w), stats.gradient_fast(half),
            stats.output_moments(out, "relu"), stats.output_moments(out.half(), "tanh"), torch.cat(stats.partial_fast(half)),
            torch.cat(stats.partial_moments(w, w.numel())), stats.fast_summary(w[:0]),
        ]
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert all(t.device.type == "cuda" for t in queued)
    assert stats.combine_fast(w.numel(), stats.fast_summary(w).tolist())[2] == pytest.approx(w.min().item())


@cuda
def test_factored_linear_gradients_agree_with_the_cpu():
    """Wide layers on few rows get their weight gradients from Gram matrices (initaudit.factored),
    reduced in a hook on the autograd node while the backward runs on the GPU."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 8))
    x = torch.randn(8, 128)
    loss = lambda out, inp: out.square().mean()  # noqa: E731
    cpu = {t.name: t for t in audit(model, x, loss=loss).parameters}
    gpu = {t.name: t for t in audit(model, x, loss=loss, device="cuda").parameters}
    for name, t in cpu.items():
        assert gpu[name].grad.norm == pytest.approx(t.grad.norm, rel=1e-4), name
        assert gpu[name].grad.std == pytest.approx(t.grad.std, rel=1e-4), name


@cuda
def test_optimizer_steps_on_the_gpu_are_undone_and_the_fix_reproduces_on_the_gpu():
    torch.manual_seed(0)
    model = ConvNet().cuda()
    x, y = torch.randn(8, 3, 8, 8, device="cuda"), torch.randint(0, 4, (8,), device="cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = audit(model, x, loss=lambda out, _x: nn.functional.cross_entropy(out, y), optimizer=opt, steps=2)
    assert report.recording.step_losses and report.device.startswith("cuda")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert opt.state_dict()["state"] == {}
    # the fix draws from a generator on the model's device: the emitted code reproduces it there
    from initaudit.fixing.fixer import repair

    layers = [nn.Linear(16, 64), nn.ReLU()]
    for _ in range(12):
        layers += [nn.Linear(64, 64), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(64, 4)).cuda()  # PyTorch's default init: IA201
    fresh = copy.deepcopy(model)
    x = torch.randn(32, 16, device="cuda")
    result = repair(model, audit(model, x), x)
    assert result.changes and "generator=generator" in result.emit_code()
    namespace = {}
    exec(result.emit_code(), namespace)
    namespace["init_weights"](fresh)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())
