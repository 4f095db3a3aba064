"""Parameter roles and residual branches read from the autograd graph (record.dataflow), and
the rules that judge a zero or a constant by them (IA101, IA102, IA302, IA201 on frozen weights)."""

import math

import pytest
import torch
from conftest import codes, findings
from torch import nn

from initaudit import audit


def uses(report):
    return {t.name: t for t in report.recording.parameters}


class RawLoRA(nn.Module):
    """A frozen base layer plus ``x @ A.t() @ B.t()`` written with raw parameters, B at zero."""

    def __init__(self, d: int = 16, rank: int = 2) -> None:
        super().__init__()
        self.base = nn.Linear(d, d)
        self.base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(rank, d) / math.sqrt(d))
        self.B = nn.Parameter(torch.zeros(d, rank))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(torch.relu(self.base(x) + (x @ self.A.t() @ self.B.t()) * 2.0))


class Tokens(nn.Module):
    """Token embeddings plus a position embedding and a class token, both raw parameters at zero."""

    def __init__(self, vocab: int = 12, d: int = 16, length: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.positions = nn.Parameter(torch.zeros(1, length, d))
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.mix = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.embed(ids) + self.positions[:, : ids.shape[1]]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        return self.head(torch.relu(self.mix(x)))


class ScaledBlock(nn.Module):
    """Residual conv block with a per-channel layer scale of shape (C, 1, 1), constant by design."""

    def __init__(self, c: int = 8, scale: float = 1e-6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.gamma = nn.Parameter(torch.full((c, 1, 1), scale))

    def forward(self, x):
        return x + self.gamma * self.conv(torch.relu(x))


class Untraceable(nn.Module):
    """A residual MLP whose forward branches on a tensor's value (torch.fx cannot trace it),
    with its branches' last layers at zero: the graph still shows each is a residual branch."""

    def __init__(self, d: int = 32, blocks: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.fc1 = nn.ModuleList(nn.Linear(d, d) for _ in range(blocks))
        self.fc2 = nn.ModuleList(nn.Linear(d, d) for _ in range(blocks))
        for fc in self.fc2:
            nn.init.zeros_(fc.weight)
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        h = self.embed(x)
        for fc1, fc2 in zip(self.fc1, self.fc2):
            if h.abs().sum() > 0:  # data-dependent control flow
                h = h + fc2(torch.relu(fc1(h)))
        return self.head(h)


def test_roles_of_a_plain_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))
    found = uses(audit(model, torch.randn(32, 8)))
    assert found["0.weight"].role == "mixing" and found["0.weight"].feeds == "relu"
    assert found["0.bias"].role == "offset"
    assert found["2.weight"].feeds == "tanh" and found["0.weight"].next_weights == ["2.weight"]
    assert found["4.weight"].branch is None and found["4.weight"].next_weights == []


@pytest.mark.parametrize("written", ["mse_loss", "out - target", "target - out"])
def test_a_regression_loss_written_as_a_difference_is_not_an_adapter_sum(written):
    # ``out - target`` subtracts a tensor without gradient from a product, as a LoRA sum on a
    # frozen model's first layer adds one; a difference is a comparison, not an adapter, and
    # the MLP under it is the main path whichever way its loss is written
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(32, 32), nn.ReLU())], nn.Linear(32, 1))
    with torch.no_grad():
        for layer in list(model)[:-1:2]:
            layer.weight.normal_(0, 1e-3)  # 177x below He's std: the signal is gone by the head
    x, target = torch.randn(64, 32), torch.randn(64, 1)
    loss = {"mse_loss": lambda out, _x: nn.functional.mse_loss(out, target),
            "out - target": lambda out, _x: ((out - target) ** 2).mean(),
            "target - out": lambda out, _x: (target - out).abs().mean()}[written]
    report = audit(model, x, loss=loss)
    found = uses(report)
    assert {found[f"{i}.weight"].reaches for i in range(0, 13, 2)} == {"output"}
    assert all(found[f"{i}.weight"].branch is None for i in range(0, 13, 2))
    (mismatch,) = findings(report, "IA201")
    assert mismatch.severity == "warning" and "residual branch" not in mismatch.message


def test_raw_lora_b_at_zero_is_the_recipe_and_a_trains_from_step_two():
    torch.manual_seed(0)
    report = audit(RawLoRA(), torch.randn(32, 16))
    found = uses(report)
    assert found["B"].role == "mixing" and found["B"].branch == "lora"
    assert found["A"].next_weights == ["B"]
    (zero,) = findings(report, "IA101")
    assert zero.location == "B" and zero.severity == "info" and "LoRA" in zero.message
    (stuck,) = findings(report, "IA302")
    assert stuck.locations == ["A"] and stuck.severity == "info" and stuck.caused_by == "IA101 B"
    assert "moves at step 1, and they train from step 2" in stuck.message
    assert not codes(report, "warning") and not codes(report, "error")


def test_a_zero_product_that_is_not_added_to_a_stream_stays_an_error():
    """The same raw parameters without the frozen base: B's zero cuts the model off from its input."""

    class NoBase(RawLoRA):
        def forward(self, x):
            return self.head(torch.relu(x @ self.A.t() @ self.B.t()))

    torch.manual_seed(0)
    report = audit(NoBase(), torch.randn(32, 16))
    assert uses(report)["B"].branch is None
    (zero,) = findings(report, "IA101")
    assert zero.location == "B" and zero.severity == "error"


def test_zero_position_embedding_and_class_token_are_addends_not_symmetry_problems():
    torch.manual_seed(0)
    report = audit(Tokens(), torch.randint(0, 12, (8, 6)))
    found = uses(report)
    assert found["positions"].role == "offset" and found["cls"].role == "token"
    assert found["embed.weight"].role == "lookup"
    zero = {f.location: f for f in findings(report, "IA101")}
    assert set(zero) == {"positions", "cls"}
    assert all(f.severity == "info" and "added to" in f.message for f in zero.values())
    assert "IA302" not in codes(report)  # an addend's gradient is that of what it is added to


def test_a_frozen_zero_tensor_is_still_an_error():
    """Frozen, it is not in the autograd graph, so its role is unknown; all zeros, it never changes."""
    torch.manual_seed(0)
    model = Tokens()
    model.positions.requires_grad_(False)
    report = audit(model, torch.randint(0, 12, (8, 6)))
    assert uses(report)["positions"].role is None
    (f,) = [f for f in findings(report, "IA101") if f.location == "positions"]
    assert f.severity == "error" and "frozen" in f.message


def test_a_constant_layer_scale_is_not_a_symmetry_problem_but_a_constant_conv_is():
    torch.manual_seed(0)
    block = ScaledBlock()
    report = audit(block, torch.randn(4, 8, 6, 6))
    assert uses(report)["gamma"].role == "scale" and uses(report)["gamma"].branch == "residual"
    assert "IA102" not in codes(report)
    with torch.no_grad():
        block.conv.weight.fill_(0.01)
    (f,) = findings(audit(block, torch.randn(4, 8, 6, 6)), "IA102")
    assert f.location == "conv.weight"


def test_residual_branches_found_where_fx_cannot_trace():
    torch.manual_seed(0)
    model = Untraceable()
    report = audit(model, torch.randn(32, 8))
    found = uses(report)
    assert all(found[f"fc2.{i}.weight"].branch == "residual" for i in range(3))
    assert {f.location for f in findings(report, "IA101")} == {f"fc2.{i}.weight" for i in range(3)}
    assert all(f.severity == "info" for f in findings(report, "IA101"))
    # fc1 gets no gradient at step one (fc2 is zero above it): the consequence, under its root
    for f in findings(report, "IA302"):
        assert f.severity == "info" and f.caused_by.startswith("IA101 fc2.") and "train from step 2" in f.message


def test_a_chain_of_deliberate_zeros_says_when_everything_trains():
    """Fixup-style: zero branch ends under a zero head. The head moves at step 1, the branch
    ends at step 2 (their gradient comes through the head), the layers before them at step 3."""
    torch.manual_seed(0)
    model = Untraceable()
    nn.init.zeros_(model.head.weight)
    report = audit(model, torch.randn(32, 8))
    messages = {f.caused_by: f for f in findings(report, "IA302")}
    assert all(f.severity == "info" for f in messages.values())
    assert "train from step 2" in messages["IA101 head.weight"].message
    assert "fc2.0.weight" in messages["IA101 head.weight"].locations
    assert "starts moving at step 2" in messages["IA101 fc2.0.weight"].message
    assert "train from step 3" in messages["IA101 fc2.0.weight"].message
    assert not codes(report, "warning") and not codes(report, "error")


def test_a_zero_pair_that_never_moves_is_a_warning():
    """LoRA with both A and B at zero: B's gradient is zero too (A's output is zero), so nothing moves."""
    torch.manual_seed(0)
    model = RawLoRA()
    nn.init.zeros_(model.A)
    report = audit(model, torch.randn(32, 16))
    assert "warning" in {f.severity for f in findings(report, "IA302")}


def test_attention_projections_feed_attention():
    class Attention(nn.Module):
        def __init__(self, d=16):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

        def forward(self, x):
            scores = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / 4.0, dim=-1)
            return x + self.o(scores @ self.v(x))

    torch.manual_seed(0)
    found = uses(audit(Attention(), torch.randn(4, 5, 16)))
    assert found["q.weight"].feeds == "attention" and found["k.weight"].feeds == "attention"
    assert found["v.weight"].feeds == "attention"
    assert found["o.weight"].branch == "residual"


@pytest.mark.parametrize("frozen", [True, False])
def test_ia201_leaves_frozen_weights_alone(frozen):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        for layer in model[:4:2]:
            layer.weight.normal_(0, 10.0)  # 40x too large for ReLU: a variance warning when trainable
    if frozen:
        model[0].requires_grad_(False)
        model[2].requires_grad_(False)
    assert ("IA201" in codes(audit(model, torch.randn(64, 32)), "warning")) is not frozen


def test_the_graph_walk_leaves_the_model_and_the_recording_of_plain_audits_alone():
    torch.manual_seed(0)
    model = RawLoRA()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    audit(model, torch.randn(8, 16))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    # without a backward there is no graph: roles stay unknown and the rules fall back
    report = audit(model, torch.randn(8, 16), no_backward=True)
    assert all(t.role is None for t in report.recording.parameters)


@pytest.mark.parametrize("module, name", [(nn.ReLU6, "relu"), (nn.SELU, "selu"), (nn.Hardtanh, "tanh"), (nn.ELU, "elu")])
def test_the_graph_names_the_nonlinearity_by_its_gain_family(module, name):
    torch.manual_seed(0)
    found = uses(audit(nn.Sequential(nn.Linear(8, 16), module(), nn.Linear(16, 2)), torch.randn(32, 8)))
    assert found["0.weight"].feeds == name


def test_a_vanishing_stack_before_a_final_layernorm_is_still_seen():
    """The norm at the end rescales only the last layer's output, not the stack's signal."""
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        layers += [nn.Linear(64, 64), nn.Tanh()]
    model = nn.Sequential(*layers, nn.LayerNorm(64), nn.Linear(64, 4))
    with torch.no_grad():
        for layer in model[:24:2]:
            layer.weight.normal_(0, 0.3 / 8)  # 0.3x LeCun: the signal shrinks about 0.3x a layer
    assert "IA202" in codes(audit(model, torch.randn(128, 64)))


class PreLN(nn.Module):
    """Pre-LN residual MLP blocks as modules, a final LayerNorm and a head; ``gain`` scales each
    branch's last layer (1: PyTorch's default, 0.02: GPT-2-like; 20: a branch that outgrows the stream)."""

    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.norm, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            return x + self.fc2(torch.relu(self.fc1(self.norm(x))))

    def __init__(self, d=32, blocks=6, gain=1.0):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.blocks = nn.Sequential(*[self.Block(d) for _ in range(blocks)])
        with torch.no_grad():
            for block in self.blocks:
                block.fc2.weight.mul_(gain)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 2)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.embed(x))))


def test_block_outputs_are_the_stream_even_before_a_final_norm():
    torch.manual_seed(0)
    report = audit(PreLN(gain=0.02), torch.randn(64, 8))
    stream = [report.recording.call_order[i] for i in report.recording.stream_calls]
    assert stream == [f"blocks.{i}" for i in range(6)]  # the Sequential passing blocks.5's sum on is not counted again
    assert not codes(report, "warning") and not codes(report, "error")
    # a branch 20x too large makes the stream grow block after block: that is seen
    torch.manual_seed(0)
    assert "IA203" in codes(audit(PreLN(gain=20.0, blocks=8), torch.randn(64, 8)))


def test_ia201_judges_a_raw_parameter_in_a_product_by_the_fan_it_is_read_with():
    """LoRA's A drawn from N(0, 10) as a raw nn.Parameter (x @ A.t(): fan-in 16): about 40x
    LeCun's 1/sqrt(16); such adapters fail to train in the trainability benchmark."""
    torch.manual_seed(0)
    model = RawLoRA()
    report = audit(model, torch.randn(32, 16))
    assert "IA201" not in codes(report, "warning")  # A ~ N(0, 1/16): LeCun's scale
    with torch.no_grad():
        model.A.normal_(0, 10.0)
    report = audit(model, torch.randn(32, 16))
    found = uses(report)
    assert found["A"].layer_fan_in == 16
    (f,) = [f for f in findings(report, "IA201") if f.location == "A"]
    assert f.severity == "warning" and "too large" in f.message and f.fix.startswith("nn.init.")
    # the fix re-draws the raw parameter itself, at the fan the product sums over
    after = audit(model, torch.randn(32, 16), fix=True)
    assert 0.15 < float(model.A.std()) < 0.4  # LeCun's 1/sqrt(16) = 0.25, whatever init draws it
    assert "IA201" not in codes(after, "warning")


def test_a_raw_weight_read_untransposed_has_its_first_dimension_as_fan_in():
    class Raw(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.randn(16, 4) / 4)  # x @ W: 16 inputs summed

        def forward(self, x):
            return x @ self.W

    torch.manual_seed(0)
    assert uses(audit(Raw(), torch.randn(8, 16)))["W"].layer_fan_in == 16


def test_a_product_fed_by_a_zero_product_trains_from_the_second_step():
    """LoRA with A at zero and B drawn: B gets no gradient (its input, A x, is zero), but A
    moves at step 1, so B trains from step 2 (such adapters train in the benchmark)."""
    torch.manual_seed(0)
    model = RawLoRA()
    with torch.no_grad():
        model.A.zero_()
        model.B.normal_(0, 0.02)
    report = audit(model, torch.randn(32, 16))
    (zero,) = findings(report, "IA101")
    assert zero.location == "A" and zero.severity == "info"
    (stuck,) = findings(report, "IA302")
    assert stuck.locations == ["B"] and stuck.caused_by == "IA101 A" and stuck.severity == "info"
    assert not codes(report, "warning") and not codes(report, "error")


def test_the_json_says_the_graph_decided_a_layers_consumer():
    import json

    torch.manual_seed(0)  # Untraceable: torch.fx cannot trace it
    document = json.loads(audit(Untraceable(), torch.randn(32, 8)).to_json())
    modules = {m["names"][0]: m for m in document["modules"]}
    assert modules["fc1.0"]["consumer_method"] == "autograd"
    assert modules["fc1.0"]["consumer_kind"] == "activation" and modules["fc1.0"]["consumer"] == "relu"
    assert modules["fc2.0"]["consumer_kind"] == "opaque" and modules["fc2.0"]["consumer"] == "add"


def test_ia201_leaves_recurrent_weights_to_the_recurrent_rules():
    """A GRU on CPU runs as plain products in the graph; its weights' scale is the recurrence's
    (IA502/IA503), not a feed-forward gain's."""
    class Sequence(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.GRU(8, 16, batch_first=True), nn.Linear(16, 4)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    torch.manual_seed(0)
    model = Sequence()
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.uniform_(-10, 10)
    report = audit(model, torch.randn(4, 6, 8))
    assert not [f for f in findings(report, "IA201") if f.location.startswith("rnn")]
