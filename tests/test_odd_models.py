"""Odd models get a clear finding or a clean skip, never a traceback; bad input gets one line."""

import dataclasses
import sys
import warnings

import pytest
import torch
from click.testing import CliRunner
from conftest import EXAMPLES, codes
from torch import nn

from initaudit import InputError, audit
from initaudit.cli import main


def small():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def names(report):
    return [t.name for t in report.parameters]


def test_no_parameters():
    rep = audit(nn.Sequential(nn.ReLU(), nn.Tanh()), torch.randn(4, 3))
    assert rep.parameters == [] and rep.findings == []


def test_lazy_modules_are_materialized_and_said_so():
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 2))
    rep = audit(model, torch.randn(4, 8))
    assert model[0].weight.shape == (16, 8)
    assert any("materialized 2 lazy parameter(s)" in n for n in rep.notes)
    assert "note: materialized" in rep.table()


def test_lazy_batchnorm_keeps_its_own_running_statistics_and_the_rng():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LazyLinear(16), nn.LazyBatchNorm1d(), nn.ReLU(), nn.LazyLinear(4))
    x = torch.randn(8, 5) * 3 + 2  # statistics far from the buffers' init, so an update would show
    rng = torch.get_rng_state()
    rep = audit(model, x)
    bn = model[1]
    assert any("materialized 6 lazy parameter(s)" in n for n in rep.notes)
    assert torch.equal(bn.running_mean, torch.zeros(16)) and torch.equal(bn.running_var, torch.ones(16))
    assert bn.num_batches_tracked.item() == 0
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert {t.name for t in rep.parameters} == {"0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"}


def test_torch_compile_is_audited_with_the_original_names():
    rep = audit(torch.compile(small()), torch.randn(4, 8))
    assert names(rep) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert any("torch.compile" in n for n in rep.notes)


def test_data_parallel_is_unwrapped():
    rep = audit(nn.DataParallel(small()), torch.randn(4, 8))
    assert names(rep) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_torchscript_audits_parameters_and_says_what_it_cannot():
    rep = audit(torch.jit.script(small()), torch.randn(4, 8))
    assert names(rep) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(t.grad_status == "ok" for t in rep.parameters)
    assert any("TorchScript" in n for n in rep.notes)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_low_and_high_precision(dtype):
    rep = audit(small().to(dtype), torch.randn(4, 8, dtype=dtype))
    assert all(t.dtype == str(dtype).replace("torch.", "") for t in rep.parameters)
    assert all(t.std and t.std > 0 for t in rep.parameters if t.ndim == 2)


def test_complex_parameters_are_listed_not_judged():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nn.Linear(8, 2).to(torch.complex64)
        rep = audit(model, torch.randn(4, 8, dtype=torch.complex64))
    assert all(t.grad_status == "not-floating" and "not floating point" in t.notes[0] for t in rep.parameters)


def test_integer_and_quantized_buffers():
    model = small()
    model.register_buffer("steps", torch.arange(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.register_buffer("q", torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8))
    before = model.q.clone()
    rep = audit(model, torch.randn(4, 8))
    assert rep.buffers == []  # neither is a floating-point statistic
    assert torch.equal(model.q.int_repr(), before.int_repr())


def test_sparse_parameter():
    class Sparse(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 8).to_sparse())

        def forward(self, x):
            return torch.sparse.mm(self.w, x.T).T

    rep = audit(Sparse(), torch.randn(4, 8))
    (w,) = rep.parameters
    assert w.std > 0 and w.grad_status == "ok"


def test_frozen_parameters_get_no_ia301():
    model = small()
    model[0].requires_grad_(False)
    assert "IA301" not in codes(audit(model, torch.randn(4, 8)))


def test_keyword_only_forward_and_dataclass_output():
    @dataclasses.dataclass
    class Output:
        logits: torch.Tensor

    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 2)

        def forward(self, *, features):
            return Output(self.lin(features))

    rep = audit(KW(), {"features": torch.randn(4, 8)})
    assert all(t.grad_status == "ok" for t in rep.parameters)


def test_meta_device_is_a_clear_error():
    with pytest.raises(InputError, match="meta device.*to_empty"):
        audit(small().to("meta"), torch.randn(4, 8))


def test_model_on_two_devices_names_both():
    model = small()
    model.register_buffer("table", torch.zeros(4, device="meta"))  # a second device: cpu and meta
    with pytest.raises(InputError, match="spread over cpu and meta"):
        audit(model, torch.randn(4, 8))


# bad input to the CLI -----------------------------------------------------------------------------

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, text):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr
    assert result.stdout == ""


def test_unknown_device():
    one_line_error(run(f"{EXAMPLES / 'healthy_mlp.py'}:build", "--device", "tpu9"), "unknown device 'tpu9'")


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(3)
    import sys

    sys.path.insert(0, str(EXAMPLES))
    import zero_hidden

    model = zero_hidden.build()
    nn.init.kaiming_normal_(model[2].weight, nonlinearity="relu")
    path = tmp_path / "good.pt"
    torch.save(model.state_dict(), path)
    result = run(f"{EXAMPLES / 'zero_hidden.py'}:build", "--checkpoint", path, "--select", "IA101")
    assert result.exit_code == 0, result.output  # the checkpoint's weights, not the factory's zero layer


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    one_line_error(run(f"{EXAMPLES / 'zero_hidden.py'}:build", "--checkpoint", path), "is not a state dict")
    wrong = tmp_path / "wrong.pt"
    torch.save({"other.weight": torch.zeros(2)}, wrong)
    one_line_error(run(f"{EXAMPLES / 'zero_hidden.py'}:build", "--checkpoint", wrong), "does not fit the model")


def _zero_hidden_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("zero_hidden_example", EXAMPLES / "zero_hidden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_safetensors_checkpoint_values_are_what_is_audited(tmp_path):
    from safetensors.torch import save_file

    from initaudit.load.target import load_checkpoint

    torch.manual_seed(3)
    factory = _zero_hidden_module()
    model = factory.build()
    nn.init.kaiming_normal_(model[2].weight, nonlinearity="relu")
    good = tmp_path / "good.safetensors"
    save_file(model.state_dict(), str(good))

    fresh = factory.build()
    assert fresh[2].weight.abs().max() == 0
    load_checkpoint(fresh, str(good))
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    # the factory's model has the zero layer (IA101); the checkpoint's weights do not
    assert run(f"{EXAMPLES / 'zero_hidden.py'}:build", "--select", "IA101").exit_code == 1
    result = run(f"{EXAMPLES / 'zero_hidden.py'}:build", "--checkpoint", good, "--select", "IA101")
    assert result.exit_code == 0, result.output


def test_safetensors_checkpoint_with_a_zero_layer_is_found(tmp_path):
    import importlib.util

    from safetensors.torch import save_file

    spec = importlib.util.spec_from_file_location("healthy_mlp_example", EXAMPLES / "healthy_mlp.py")
    healthy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthy)
    model = healthy.build()
    nn.init.zeros_(model[4].weight)
    bad = tmp_path / "bad.safetensors"
    save_file(model.state_dict(), str(bad))
    target = f"{EXAMPLES / 'healthy_mlp.py'}:build"
    assert run(target, "--select", "IA101").exit_code == 0
    result = run(target, "--checkpoint", bad, "--select", "IA101", "--format", "json")
    assert result.exit_code == 1, result.output
    assert "IA101" in result.stdout and '"4.weight"' in result.stdout, result.stdout


def test_safetensors_checkpoint_with_tied_weights_saved_once(tmp_path):
    from safetensors.torch import save_model

    from initaudit.load.target import load_checkpoint

    def tied():
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        model[2].weight = model[0].weight
        return model

    source = tied()
    path = tmp_path / "tied.safetensors"
    save_model(source, str(path))  # stores one of the two tied names
    target = tied()
    load_checkpoint(target, str(path))
    assert target[2].weight is target[0].weight
    assert torch.equal(target[0].weight, source[0].weight)


def test_corrupt_safetensors_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"this is not a safetensors file")
    one_line_error(run(f"{EXAMPLES / 'zero_hidden.py'}:build", "--checkpoint", path),
                   "cannot read safetensors checkpoint")
    truncated = tmp_path / "truncated.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.randn(16, 16)}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    one_line_error(run(f"{EXAMPLES / 'zero_hidden.py'}:build", "--checkpoint", truncated),
                   "cannot read safetensors checkpoint")


def test_safetensors_checkpoint_without_the_package(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"whatever is in it is never read")
    # a None entry makes `import safetensors` (and its submodules) raise ImportError
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    # (recent torch.load reads .safetensors itself and says to install it too: the message is ours)
    one_line_error(run(f"{EXAMPLES / 'zero_hidden.py'}:build", "--checkpoint", path),
                   "needs the safetensors package: pip install safetensors")


class Exploit:
    """A pickle that, if loaded with weights_only=False, would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"0.weight": Exploit(str(marker))}, path)
    assert not marker.exists()
    one_line_error(run(f"{EXAMPLES / 'zero_hidden.py'}:build", "--checkpoint", path), "refused to load")
    assert not marker.exists()


def test_parametrized_weights_are_judged_by_their_effective_value():
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    layers = [parametrizations.weight_norm(nn.Linear(64, 64)) for _ in range(20)]
    model = nn.Sequential(*[m for layer in layers for m in (layer, nn.ReLU())], nn.Linear(64, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rep = audit(model, torch.randn(64, 64))
    effective = {t.name: t for t in rep.parameters if t.kind == "effective"}
    assert "0.weight" in effective and "0.parametrizations.weight.original1" in effective["0.weight"].notes[0]
    # weight_norm keeps PyTorch's default scale: the effective weights are 1/sqrt(6) of He
    assert "IA201" in codes(rep)
    assert rep.summary()["parameters"] == 20 * 3 + 2  # g, v, bias per layer and the head; no effective
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_spectral_norm_power_iteration_is_not_advanced_by_the_audit():
    from torch.nn.utils import parametrizations

    model = nn.Sequential(parametrizations.spectral_norm(nn.Linear(8, 8)), nn.ReLU(), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    audit(model, torch.randn(4, 8))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the u and v vectors included


def test_params_only_needs_no_input_and_runs_the_value_rules():
    class Custom(nn.Module):  # nothing to infer an input from, and never run
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(16, 16))
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x):
            raise AssertionError("--params-only must not run the forward")

    rep = audit(Custom(), params_only=True)
    assert codes(rep) == ["IA101"]
    assert all(t.grad_status == "not-run" for t in rep.parameters)
    assert any("skipped IA201" in n and "IA301" in n for n in rep.notes)
    assert "IA201" not in rep.rules and "IA101" in rep.rules


def test_no_backward_skips_the_gradient_rules():
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = small()
            self.extra = nn.Linear(3, 3)  # never called: IA301 with a backward

        def forward(self, x):
            return self.body(x)

    rep = audit(WithUnused(), torch.randn(4, 8), no_backward=True, select=["IA3", "IA1"])
    assert "IA301" not in codes(rep) and any("skipped IA301" in n for n in rep.notes)
    assert all(t.grad_status == "not-run" for t in rep.parameters)


def test_cli_params_only():
    result = run(f"{EXAMPLES / 'zero_hidden.py'}:build", "--params-only", "--format", "json")
    import json

    doc = json.loads(result.stdout)
    assert result.exit_code == 1 and [f["code"] for f in doc["findings"]] == ["IA101"]


class FakeTerminal:
    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_progress_shows_phases_only_after_two_seconds_and_only_on_a_terminal():
    from initaudit.core.progress import Progress

    now = [0.0]
    terminal = FakeTerminal()
    progress = Progress(stream=terminal, clock=lambda: now[0])
    progress.phase("building")
    assert terminal.text == ""  # a quick audit shows nothing
    now[0] = 3.0
    progress.phase("forward")
    assert "initaudit: forward... (3s)" in terminal.text
    progress.done()
    assert terminal.text.endswith("\r\x1b[K")
    quiet = Progress(enabled=False, stream=FakeTerminal(), clock=lambda: 10.0)
    quiet.phase("forward")
    assert quiet.stream.text == ""


def test_no_progress_when_stderr_is_not_a_terminal():
    result = run(f"{EXAMPLES / 'healthy_mlp.py'}:build", "--format", "json")
    assert result.stderr == ""


def test_progress_follows_the_audit_phases():
    from initaudit.core.progress import Progress

    terminal = FakeTerminal()
    clock = iter(range(0, 1000, 5))  # five seconds per look at the clock: every phase is shown
    progress = Progress(stream=terminal, clock=lambda: float(next(clock)))
    audit(small(), torch.randn(4, 8), progress=progress)
    shown = [part.split("...")[0] for part in terminal.text.split("initaudit: ")[1:]]
    assert shown == ["parameter statistics", "forward", "backward", "tracing", "rules"]
