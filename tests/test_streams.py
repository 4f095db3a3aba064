"""Branches that read a normalized stream, and streams that meet a norm before the loss."""

import pytest
import torch
from conftest import findings
from torch import nn

from initaudit import audit


class PreNorm(nn.Module):
    """``h = h + fc2(relu(fc1(LN(h))))`` per block, with or without a final norm before the head."""

    def __init__(self, final_norm: bool, d: int = 64, blocks: int = 3, std: float = 4.0) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(blocks))
        self.fc1 = nn.ModuleList(nn.Linear(d, d) for _ in range(blocks))
        self.fc2 = nn.ModuleList(nn.Linear(d, d) for _ in range(blocks))
        self.final = nn.LayerNorm(d) if final_norm else nn.Identity()
        self.head = nn.Linear(d, 4)
        for layer in [*self.fc1, *self.fc2]:
            nn.init.normal_(layer.weight, std=std)  # 32x LeCun's 1/sqrt(64)

    def forward(self, x):
        h = self.embed(x)
        for norm, fc1, fc2 in zip(self.norms, self.fc1, self.fc2):
            h = h + fc2(torch.relu(fc1(norm(h))))
        return self.head(self.final(h))


def test_a_large_branch_on_a_normalized_stream_that_meets_a_final_norm_is_information():
    """Each branch reads LN(h), so it adds a bounded term; the final norm rescales the sum."""
    torch.manual_seed(0)
    report = audit(PreNorm(final_norm=True), torch.randn(32, 8))
    found = findings(report, "IA201")
    assert found and {f.severity for f in found} == {"info"}
    assert "reads a normalized stream" in found[0].message
    assert all(f.severity == "info" for f in findings(report, "IA203"))
    fc1 = next(t for t in report.recording.parameters if t.name == "fc1.0.weight")
    fc2 = next(t for t in report.recording.parameters if t.name == "fc2.0.weight")
    assert fc1.input_normalized and not fc2.input_normalized
    assert fc2.stream_reaches == "norm"


def test_the_same_branches_whose_stream_reaches_the_head_unnormalized_are_a_warning():
    """Without the final norm the head reads a stream hundreds of times its input's size."""
    torch.manual_seed(0)
    report = audit(PreNorm(final_norm=False), torch.randn(32, 8))
    assert "warning" in {f.severity for f in findings(report, "IA201")}
    assert "warning" in {f.severity for f in findings(report, "IA203")}
    fc2 = next(t for t in report.recording.parameters if t.name == "fc2.0.weight")
    assert fc2.stream_reaches is not None and "output" in fc2.stream_reaches.split("+")


def too_large_stack(norm_before_head: bool) -> nn.Sequential:
    """Eight ReLU layers drawn at twice He's std (4x the variance each), optionally a LayerNorm
    between the last hidden layer and the head."""
    layers = []
    for _ in range(8):
        layer = nn.Linear(64, 64)
        nn.init.normal_(layer.weight, std=2 * (2 / 64) ** 0.5)
        layers += [layer, nn.ReLU()]
    if norm_before_head:
        layers.append(nn.LayerNorm(64))
    return nn.Sequential(*layers, nn.Linear(64, 4))


def test_ia206_a_huge_gain_that_reaches_the_head_is_a_warning():
    torch.manual_seed(0)
    report = audit(too_large_stack(False), torch.randn(32, 64))
    (f,) = findings(report, "IA206")
    assert report.recording.jacobian_gain > 1000 and f.severity == "warning"


def test_ia206_a_huge_gain_before_a_head_that_reads_a_norm_is_information():
    """Hugging Face's MobileNet v1 at its own init: the measured gain is far above 10 (about 340;
    above 1000 while its classifier's dropout of p=0.999 still scaled it in training mode), but
    its classifier reads the last BatchNorm through a ReLU6 and global pooling, which sets its
    scale."""
    from corpus import CORPUS

    model, example = CORPUS["hf-mobilenet-v1"]()
    report = audit(model, example)
    (f,) = findings(report, "IA206")
    assert report.recording.jacobian_gain > 100 and f.severity == "info"
    head = next(t for t in report.recording.parameters if t.name == "classifier.weight")
    assert head.input_normalized


# IA202: a representation that collapsed onto one vector ------------------------------------------

def ln_stack(activation, depth: int = 16, width: int = 128, he: bool = False) -> nn.Sequential:
    """``Linear -> (LayerNorm -> activation -> Linear) x depth``: the norms hold every layer's
    output at unit size whatever happens to its dependence on the input."""
    torch.manual_seed(0)
    layers = [nn.Linear(32, width)]
    for _ in range(depth):
        layers += [nn.LayerNorm(width), activation(), nn.Linear(width, width if _ < depth - 1 else 4)]
    model = nn.Sequential(*layers)
    for layer in model:
        if he and isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return model


def test_ia202_a_deep_sigmoid_stack_with_layernorm_collapses_onto_one_vector():
    # sigmoid's outputs share a large positive mean, PyTorch's default init maps it on, and the
    # examples' differences shrink layer after layer (the ordered phase); LayerNorm keeps the size.
    # The trainability benchmark's configuration 12 is this net: no optimizer gets it to learn.
    model = ln_stack(nn.Sigmoid)
    report = audit(model, torch.randn(64, 32))
    (f,) = findings(report, "IA202")
    assert f.severity == "warning" and f.location == "47" and "nearly the same vector" in f.message
    head = next(t for t in report.recording.parameters if t.name == "48.weight")
    assert head.input_from == "47"
    read = report.recording.module("47").output
    assert read.feature_std < 1e-4 * (read.std ** 2 + read.mean ** 2) ** 0.5  # the measured fact itself


def test_ia202_no_collapse_in_a_relu_stack_with_layernorm():
    assert not findings(audit(ln_stack(nn.ReLU, he=True), torch.randn(64, 32)), "IA202")
    assert not findings(audit(ln_stack(nn.Tanh), torch.randn(64, 32)), "IA202")


class PooledCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Sigmoid(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.Sigmoid())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.pool(self.conv(x)).flatten(1))


def test_ia202_the_input_of_a_pooled_head_is_what_the_pool_averages():
    # averaging a sigmoid's map over 16x16 positions leaves little that varies per example, by
    # design: the representation judged is the pool's input
    report = audit(PooledCNN(), torch.randn(32, 3, 16, 16))
    head = next(t for t in report.recording.parameters if t.name == "head.weight")
    assert head.input_from == "conv.3"
    assert not findings(report, "IA202")


# the branch/stream std ratio at each residual sum (record.dataflow.residual_sums, analysis.streams) --

def _stream_by_hand(model: PreNorm, x: torch.Tensor) -> list:
    """The stream's std before each block and after the last, computed by running the blocks."""
    with torch.no_grad():
        h = model.embed(x)
        sizes = []
        for norm, fc1, fc2 in zip(model.norms, model.fc1, model.fc2):
            sizes.append(float(h.std()))
            h = h + fc2(torch.relu(fc1(norm(h))))
        return sizes + [float(h.std())]


def test_the_stream_of_an_inline_stack_is_rebuilt_by_adding_variances():
    """``h = h + f(h)`` written in the forward has no module output for the stream: each sum is
    found in the autograd graph, its stream is the earlier sum, and S_k^2 = S_{k-1}^2 + b_k^2."""
    torch.manual_seed(0)
    model, x = PreNorm(final_norm=False, std=0.3), torch.randn(64, 8)
    report = audit(model, x)
    calls = report.recording.call_order
    assert [[calls[b], bf, None if s is None else calls[s], e, sf]
            for b, bf, s, e, sf in report.recording.residual_sums] == [
        ["fc2.0", 1.0, "embed", None, 1.0], ["fc2.1", 1.0, None, 0, 1.0], ["fc2.2", 1.0, None, 1, 1.0]]
    sums = report.analysis.stream_sums
    by_hand = _stream_by_hand(model, x)
    assert sums[0].stream == pytest.approx(by_hand[0], rel=1e-3)  # the embedding's recorded output
    for k, s in enumerate(sums):
        assert s.total == pytest.approx(by_hand[k + 1], rel=0.05), k


class Scaled(nn.Module):
    """Constant factors around the sums: the embedding times 4 (as Gemma multiplies its
    embeddings by sqrt(d)), the stream times 2 (DeepNet's alpha) and the branch by
    ``torch.add``'s ``alpha`` of 0.5."""

    def __init__(self, d: int = 32, blocks: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.fc1 = nn.ModuleList(nn.Linear(d, d) for _ in range(blocks))
        self.fc2 = nn.ModuleList(nn.Linear(d, d) for _ in range(blocks))
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        h = self.embed(x) * torch.tensor(4.0)
        for fc1, fc2 in zip(self.fc1, self.fc2):
            h = torch.add(h * 2.0, fc2(torch.relu(fc1(h))), alpha=0.5)
        return self.head(h)

    def added_by_hand(self, x):
        """``(stream, branch)`` std at each sum, as the sum adds them."""
        with torch.no_grad():
            h, found = self.embed(x) * 4.0, []
            for fc1, fc2 in zip(self.fc1, self.fc2):
                branch = 0.5 * fc2(torch.relu(fc1(h)))
                found.append((float((h * 2.0).std()), float(branch.std())))
                h = h * 2.0 + branch
        return found


def test_constant_factors_around_a_sum_scale_what_it_adds():
    torch.manual_seed(0)
    model, x = Scaled(), torch.randn(64, 8)
    report = audit(model, x)
    sums = report.analysis.stream_sums
    by_hand = model.added_by_hand(x)
    assert [s.branch for s in sums] == ["fc2.0", "fc2.1"]
    assert sums[0].stream == pytest.approx(by_hand[0][0], rel=1e-3)  # 8x the embedding's recorded output
    for s, (stream, branch) in zip(sums, by_hand):
        assert s.added == pytest.approx(branch, rel=1e-3)
        assert s.stream == pytest.approx(stream, rel=0.05)  # the second rebuilt by adding variances


class Block(nn.Module):
    def __init__(self, d: int, layer_scale: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        self.gamma = nn.Parameter(torch.full((d,), 0.1)) if layer_scale else None

    def forward(self, x):
        branch = self.fc2(torch.relu(self.fc1(x)))
        return x + (self.gamma * branch if self.gamma is not None else branch)


def test_a_block_that_returns_its_sum_is_the_next_blocks_stream():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), Block(32), Block(32), nn.Linear(32, 2))
    report = audit(model, torch.randn(64, 8))
    sums = report.analysis.stream_sums
    assert [s.branch for s in sums] == ["1.fc2", "2.fc2"]
    assert sums[1].stream == report.recording.module("1").output.std  # measured, not rebuilt


def test_a_branch_scaled_after_its_last_layer_is_not_measured():
    """Layer scale multiplies the branch by a parameter after its last layer: the recorded output is
    not what is summed, so no ratio is read from it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), Block(32, layer_scale=True), nn.Linear(32, 2))
    report = audit(model, torch.randn(64, 8))
    assert report.recording.residual_sums == [] and report.analysis.stream_sums == []


def _pre_norm_with_gain(gain: float) -> PreNorm:
    torch.manual_seed(0)
    model = PreNorm(final_norm=False)
    with torch.no_grad():
        for norm in model.norms:
            norm.weight.fill_(gain)
        for layer in [*model.fc1, *model.fc2]:
            layer.bias.zero_()  # PyTorch's default bias would pass a constant of its own past the gain
    return model


def test_ia201_a_branch_that_dominates_its_stream_is_a_warning_and_so_are_those_after_it():
    """The first branch (32x LeCun's std per layer) adds about 1000x the embedding's std. The next
    ones read the same unit-size LN output and add about as much again to a stream that is now
    that large, so they grow it by no more than sqrt(2); but only because the first grew it:
    brought down alone, the next would dominate in its place. All stay warnings, each naming the
    measured ratio, the later ones the branch that grew their stream."""
    report = audit(_pre_norm_with_gain(1.0), torch.randn(32, 8))
    assert report.analysis.stream_sums[0].ratio > 100
    assert all(s.ratio < 1.5 for s in report.analysis.stream_sums[1:])
    by_location = {f.location: f for f in findings(report, "IA201")}
    assert by_location["fc1.0"].severity == "warning"
    assert "measured at the residual sum it joins" in by_location["fc1.0"].message
    for later in ("fc1.1", "fc1.2"):
        assert by_location[later].severity == "warning"
        assert "the earlier branch 'fc2.0' grew" in by_location[later].message


def test_ia201_a_large_branch_that_adds_little_to_its_stream_is_information():
    """The same too-large branches behind LayerNorm gains of 1e-4: their outputs stay below the
    stream's std, so the blocks start near the identity whatever their weights' fan-in says."""
    report = audit(_pre_norm_with_gain(1e-4), torch.randn(32, 8))
    assert all(s.ratio < 1 for s in report.analysis.stream_sums)
    found = findings(report, "IA201")
    assert found and {f.severity for f in found} == {"info"}
    assert all("no more than sqrt(2)" in f.message for f in found if f.location.startswith("fc1."))


def test_ia201_a_large_branch_added_to_a_zero_stream_says_the_branch_is_all_it_carries():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), Block(32), Block(32), nn.Linear(32, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
        for block in (model[1], model[2]):
            for layer in (block.fc1, block.fc2):
                layer.weight.normal_(std=3.0)  # 17x LeCun's 1/sqrt(32)
    report = audit(model, torch.randn(64, 8))
    assert report.analysis.stream_sums[0].stream == 0
    first, second = (next(f for f in findings(report, "IA201") if f.location == f"{i}.fc1") for i in (1, 2))
    assert "the stream is zero there" in first.message
    assert "the earlier branch '1.fc2' grew from zero" in second.message


def test_the_json_report_lists_the_residual_sums_with_their_sizes(write_target):
    import json

    import jsonschema
    from click.testing import CliRunner
    from conftest import INLINE_RESIDUAL_STACK, ROOT

    from initaudit.cli import main

    result = CliRunner().invoke(main, [f"{write_target(INLINE_RESIDUAL_STACK, name='inline_stack.py')}:build",
                                       "--format", "json"])
    document = json.loads(result.stdout)
    jsonschema.validate(document, json.loads((ROOT / "initaudit" / "schema.json").read_text()))
    sums = document["residual_sums"]
    assert [s["branch"] for s in sums] == ["fc2.0", "fc2.1", "fc2.2"]
    embed = next(m for m in document["modules"] if m["names"] == ["embed"])
    assert sums[0]["stream_std"] == pytest.approx(embed["output"]["std"])
    # the second sum reads the first's: S_1^2 = S_0^2 + b_0^2
    assert sums[1]["stream_std"] == pytest.approx((sums[0]["stream_std"] ** 2 + sums[0]["branch_std"] ** 2) ** 0.5)
    assert all(s["ratio"] == pytest.approx(s["branch_std"] / s["stream_std"]) for s in sums)


class Checkpointed(nn.Module):
    """A block under non-reentrant activation checkpointing, its stream scaled by a tensor
    constant: the factor is saved through the checkpoint's hooks."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.embed, self.fc, self.head = nn.Linear(8, d), nn.Linear(d, d), nn.Linear(d, 2)
        self.runs = 0

    def block(self, h):
        self.runs += 1
        return h * torch.tensor(2.0) + self.fc(h)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        return self.head(checkpoint(self.block, self.embed(x), use_reentrant=False))


def test_reading_the_graph_does_not_unpack_what_a_checkpoint_saved():
    """Unpacking a tensor the checkpoint saved runs the block again (and its modules' hooks):
    the forward once and the backward's recomputation once, nothing more."""
    torch.manual_seed(0)
    model = Checkpointed()
    audit(model, torch.randn(32, 8))
    assert model.runs == 2


@pytest.mark.parametrize("name", ["hf-gpt2", "hf-llama", "hf-bert"])
def test_a_library_model_at_its_own_init_starts_every_branch_below_its_stream(name):
    """Two blocks, an attention and an MLP sum each, all found in the graph of Hugging Face's own
    code (inline sums, a post-LN BERT's sums inside its output modules), and at the library's own
    init (N(0, 0.02), GPT-2's 0.02/sqrt(2N) projections) each branch adds less than its stream."""
    pytest.importorskip("transformers")
    from corpus import CORPUS

    model, x = CORPUS[name]()
    sums = audit(model, x).analysis.stream_sums
    assert len(sums) == 4
    assert all(s.ratio < 1 for s in sums), [(s.branch, s.ratio) for s in sums]


def test_a_branch_drawn_far_too_large_in_gpt2_is_measured_against_its_stream():
    pytest.importorskip("transformers")
    from corpus import CORPUS

    model, x = CORPUS["hf-gpt2"]()
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.weight.mul_(300.0)
    report = audit(model, x)
    last = report.analysis.stream_sums[-1]
    assert last.branch == "transformer.h.1.mlp.c_proj" and last.ratio > 10
    (found,) = [f for f in findings(report, "IA201") if f.location == "transformer.h.1.mlp.c_proj.weight"]
    assert f"its output's std is {last.ratio:.3g}x the stream's" in found.message


def test_a_small_branchs_growth_of_the_stream_reads_as_a_percentage():
    """GPT-2's projections at 0.02/sqrt(2N) add a tenth of the stream's std: the stream grows by
    under 1%, which "1x" would hide."""
    pytest.importorskip("transformers")
    from corpus import CORPUS

    model, x = CORPUS["hf-gpt2"]()
    report = audit(model, x)
    first = report.analysis.stream_sums[0]
    growth = 100 * ((1 + first.ratio ** 2) ** 0.5 - 1)
    (found,) = [f for f in findings(report, "IA201") if f.location == "transformer.h.0.attn.c_proj.weight"]
    assert f"so the stream grows by {growth:.2g}% there" in found.message and growth < 1


def _last_branch_large(std: float) -> PreNorm:
    """Eight pre-norm blocks whose branches add under 1% of the stream, and a last block whose
    output layer is drawn with ``std`` (LeCun's is 1/8) after a first layer of std 0.01."""
    torch.manual_seed(0)
    model = PreNorm(final_norm=False, blocks=8, std=0.01)
    with torch.no_grad():
        for layer in [*model.fc1, *model.fc2]:
            layer.bias.zero_()
        model.fc2[-1].weight.normal_(std=std)
    return model


def test_ia201_a_branch_that_dominates_once_without_compounding_is_information():
    """The last branch adds 3x the stream's std: the stream grows 3.2x once, and over the eight
    sums the identity paths keep 1/3.2 of the output, more than 2^(-8/2): it does not compound."""
    report = audit(_last_branch_large(4.0), torch.randn(32, 8))
    *rest, last = report.analysis.stream_sums
    assert 1 < last.ratio < 2 ** 4 and all(s.ratio < 0.05 for s in rest)
    (found,) = [f for f in findings(report, "IA201") if f.location == "fc1.7"]
    assert found.severity == "info" and "it does not compound" in found.message


def test_ia201_the_same_branch_ten_times_larger_compounds_and_is_a_warning():
    report = audit(_last_branch_large(40.0), torch.randn(32, 8))
    assert report.analysis.stream_sums[-1].ratio > 2 ** 4
    (found,) = [f for f in findings(report, "IA201") if f.location == "fc1.7"]
    assert found.severity == "warning" and "measured at the residual sum it joins" in found.message
