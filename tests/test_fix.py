"""--fix: every safe fix repairs its finding, touches nothing else, keeps device and dtype."""

import copy
import math
import sys

import pytest
import torch
from click.testing import CliRunner
from conftest import EXAMPLES, codes, he_init, mlp
from torch import nn

from initaudit import audit
from initaudit.cli import main

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def relu_stack(width=32):
    return mlp(4, width=width, inputs=16, init=he_init)


def case_ia101():
    m = relu_stack()
    nn.init.zeros_(m[2].weight)
    return m, torch.randn(32, 16)


def case_ia102():
    m = relu_stack()
    nn.init.constant_(m[2].weight, 0.5)
    treat_inputs_alike(m[4])
    return m, torch.randn(32, 16)


def treat_inputs_alike(layer):
    """Every column of ``layer.weight`` the same random vector: the units feeding it get the same
    gradient, so a constant layer below it stays symmetric (IA102's error case)."""
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.out_features, 1).expand_as(layer.weight) / layer.in_features ** 0.5)


def case_ia103():
    m = relu_stack()
    with torch.no_grad():
        m[2].weight[0, 0] = float("nan")
    return m, torch.randn(32, 16)


def case_ia104():
    m = relu_stack()
    with torch.no_grad():
        m[2].weight.copy_(torch.randn(32, 32) * 1e8)
    return m, torch.randn(32, 16)


class TwinBranches(nn.Module):
    """Two deep copies of one layer on the same input, summed: they stay copies (IA105's warning)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        first = nn.Linear(32, 32)
        nn.init.kaiming_normal_(first.weight, nonlinearity="relu")
        self.a, self.b = first, copy.deepcopy(first)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        h = self.body(x)
        return self.head(torch.relu(self.a(h) + self.b(h)))


def case_ia105():
    return TwinBranches(), torch.randn(32, 16)


def case_ia201():
    m = relu_stack()
    with torch.no_grad():
        m[2].weight.mul_(100)  # 100x He: far past what trains (IA201 severe-factor 30)
    return m, torch.randn(32, 16)


class Tagger(nn.Module):
    def __init__(self, cell=nn.LSTM, **kw):
        super().__init__()
        self.rnn = cell(8, 16, batch_first=True, **kw)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def case_ia501():
    return Tagger(), torch.randn(4, 5, 8)


def case_ia502():
    return Tagger(), torch.randn(4, 5, 8)


def case_ia503():
    m = Tagger(nn.RNN)
    with torch.no_grad():
        m.rnn.weight_hh_l0.copy_(torch.linalg.qr(torch.randn(16, 16))[0] * 1.5)
    return m, torch.randn(4, 5, 8)


def case_ia601():
    m = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 2))
    nn.init.zeros_(m[1].weight)
    return m, torch.randn(32, 16)


CASES = {name[5:].upper(): fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("code", sorted(CASES))
def test_safe_fix_repairs_only_what_it_names(code, dtype):
    torch.manual_seed(0)
    model, x = CASES[code]()
    model = model.to(dtype)
    x = x.to(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # a rule that is info by default (IA501) is repaired when infos fail the run
    result = audit(model, x, select=[code], fix=True, seed=1, fail_on="info")
    fixed = [f for f in result.fix.before.findings if f.code == code]
    assert fixed, f"the case does not produce {code}"
    assert code not in codes(result), result.table()
    named = {n for f in fixed for n in [f.location, *f.locations]}
    after = model.state_dict()
    for k, v in before.items():
        assert after[k].dtype == dtype if v.is_floating_point() else True
        assert after[k].device == v.device
        if k not in named:
            assert torch.equal(after[k], v), f"{k} was not named by {code} but changed"
    assert any(not torch.equal(after[k], before[k]) for k in named if k in before)


@pytest.mark.parametrize("code", sorted(CASES))
def test_fix_is_reproducible_under_a_seed(code):
    def fixed_state(seed):
        torch.manual_seed(0)
        model, x = CASES[code]()
        audit(model, x, select=[code], fix=True, seed=seed)
        return model.state_dict()

    a, b = fixed_state(5), fixed_state(5)
    assert all(torch.equal(a[k], b[k]) or (a[k].isnan().any() and b[k].isnan().any()) for k in a)


def test_fix_leaves_the_callers_rng_alone():
    model, x = case_ia101()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    audit(model, x, fix=True)
    assert torch.equal(torch.get_rng_state(), state)


def test_lsuv_repairs_signal_findings_and_reports_factors():
    torch.manual_seed(0)
    model = mlp(20, width=128, inputs=64)
    result = audit(model, torch.randn(128, 64), fix=True)
    assert {"IA202", "IA206"} <= set(codes(result.fix.before))
    assert not {"IA202", "IA203", "IA206"} & set(codes(result))
    assert result.fix.lsuv and all(f > 0 for f in result.fix.lsuv.values())
    # LSUV's target: each layer's output variance on the batch is 1 within 0.1
    outputs = []
    hooks = [m.register_forward_hook(lambda m, a, o: outputs.append(o.var().item())) for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(torch.randn(128, 64))
    for h in hooks:
        h.remove()
    assert all(abs(v - 1) < 0.35 for v in outputs[:-1])  # a fresh batch: sampling noise on top


def test_findings_without_a_fix_say_why():
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 2)
            self.unused = nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    model = WithUnused()
    result = audit(model, torch.randn(8, 4), select=["IA301"], fix=True)
    entries = [u for u in result.fix.unfixed if u[0].code == "IA301"]
    assert [u[0].location for u in entries] == ["unused.weight", "unused.bias"]
    assert all("forward must use" in why for _, why in entries)
    assert result.fix.before.findings[0].fix is None


def test_unsafe_fix_unties_a_shared_layer_only_when_asked():
    def shared():
        layer = nn.Linear(8, 8)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), layer, nn.ReLU(), layer, nn.ReLU(), nn.Linear(8, 2))

    model = shared()
    result = audit(model, torch.randn(8, 4), select=["IA401"], fix=True)
    assert "IA401" in codes(result) and "unsafe" in result.fix.unfixed[0][1]
    model = shared()
    result = audit(model, torch.randn(8, 4), select=["IA401"], fix=True, unsafe_fixes=True)
    assert "IA401" not in codes(result)
    assert model[2] is not model[4] and model[2].weight is not model[4].weight


# the command line --------------------------------------------------------------------------------

def test_cli_fix_prints_before_after_and_exits_on_the_reaudit():
    result = CliRunner().invoke(main, [f"{EXAMPLES / 'deep_mlp.py'}:build", "--fix"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.index("Before the fix:") < out.index("Fixed:") < out.index("After the fix:")
    assert "IA201" in out and "LSUV scale factors" in out and "old std" in out


def test_cli_save_writes_a_loadable_state_dict_and_never_overwrites(tmp_path):
    path = tmp_path / "fixed.pt"
    target = f"{EXAMPLES / 'zero_hidden.py'}:build"
    assert CliRunner().invoke(main, [target, "--fix", "--save", str(path)]).exit_code == 0
    state = torch.load(path, weights_only=True)
    assert state["2.weight"].std() > 0.05  # the zero layer, re-initialized
    stamp = path.stat().st_mtime_ns
    again = CliRunner().invoke(main, [target, "--fix", "--save", str(path)])
    assert again.exit_code == 2 and "--force" in again.stderr and path.stat().st_mtime_ns == stamp
    assert CliRunner().invoke(main, [target, "--fix", "--save", str(path), "--force"]).exit_code == 0
    assert CliRunner().invoke(main, [target, "--save", str(tmp_path / "x.pt")]).exit_code == 2  # needs --fix


@pytest.mark.parametrize("example", ["deep_mlp", "lstm_forget", "zero_hidden"])
def test_emitted_code_fixes_a_freshly_built_model(example):
    # the forget bias (IA501) is information by default: fixed when infos fail the run
    extra = ["--fail-on", "info"] if example == "lstm_forget" else []
    result = CliRunner().invoke(main, [f"{EXAMPLES / example}.py:build", "--fix", "--emit-code", *extra])
    assert result.exit_code in ((0, 1) if extra else (0,)), result.stderr
    code = result.stdout
    assert "def init_weights(model" in code and code.count("torch.no_grad()") == 1
    assert ("import math" in code) == ("math." in code.split("def init_weights")[1])  # no unused import
    if extra:
        assert "bias_ih_l0" in code
    namespace = {}
    exec(code, namespace)
    sys.path.insert(0, str(EXAMPLES))
    module = __import__(example)
    torch.manual_seed(42)  # another draw than the one the fix was computed on
    fresh = module.build()
    namespace["init_weights"](fresh)
    after = audit(fresh)
    assert [f for f in after.findings if f.severity != "info"] == [], after.table()


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_emitted_code_reproduces_the_saved_fix_bit_for_bit(write_target, tmp_path, dtype):
    # a deep ReLU stack on PyTorch's default init (IA201: random re-draws, then LSUV scales):
    # the emitted code must give exactly the values --fix --save wrote
    path = write_target(
        "import torch\n"
        "from torch import nn\n"
        "def build():\n"
        "    layers = [nn.Linear(16, 64), nn.ReLU()]\n"
        "    for _ in range(12):\n"
        "        layers += [nn.Linear(64, 64), nn.ReLU()]\n"
        f"    return nn.Sequential(*layers, nn.Linear(64, 4)).to(torch.{dtype})\n",
        name=f"emit_{dtype}.py",
    )
    saved = tmp_path / "fixed.pt"
    fixed = CliRunner().invoke(main, [f"{path}:build", "--fix", "--save", str(saved), "--force"])
    assert saved.exists(), fixed.output
    emitted = CliRunner().invoke(main, [f"{path}:build", "--fix", "--emit-code", "--force"])
    code = emitted.stdout
    assert "generator=generator" in code and "kaiming_normal_" in code
    namespace = {}
    exec(code, namespace)
    sys.path.insert(0, str(tmp_path))
    module = __import__(f"emit_{dtype}")
    torch.manual_seed(0)  # the CLI builds with --seed's default, 0
    fresh = module.build()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    rng = torch.get_rng_state()
    namespace["init_weights"](fresh)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is not drawn from
    want = torch.load(saved, weights_only=True)
    got = fresh.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        assert want[name].dtype == got[name].dtype == getattr(torch, dtype)
        assert torch.equal(want[name], got[name]), name
    assert not torch.equal(before["2.weight"], got["2.weight"])  # the fix did change the model


def test_seeded_adds_the_generator_to_random_draws_only():
    from initaudit.fixing.fixer import seeded

    line = "nn.init.normal_(model.a, std=0.02); nn.init.zeros_(model.b)  # keep ( this"
    assert seeded(line) == "nn.init.normal_(model.a, std=0.02, generator=generator); nn.init.zeros_(model.b)  # keep ( this"
    assert seeded("torch.nn.init.orthogonal_(w)\nnn.init.uniform_(w, generator=g)") == \
        "torch.nn.init.orthogonal_(w, generator=generator)\nnn.init.uniform_(w, generator=g)"


def test_dry_run_reports_the_fix_and_changes_nothing():
    torch.manual_seed(0)
    layers = [nn.Linear(16, 64), nn.ReLU()]
    for _ in range(12):
        layers += [nn.Linear(64, 64), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(64, 4))
    shared = nn.Linear(64, 64)
    model[6] = model[10] = shared  # IA401: a structural fix, made on a copy
    state = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}
    x = torch.randn(32, 16)
    report = audit(model, x, fix=True, dry_run=True, unsafe_fixes=True)
    assert report.fix.dry_run and report.fix.model is None
    assert {c.code for c in report.fix.changes} >= {"IA201", "LSUV"} and report.fix.unsafe
    assert all(c.why for c in report.fix.changes)
    assert {"IA201", "IA401"} <= set(codes(report.fix.before)) and not set(codes(report)) & {"IA201", "IA401"}
    assert model[6] is model[10]  # not untied
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    # the same fix for real gives the values the dry run audited
    fixed = audit(model, x, fix=True, unsafe_fixes=True)
    assert [(c.name, c.new_std) for c in fixed.fix.changes] == [(c.name, c.new_std) for c in report.fix.changes]


def test_cli_dry_run_exits_as_the_model_is_and_refuses_save(tmp_path):
    target = f"{EXAMPLES / 'deep_mlp.py'}:build"
    result = CliRunner().invoke(main, [target, "--fix", "--dry-run"])
    assert result.exit_code == 1, result.output  # the model as it is still fails
    assert "Would change (--dry-run" in result.stdout and "variance-mismatch" in result.stdout
    refused = CliRunner().invoke(main, [target, "--fix", "--dry-run", "--save", str(tmp_path / "x.pt")])
    assert refused.exit_code == 2 and "nothing to save" in refused.stderr and not (tmp_path / "x.pt").exists()
    assert CliRunner().invoke(main, [target, "--dry-run"]).exit_code == 2  # needs --fix


class TiedLM(nn.Module):
    """An embedding tied to the output head, drawn far too large (IA201 on the embedding)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.body = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 100, bias=False)
        self.head.weight = self.emb.weight
        nn.init.normal_(self.emb.weight, std=30.0)

    def forward(self, ids):
        return self.head(self.body(self.emb(ids)))


def test_a_tied_parameter_is_changed_once_and_its_other_use_named():
    import dataclasses

    from initaudit.fixing.fixer import repair

    torch.manual_seed(0)
    model, ids = TiedLM(), torch.randint(0, 100, (16, 8))
    report = audit(model, ids, tied=[("emb.weight", "head.weight")])
    (scale,) = [f for f in report.findings if f.code == "IA201" and "emb.weight" in f.locations]
    # the same tensor found wrong for its other use as well: it must be drawn once, not twice
    other = dataclasses.replace(scale, location="head.weight", locations=["head.weight"],
                                fix="nn.init.normal_(model.head.weight, std=0.02)")
    report.findings.append(other)
    result = repair(model, report, ids)
    assert any("'emb.weight'" in t and "'head.weight'" in t for t in result.tied), result.tied
    assert any(f is other and "already changed by the fix of IA201" in why for f, why in result.unfixed)
    assert model.head.weight is model.emb.weight and 0.05 < float(model.emb.weight.std()) < 1  # not 0.02


class ResidualMLP(nn.Module):
    """h = embed(x); h = h + fc2(relu(fc1(h))) per block; head(h)."""

    def __init__(self, blocks=8, width=64, d_in=16, d_out=4):
        super().__init__()
        self.embed = nn.Linear(d_in, width)
        self.fc1 = nn.ModuleList([nn.Linear(width, width) for _ in range(blocks)])
        self.fc2 = nn.ModuleList([nn.Linear(width, width) for _ in range(blocks)])
        self.head = nn.Linear(width, d_out)

    def forward(self, x):
        h = self.embed(x)
        for fc1, fc2 in zip(self.fc1, self.fc2):
            h = h + fc2(torch.relu(fc1(h)))
        return self.head(h)


def _output_variance(model, layer, x):
    seen = []
    handle = layer.register_forward_hook(lambda m, a, out: seen.append(float(out.var())))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def test_fix_shrinks_residual_branches_that_blow_up_the_stream():
    torch.manual_seed(0)
    model = ResidualMLP()
    for layer in [model.embed, *model.fc1, *model.fc2, model.head]:
        nn.init.normal_(layer.weight, std=1.0)  # every layer 8x too large: the stream explodes
    x = torch.randn(64, 16)
    result = audit(model, x, fix=True)
    assert {"IA203", "IA206"} & set(codes(result.fix.before, "warning"))
    assert not [f for f in result.findings if f.severity != "info"], result.table()
    blocks = len(model.fc2)
    for i, end in enumerate(model.fc2):
        # each branch adds at most 1/L of the stream's unit variance (LSUV's tolerance 0.1)
        assert _output_variance(model, end, x) < 1.1 / blocks, i
        assert result.fix.lsuv[f"fc2.{i}"] < 1
    assert _output_variance(model, model.head, x) < 1.1
    with torch.no_grad():
        assert float(model(x).var()) < 1.1


def test_fix_never_grows_a_small_branch_or_head():
    # a plain ReLU stack on PyTorch's default init (IA201, IA202: LSUV on the main path) before
    # Fixup-style residual blocks whose last layers are zero, and a small head: those stay as built
    torch.manual_seed(0)
    stem = [nn.Linear(16, 64), nn.ReLU()]
    for _ in range(12):
        stem += [nn.Linear(64, 64), nn.ReLU()]

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(*stem)
            self.res = ResidualMLP(blocks=4, width=64, d_in=64)
            for end in self.res.fc2:
                nn.init.zeros_(end.weight)
            nn.init.normal_(self.res.head.weight, std=1e-3)

        def forward(self, x):
            return self.res(self.stem(x))

    model = Model()
    kept = {k: v.clone() for k, v in model.state_dict().items() if ".fc2." in k or "res.head." in k}
    result = audit(model, torch.randn(64, 16), fix=True)
    assert result.fix.lsuv and any(k.startswith("stem.") for k in result.fix.lsuv)  # the fix did act
    for name, value in kept.items():
        assert torch.equal(model.state_dict()[name], value), name


GPT2_N3 = """
import torch
from torch import nn
import transformers

def build():
    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=64, n_layer=4, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for module in model.modules():
            if type(module).__name__ in ("Conv1D", "Embedding"):
                nn.init.normal_(module.weight, std=3.0)  # every matrix N(0, 3): far off GPT-2's recipe
    return model, torch.randint(0, 32, (4, 16))
"""


def test_a_hugging_face_model_is_fixed_with_its_own_init_weights(write_target, tmp_path):
    pytest.importorskip("transformers", minversion="5")
    path = write_target(GPT2_N3, name="gpt2_n3.py")
    saved = tmp_path / "fixed.pt"
    fixed = CliRunner().invoke(main, [f"{path}:build", "--fix", "--save", str(saved), "--force"])
    assert "the model's _init_weights" in fixed.stdout, fixed.output
    state = torch.load(saved, weights_only=True)
    # GPT-2's residual projections: std 0.02 / sqrt(2 n_layer) (Radford et al. 2019; HF's _init_weights)
    fixed_proj = [k for k in state if k.endswith("mlp.c_proj.weight")]
    assert fixed_proj
    for key in fixed_proj:
        assert abs(float(state[key].std()) - 0.02 / math.sqrt(8)) < 0.1 * 0.02 / math.sqrt(8), key
    # what no finding at warning named keeps its value (its bias, the other matrices)
    sys.path.insert(0, str(tmp_path))
    module = __import__("gpt2_n3")
    torch.manual_seed(0)
    fresh, _ = module.build()
    built = {k: v.clone() for k, v in fresh.state_dict().items()}
    changed = {k for k in state if not torch.equal(state[k], built[k])}
    assert changed and all(k.endswith(".weight") for k in changed)
    assert "transformer.h.0.attn.c_attn.weight" not in changed and "transformer.h.0.mlp.c_proj.bias" not in changed
    # the emitted code says so and reproduces the saved values bit for bit
    code = CliRunner().invoke(main, [f"{path}:build", "--fix", "--emit-code", "--force"]).stdout
    assert "own_init(model, " in code and "_init_weights" in code
    namespace = {}
    exec(code, namespace)
    rng = torch.get_rng_state()
    namespace["init_weights"](fresh)
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not any(hasattr(p, "_is_hf_initialized") for p in fresh.parameters())  # the marks are taken off


def test_fix_scales_small_norm_gains_through_lsuv():
    # MobileViT with its BatchNorm gains drawn N(0, 0.02), as transformers 5's _init_weights
    # draws them (drawn here too, whatever the installed version): the signal vanishes (IA202),
    # and trains to chance (benchmarks/fix_norm_gains.py). The fix scales the gains on the main
    # path, through which the signal passes; the convolutions that feed them keep their values
    pytest.importorskip("transformers")
    from corpus import CORPUS

    torch.manual_seed(0)
    model, x = CORPUS["hf-mobilevit"]()
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    for norm in norms.values():
        nn.init.normal_(norm.weight, std=0.02)
    convs = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("convolution.weight")}
    result = audit(model, x, fix=True)
    assert "IA202" in codes(result.fix.before, "warning")
    assert "IA202" not in codes(result)
    scaled = [n for n in result.fix.lsuv if n in norms]
    assert len(scaled) > len(norms) // 2
    for name in scaled:
        assert 0.8 < _output_variance(model, norms[name], x) < 1.2, name
    assert all(torch.equal(model.state_dict()[k], v) for k, v in convs.items()
               if k.rpartition(".convolution")[0] + ".normalization" in norms)


def test_unsafe_fixes_through_the_cli(write_target):
    path = write_target(
        "from torch import nn\n"
        "def build():\n"
        "    layer = nn.Linear(8, 8)\n"
        "    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), layer, nn.ReLU(), layer, nn.ReLU(), nn.Linear(8, 2))\n"
    )
    plain = CliRunner().invoke(main, [f"{path}:build", "--select", "IA401", "--fix"])
    assert plain.exit_code == 1 and "--unsafe-fixes" in plain.stdout
    unsafe = CliRunner().invoke(main, [f"{path}:build", "--select", "IA401", "--fix", "--unsafe-fixes"])
    assert unsafe.exit_code == 0 and "Structural (unsafe) fixes" in unsafe.stdout


# the demonstration ------------------------------------------------------------------------------

def test_fixing_the_deep_relu_mlp_makes_it_train():
    sys.path.insert(0, str(EXAMPLES))
    import fix_deep_relu as demo

    torch.manual_seed(0)
    plain = demo.build()
    torch.manual_seed(0)
    fixed = demo.build()
    x, _ = demo.dataset()
    result = audit(fixed, x, fix=True)
    assert "IA202" in codes(result.fix.before)
    assert not [f for f in result.findings if f.severity != "info"]  # the re-audit is clean
    head = str(len(fixed) - 1)
    assert head not in result.fix.lsuv  # the output layer keeps its scale: LSUV is for the main path
    # measured (torch 2.13, CPU): 0.0896 with the original init (the target's variance: nothing
    # learnt), 0.0144 after the fix; scaling the head to unit output variance diverged (NaN)
    plain_loss, fixed_loss = demo.train(plain), demo.train(fixed)
    assert plain_loss > 0.08
    assert fixed_loss < 0.3 * plain_loss


def test_cli_fix_with_json_keeps_stdout_a_json_document():
    import json

    result = CliRunner().invoke(main, [f"{EXAMPLES / 'zero_hidden.py'}:build", "--fix", "--format", "json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)  # the re-audit
    assert doc["findings"] == [] and "Before the fix:" in result.stderr


# one audit loop: the audit after the fix runs with exactly the options of the first -------------

class RefusesToRun(nn.Module):
    """A model too large to run, as far as the audit can tell: its forward raises."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)
        nn.init.zeros_(self.hidden.weight)

    def forward(self, x):
        raise RuntimeError("this model must not be run")


def test_a_params_only_fix_never_runs_a_forward():
    model = RefusesToRun()
    result = audit(model, params_only=True, fix=True)
    assert "IA101" in codes(result.fix.before) and "IA101" not in codes(result)
    assert model.hidden.weight.abs().sum() > 0
    assert result.rules == result.fix.before.rules and "IA202" not in result.rules
    assert any("--params-only" in note for note in result.notes)


class BackwardFails(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("this model must not be differentiated")


def test_a_no_backward_fix_makes_no_backward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    nn.init.zeros_(model[2].weight)

    class Guarded(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return BackwardFails.apply(self.net(x))

    result = audit(Guarded(), torch.randn(32, 8), no_backward=True, fix=True)
    assert "IA101" in codes(result.fix.before) and "IA101" not in codes(result)
    assert all(t.grad_status == "not-run" for t in result.parameters)


def test_the_audit_after_a_fix_keeps_select_tied_and_device():
    torch.manual_seed(0)
    shared = nn.Linear(8, 8)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(8, 8),
                          nn.ReLU(), nn.Linear(8, 2))
    nn.init.zeros_(model[6].weight)
    nn.init.zeros_(model[6].bias)  # a dead zero layer: nothing moves it, so IA101 is an error to fix
    tie = ["2.weight=4.weight", "2.bias=4.bias"]
    result = audit(model, torch.randn(16, 4), select=["IA1", "IA4"], tied=tie, device="cpu", fix=True)
    assert result.rules == result.fix.before.rules and all(c.startswith(("IA1", "IA4")) for c in result.rules)
    assert "IA101" in codes(result.fix.before) and "IA101" not in codes(result)
    # the shared layer is declared tied: neither audit reports it
    assert "IA401" not in codes(result.fix.before) and "IA401" not in codes(result)
    assert result.device == result.fix.before.device == "cpu"


def test_initaudit_fix_repairs_a_report_and_audits_again_with_its_options():
    import initaudit

    model, x = case_ia101()
    report = audit(model, x, select=["IA1"])
    after = initaudit.fix(model, report, x, select=["IA1"])
    assert after.fix.before is report and after.rules == report.rules
    assert "IA101" in codes(report) and "IA101" not in codes(after)
    with pytest.raises(TypeError, match="unknown audit option"):
        initaudit.fix(model, report, x, selct=["IA1"])


def test_initaudit_fix_without_lsuv_leaves_the_signal_findings():
    import initaudit

    torch.manual_seed(0)
    model = mlp(20, width=128, inputs=64)
    x = torch.randn(128, 64)
    report = audit(model, x, select=["IA202", "IA206"])
    assert "IA202" in codes(report)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    after = initaudit.fix(model, report, x, select=["IA202", "IA206"], lsuv=False)
    assert after.fix.lsuv == {} and "IA202" in codes(after)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert initaudit.fix(model, report, x, select=["IA202", "IA206"]).fix.lsuv  # with LSUV it rescales


# what the fix acts on: warnings and errors, through their roots, never frozen, never a recipe -----

def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def changed(model, before):
    return sorted(k for k, v in model.state_dict().items() if not torch.equal(v, before[k]))


def test_an_info_is_not_fixed_unless_infos_fail_the_run():
    torch.manual_seed(0)
    model, x = Tagger(), torch.randn(4, 5, 8)
    before = state(model)
    result = audit(model, x, fix=True)
    assert "IA501" in codes(result.fix.before) and changed(model, before) == []
    assert not result.fix.unfixed  # an info is not a failure of the fix either
    result = audit(model, x, fix=True, fail_on="info")
    # IA501's forget bias, and IA502's orthogonal recurrent weight (also info by default)
    assert changed(model, before) == ["rnn.bias_hh_l0", "rnn.bias_ih_l0", "rnn.weight_hh_l0"]
    assert torch.all(model.rnn.bias_ih_l0[16:32] == 1.0)


def test_a_recipe_its_rule_lowered_to_info_is_never_fixed():
    from test_rules_signal import LoRALinear

    torch.manual_seed(0)
    model = nn.Sequential(LoRALinear(), nn.ReLU(), nn.Linear(32, 2))
    before = state(model)
    result = audit(model, torch.randn(16, 32), fix=True, fail_on="info")
    (lora,) = [f for f in result.fix.before.findings if f.code == "IA101"]
    assert lora.severity == "info" and lora.location == "0.B.weight"
    assert torch.count_nonzero(model[0].B.weight) == 0 and "0.B.weight" not in changed(model, before)


def test_a_frozen_parameter_is_never_touched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    nn.init.constant_(model[2].weight, 0.05)
    model[2].requires_grad_(False)
    before = state(model)
    result = audit(model, torch.randn(32, 16), fix=True)
    (constant,) = [f for f in result.fix.before.findings if f.code == "IA102"]
    assert constant.severity == "error" and constant.fix  # it has a fix line, and it is not run
    assert changed(model, before) == []
    (why,) = [why for f, why in result.fix.unfixed if f.code == "IA102"]
    assert "frozen" in why


def test_a_consequence_is_fixed_through_its_root():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    nn.init.zeros_(model[2].weight)
    nn.init.zeros_(model[2].bias)  # stuck: IA101 error, and what vanishes after it is its consequence
    x = torch.randn(64, 32)
    result = audit(model, x, fix=True)
    before = result.fix.before.findings
    assert any(f.code == "IA101" and f.severity == "error" for f in before)
    consequences = [f for f in before if f.caused_by]
    assert consequences and all(f.caused_by.startswith("IA101") for f in consequences)
    assert result.fix.lsuv == {}  # the signal came back with the root's re-draw: no rescaling
    assert [c.name for c in result.fix.changes] == ["2.weight"]
    assert not [f for f in result.findings if f.severity != "info"]


class MainAndBranches(nn.Module):
    """Four small-init layers on the main path, two residual blocks, a head."""

    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(64, 64), nn.ReLU())])
        self.blocks = nn.ModuleList(nn.ModuleDict({"fc1": nn.Linear(64, 64), "fc2": nn.Linear(64, 64)})
                                    for _ in range(2))
        self.head = nn.Linear(64, 3)
        for layer in self.main[::2]:
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        h = self.main(x)
        for block in self.blocks:
            h = h + block["fc2"](torch.relu(block["fc1"](h)))
        return self.head(h)


def test_lsuv_scales_the_main_path_only():
    torch.manual_seed(0)
    model, x = MainAndBranches(), torch.randn(64, 64)
    from initaudit.fixing.fixer import lsuv_layers

    report = audit(model, x)
    assert "IA202" in codes(report)
    assert lsuv_layers(report) == {"main.0", "main.2", "main.4", "main.6"}
    before = state(model)
    result = audit(model, x, fix=True)
    assert result.fix.lsuv and set(result.fix.lsuv) <= {"main.0", "main.2", "main.4", "main.6"}
    assert {k.rsplit(".", 1)[0] for k in changed(model, before)} <= {"main.0", "main.2", "main.4", "main.6"}
    assert not [f for f in result.findings if f.severity != "info"]


def test_cli_save_refuses_weights_whose_reaudit_still_fails(tmp_path):
    # a layer shared where two were meant (IA401) has only an unsafe fix: without --unsafe-fixes
    # the audit after the fix still has the warning, so the weights are not saved
    path = tmp_path / "fixed.pt"
    source = tmp_path / "shared.py"
    source.write_text(
        "import torch\nfrom torch import nn\n\n"
        "def build():\n"
        "    layer = nn.Linear(16, 16)\n"
        "    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), layer, nn.ReLU(), layer, nn.ReLU(), nn.Linear(16, 2))\n"
    )
    refused = CliRunner().invoke(main, [f"{source}:build", "--fix", "--save", str(path)])
    assert refused.exit_code == 2 and "not written" in refused.stderr and "IA401" in refused.stderr
    assert not path.exists()
    assert "After the fix" in refused.output  # the report is still shown
    forced = CliRunner().invoke(main, [f"{source}:build", "--fix", "--save", str(path), "--force"])
    assert forced.exit_code == 1 and path.exists()  # saved as asked; the findings still fail the run


def test_a_signal_finding_lsuv_cannot_reach_is_listed_with_why():
    # every layer of this collapsed sigmoid stack feeds a LayerNorm: no main-path scale to change
    from test_streams import ln_stack

    model = ln_stack(nn.Sigmoid)
    before = state(model)
    result = audit(model, torch.randn(64, 32), fix=True)
    assert "IA202" in codes(result.fix.before) and result.fix.lsuv == {}
    (why,) = [why for f, why in result.fix.unfixed if f.code == "IA202"]
    assert "nothing to rescale" in why and changed(model, before) == []


def test_a_sigmoid_stack_is_redrawn_at_the_sigmoid_gain_and_then_trains():
    # sigmoid's slope at 0 is 1/4: LSUV's unit variance before it (the fixed point of He's and
    # tanh's gains) leaves the gradient shrinking layer after layer, while the re-draw at gain 4
    # (Glorot & Bengio 2010) keeps it; the fix keeps that re-draw, and it trains
    from initaudit.fixing.fixer import lsuv_scale

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(*[m for i in range(8) for m in (nn.Linear(32 if i == 0 else 64, 64), nn.Sigmoid())],
                              nn.Linear(64, 1))
        with torch.no_grad():
            for layer in list(model)[:-1:2]:
                layer.weight.normal_(0, 1e-3)
        return model

    def trained(model, steps=300):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(steps):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
        return loss.item()

    g = torch.Generator().manual_seed(100)
    x = torch.randn(256, 32, generator=g)
    y = torch.sin(x @ torch.randn(32, 1, generator=g) / 3)
    model = build()
    result = audit(model, x, loss=lambda out, _x: ((out - y) ** 2).mean(), fix=True)
    assert {"IA201", "IA202"} <= set(codes(result.fix.before)) and not codes(result, "warning")
    hidden = list(model)[:-1:2]
    for layer in hidden:
        assert layer.weight.std().item() == pytest.approx(4 / math.sqrt(layer.in_features), rel=0.05)
    assert not set(result.fix.lsuv) & {str(i) for i in range(0, 16, 2)}
    # the same re-draw with LSUV's unit variance on top, as the fix did before
    unit = copy.deepcopy(model)
    lsuv_scale(unit, x, layers={str(i) for i in range(0, 16, 2)})
    fixed_loss, unit_loss, unfixed_loss = trained(model), trained(unit), trained(build())
    assert fixed_loss < unit_loss / 5 and fixed_loss < unfixed_loss / 20
