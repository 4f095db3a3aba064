"""Statistics and init math, checked against torch and against numbers worked out by hand."""

import math

import pytest
import torch
from torch import nn

from initaudit import stats
from initaudit.analysis import gains
from initaudit.core import knowledge
from initaudit.record import transfer


@pytest.mark.parametrize(
    "shape",
    [(3, 4), (16, 8, 3), (32, 3, 5, 5), (8, 2, 3, 3, 3), (10, 1), (1, 10), (6, 4, 1, 7)],
)
def test_fans_match_torch(shape):
    expected = nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert stats.fan_in_and_fan_out(shape) == expected


def test_fans_by_hand():
    # Conv2d(6 -> 16, 5x5, groups=2): weight (16, 3, 5, 5): fan_in = 3*25, fan_out = 16*25
    assert stats.fan_in_and_fan_out((16, 3, 5, 5)) == (75, 400)
    assert stats.fan_in_and_fan_out((7,)) is None


def test_tensor_summary_against_float64_reference():
    x = torch.tensor([[0.0, 1.0, -2.0], [3.0, 0.0, float("inf")]])
    mean, std, lo, hi, zeros, nonfinite, subnormal = stats.tensor_summary(x[:, :2].reshape(-1)).tolist()
    # [0, 1, 3, 0]: mean 1, population variance ((1 + 0 + 4 + 1) / 4) = 1.5
    assert mean == pytest.approx(1.0)
    assert std == pytest.approx(math.sqrt(1.5))
    assert (lo, hi, zeros, nonfinite, subnormal) == (0.0, 3.0, 2.0, 0.0, 0.0)
    assert stats.tensor_summary(x).tolist()[5] == 1.0


def test_tensor_summary_large_mean_small_std():
    # float32 single-pass E[x^2] - E[x]^2 would lose this spread entirely
    x = 1e4 + torch.tensor([-1e-2, 1e-2] * 5000, dtype=torch.float32)
    _, std, *_ = stats.tensor_summary(x).tolist()
    # the float32 values are 1e4 +- 0.009765625 (the float32 spacing at 1e4 is 2**-10)
    assert std == pytest.approx(x.double().std(correction=0).item(), rel=1e-3)
    assert std == pytest.approx(2**-10 * 10, rel=1e-3)


def test_bfloat16_summary_accumulates_in_float32():
    ref = torch.randn(100_000, dtype=torch.float64)
    x = ref.to(torch.bfloat16)
    mean, std, *_ = stats.tensor_summary(x).tolist()
    exact = x.double()
    assert mean == pytest.approx(exact.mean().item(), abs=1e-5)
    assert std == pytest.approx(exact.std(correction=0).item(), rel=1e-5)


def test_feature_std_ignores_a_shared_offset():
    # every example the same, plus a large bias: no input-dependent signal at all
    out = torch.full((8, 5), 3.0)
    assert stats.feature_std(out) == 0.0
    # feature 0 alternates +-1 across the batch, feature 1 is constant: mean of (1, 0)
    out = torch.tensor([[1.0, 7.0], [-1.0, 7.0]] * 4)
    assert stats.feature_std(out) == pytest.approx(0.5)


@pytest.mark.parametrize("shape", [(64, 1024), (16, 8, 6, 6), (1, 10), (700, 800)])
def test_output_summary_against_float64_references(shape):
    gen = torch.Generator().manual_seed(11)
    out = torch.relu(torch.randn(shape, generator=gen) + 0.3) + 5.0 * (torch.arange(shape[-1]) % 3)
    mean, std, zero_fraction, per_feature = stats.output_summary(out)
    exact = out.double().reshape(shape[0], -1)
    assert mean == pytest.approx(exact.mean().item(), rel=1e-6)
    assert std == pytest.approx(exact.std(correction=0).item(), rel=1e-5)
    assert zero_fraction == pytest.approx(float((exact == 0).double().mean()), abs=1e-12)
    if shape[0] == 1:
        assert math.isnan(per_feature)
    else:
        assert per_feature == pytest.approx(exact.std(dim=0, correction=0).mean().item(), rel=1e-5)


def test_output_summary_zero_fraction():
    out = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    mean, std, zero_fraction, _ = stats.output_summary(out)
    assert zero_fraction == 0.75 and mean == 0.5


def test_chunk_means_per_gate():
    b = torch.cat([torch.full((3,), float(i)) for i in range(4)])
    assert stats.chunk_means(b, 4).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_deferred_brings_values_back_by_key():
    d = transfer.Deferred()
    d.add("a", torch.tensor([1.0, 2.0]))
    d.add(("b", 1), torch.tensor(3.0))
    assert d.resolve() == {"a": [1.0, 2.0], ("b", 1): [3.0]}


@pytest.mark.parametrize("name", ["gelu", "silu", "mish", "elu", "softplus"])
def test_second_moment_gains_by_monte_carlo(name):
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    phi = getattr(torch.nn.functional, name)
    expected = 1 / math.sqrt(phi(z).square().mean().item())
    assert gains.second_moment_gain(name) == pytest.approx(expected, rel=5e-3)


def test_gain_range():
    relu = knowledge.Activation("relu")
    assert gains.gain_range(relu) == (math.sqrt(2), math.sqrt(2))
    leaky = knowledge.Activation("leaky_relu", 0.2)
    g = math.sqrt(2 / (1 + 0.2**2))
    assert gains.gain_range(leaky) == pytest.approx((g, g))
    assert gains.gain_range(knowledge.Activation("tanh")) == pytest.approx((1.0, 5 / 3))
    assert gains.gain_range(knowledge.LINEAR) == (1.0, 1.0)
    assert gains.gain_range(knowledge.Activation("selu")) == (1.0, 1.0)


def test_sigmoid_gain_runs_from_lecun_to_the_inverse_of_its_slope_at_zero():
    # Glorot & Bengio (2010)'s linearisation: near 0 a sigmoid scales its input by its slope
    # there, so the weight that keeps the gradient's variance is 1/slope times the linear one
    z = torch.zeros((), dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(torch.sigmoid(z), z)
    low, high = gains.gain_range(knowledge.Activation("sigmoid"))
    assert low == torch.nn.init.calculate_gain("sigmoid") == 1.0
    assert high == pytest.approx(1 / slope.item())
    # the fix draws the upper end, as for tanh
    call = gains.init_call(knowledge.Activation("sigmoid"), "w", 64)
    w = torch.empty(64, 64)
    eval(call, {"nn": torch.nn, "math": math, "torch": torch, "w": w})
    assert w.std().item() == pytest.approx(high / 8, rel=0.05)


def test_classify():
    assert knowledge.classify(nn.Conv2d(3, 4, 3)) == (knowledge.LAYER, None)
    assert knowledge.classify(nn.BatchNorm2d(4))[0] == knowledge.NORM
    assert knowledge.classify(nn.LeakyReLU(0.1)) == (knowledge.ACTIVATION, knowledge.Activation("leaky_relu", 0.1))
    assert knowledge.classify(nn.ReLU6())[1].name == "relu"
    assert knowledge.classify(nn.Dropout())[0] == knowledge.PASSTHROUGH
    assert knowledge.classify(nn.LSTM(3, 4))[0] == knowledge.OTHER


def test_subnormal_count():
    tiny = torch.finfo(torch.float32).tiny
    x = torch.tensor([0.0, tiny / 4, -tiny / 1024, tiny, 1.0])  # two below the smallest normal
    assert stats.tensor_summary(x).tolist()[6] == 2.0


def test_activation_summary_dead_units_and_saturation():
    out = torch.zeros(4, 3)
    out[0, 0] = 1.0  # unit 0 fires once; units 1 and 2 never
    dead_last, dead_channel, saturated = stats.activation_summary(out, "relu")
    assert dead_last == pytest.approx(2 / 3) and math.isnan(dead_channel) and math.isnan(saturated)
    conv = torch.zeros(2, 4, 5, 5)
    conv[1, 3, 2, 2] = 0.5  # only channel 3 ever fires
    assert stats.activation_summary(conv, "relu")[1] == pytest.approx(3 / 4)
    y = torch.tensor([[0.999, -0.995, 0.5, 0.0]])
    assert stats.activation_summary(y, "tanh")[2] == pytest.approx(0.5)
    s = torch.tensor([[0.005, 0.5, 0.995, 0.3]])
    assert stats.activation_summary(s, "sigmoid")[2] == pytest.approx(0.5)


def test_dead_units_are_the_columns_with_no_nonzero_element():
    out = torch.zeros(4, 6)
    out[0, 1], out[1, 1] = 1.0, -1.0  # sums to 0, but fires
    out[2, 2] = float("nan")  # unknown, not dead
    out[3, 3] = 1e-30  # its square underflows in float32, but it is not zero
    out[0, 4] = torch.finfo(torch.float32).tiny / 8  # subnormal, not zero
    dead_last, _, _ = stats.activation_summary(out, "relu")
    assert dead_last == pytest.approx(2 / 6)  # columns 0 and 5
    conv = torch.zeros(3, 4, 2, 5)
    conv[2, 1, 1, 3] = -1e-30  # channel 1 and last-dim unit 3 fire, once
    conv[0, 2, 0, 0] = float("nan")
    dead_last, dead_channel, _ = stats.activation_summary(conv, "relu")
    assert dead_channel == pytest.approx(2 / 4) and dead_last == pytest.approx(3 / 5)
    half = torch.zeros(2, 3, dtype=torch.bfloat16)
    half[1, 2] = 1e-38  # representable in bfloat16, far below float32's square range
    assert stats.activation_summary(half, "relu")[0] == pytest.approx(2 / 3)
    # larger than one block of columns (2 x 300000 > 2^19: two blocks of 262144 columns);
    # columns 7 and 299999 fire and 140000 holds a NaN: the other 299997 are dead
    wide = torch.zeros(2, 300_000)
    wide[0, 7], wide[1, 299_999], wide[1, 140_000] = 1.0, -2.0, float("nan")
    assert stats.activation_summary(wide, "relu")[0] == pytest.approx((300_000 - 3) / 300_000)


def test_block_singular_values_of_orthogonal_blocks():
    w = torch.cat([torch.linalg.qr(torch.randn(8, 8))[0] * g for g in (1.0, 2.0, 0.5)])
    sv = stats.block_singular_values(w, 3).tolist()
    assert sv == pytest.approx([1, 1, 2, 2, 0.5, 0.5], rel=1e-6)


def test_spectral_radius():
    w = torch.diag(torch.tensor([0.5, -1.5, 1.0]))
    assert stats.spectral_radius(w).item() == pytest.approx(1.5)
    rotation = torch.tensor([[0.0, -2.0], [2.0, 0.0]])  # eigenvalues +-2i
    assert stats.spectral_radius(rotation).item() == pytest.approx(2.0)


def test_float16_summary_against_an_independent_float64_reference():
    ref = (torch.randn(50_000, dtype=torch.float64) * 0.02 + 0.5).to(torch.float16)
    mean, std, lo, hi, *_ = stats.tensor_summary(ref).tolist()
    exact = ref.double()  # the stored float16 values, in float64
    assert mean == pytest.approx(exact.mean().item(), rel=1e-6)
    assert std == pytest.approx(exact.std(correction=0).item(), rel=1e-4)
    assert (lo, hi) == (exact.min().item(), exact.max().item())


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(64, 64) * 0.05,  # an ordinary weight: the fast path
        lambda: torch.ones(64),  # a norm gain: its variance cancels, redone exactly
        lambda: 1e4 + torch.randn(4096) * 1e-2,  # a large mean over a small spread: redone
        lambda: torch.tensor([1.0, float("nan"), float("inf"), 0.0, 2.0] * 10),  # non-finite: redone
        lambda: torch.cat([torch.randn(100), torch.full((7,), 1e-40), torch.zeros(5)]),  # subnormals
        lambda: (torch.randn(256, 32) * 0.02).to(torch.bfloat16),
        # above stats.SMALL, summarized one by one (fast_summary, completed where needed)
        lambda: torch.randn(128, 96) * 0.05,
        lambda: torch.ones(9000),
        lambda: 1e4 + torch.randn(9000) * 1e-2,
        lambda: torch.tensor([1.0, float("nan"), float("inf"), 0.0, 2.0] * 2000),
        lambda: torch.cat([torch.randn(9000), torch.full((7,), 1e-40), torch.zeros(5)]),
        lambda: (torch.randn(256, 64) * 0.02).to(torch.bfloat16),
    ],
    ids=["ordinary", "ones", "large-mean", "non-finite", "subnormal", "bfloat16",
         "ordinary-large", "ones-large", "large-mean-large", "non-finite-large", "subnormal-large", "bfloat16-large"],
)
def test_the_inspector_records_the_exact_summary(make):
    from initaudit.record.inspector import inspect

    holder = nn.Module()
    holder.p = nn.Parameter(make(), requires_grad=False)
    holder.forward = lambda x: x
    (record,) = [t for t in inspect(holder, torch.zeros(2, 2)).tensors if t.name == "p"]
    mean, std, lo, hi, zeros, nonfinite, subnormal = stats.tensor_summary(holder.p).tolist()
    got = [record.mean, record.std, record.min, record.max]
    for a, b in zip(got, [mean, std, lo, hi]):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-4, abs=1e-9)
    exact = holder.p.double()
    if torch.isfinite(exact).all():  # and against torch's own float64 reductions
        assert record.std == pytest.approx(exact.std(correction=0).item(), rel=1e-4, abs=1e-9)
    assert record.zero_fraction * record.numel == zeros
    assert (record.nonfinite, record.subnormal) == (nonfinite, subnormal)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_summaries_of_tensors_larger_than_one_slice_match_a_float64_reference(dtype):
    # 600k elements: three slices of the temporaries, and the widening of half types slice by slice
    gen = torch.Generator().manual_seed(3)
    ref = (torch.randn(600_001, generator=gen, dtype=torch.float64) * 0.05 + 0.01).to(dtype)
    ref[12] = 0.0
    ref[400_000] = 0.0
    if dtype != torch.float16:
        ref[500_000] = 1e-39  # subnormal in float32 and bfloat16
    exact = ref.double()
    want_sub = int(((exact != 0) & (exact.abs() < torch.finfo(dtype).tiny)).sum())
    mean, std, lo, hi, zeros, nonfinite, subnormal = stats.tensor_summary(ref).tolist()
    assert mean == pytest.approx(exact.mean().item(), rel=1e-5)
    assert std == pytest.approx(exact.std(correction=0).item(), rel=1e-5)
    assert (lo, hi) == (exact.min().item(), exact.max().item())
    assert (zeros, nonfinite, subnormal) == (2, 0, want_sub)
    rows = stats.fast_summary(ref).tolist()
    assert len(rows) == 5 * 2  # two slices, one row each
    fast = stats.combine_fast(ref.numel(), rows)
    assert fast[0] == pytest.approx(exact.mean().item(), rel=1e-5)
    assert fast[1] == pytest.approx(exact.var(correction=0).item(), rel=1e-4)
    assert (fast[2], fast[3]) == (exact.min().item(), exact.max().item())
    assert fast[4] == 0.0  # min |x|: the zeros
    assert stats.needs_counts(fast, dtype)
    assert stats.small_counts(ref).tolist() == [2.0, float(want_sub)]


@pytest.mark.parametrize("where", [10, 300_000, 650_000])
def test_fast_summary_finds_the_smallest_magnitude_in_any_slice(where):
    x = torch.linspace(1.0, 2.0, 700_000)
    x[where] = -1e-3  # negative: min |x| is not min x
    fast = stats.combine_fast(x.numel(), stats.fast_summary(x).tolist())
    assert fast[4] == pytest.approx(1e-3)
    assert (fast[2], fast[3]) == (pytest.approx(-1e-3), 2.0)
    assert not stats.needs_counts(fast, x.dtype)


def test_fast_summary_of_an_empty_tensor_is_neutral():
    rows = stats.fast_summary(torch.zeros(0, 3)).tolist()
    assert rows == [0.0, 0.0, math.inf, -math.inf, math.inf]
    assert all(math.isnan(v) for v in stats.combine_fast(0, rows))


def test_small_tensors_summarized_together_match_one_by_one():
    gen = torch.Generator().manual_seed(5)
    tensors = [
        torch.randn(7, generator=gen),
        torch.ones(5),  # a norm gain: variance 0
        torch.zeros(3),  # a zero bias
        torch.randn(4, 3, generator=gen).to(torch.bfloat16),
        torch.tensor([1.0, float("nan"), -2.0]),
        torch.tensor([2.5]),
        torch.randn(2, 3, 3, 3, generator=gen, dtype=torch.float64),
        torch.tensor([1e-40, 0.0, -1.0]),  # subnormal in float32
        torch.tensor([1e-6, 0.5], dtype=torch.float16),  # subnormal in float16 only
    ]
    summaries, probes = stats.small_summaries(tensors)
    for t, row, probe in zip(tensors, summaries.tolist(), probes.tolist()):
        one = stats.tensor_summary(t).tolist()  # the exact summary, one tensor at a time
        assert row == pytest.approx(one, rel=1e-6, abs=1e-9, nan_ok=True)
        exact = t.double().reshape(-1)  # and against torch's own float64 reductions
        if not torch.isnan(exact).any():
            assert row[:4] == pytest.approx([exact.mean().item(), exact.std(correction=0).item(), exact.min().item(),
                                             exact.max().item()], rel=1e-9, abs=1e-12)
        assert row[4:] == [float((exact == 0).sum()), float((~torch.isfinite(exact)).sum()),
                           float(((exact != 0) & (exact.abs() < torch.finfo(t.dtype).tiny)).sum())]
        if t.numel() > 1:
            assert probe == pytest.approx(stats.probe(t).tolist(), nan_ok=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_gradient_fast_against_a_float64_reference(dtype):
    # 1.2M elements: three slices when a half type is widened slice by slice
    gen = torch.Generator().manual_seed(4)
    g = (torch.randn(1_200_000, generator=gen, dtype=torch.float64) * 1e-3 + 2e-4).to(dtype)
    exact = g.double()
    norm, std, nonfinite = stats.gradient_from_fast(g.numel(), stats.gradient_fast(g).tolist())
    assert norm == pytest.approx(exact.norm().item(), rel=1e-5)
    assert std == pytest.approx(exact.std(correction=0).item(), rel=1e-4)
    assert nonfinite == 0.0
    g[5] = float("nan")
    assert stats.gradient_from_fast(g.numel(), stats.gradient_fast(g).tolist()) is None  # redone exactly


def test_output_zero_fraction_of_half_outputs_and_outputs_holding_nan():
    out = torch.tensor([[0.0, 2.0, -0.0], [0.0, -1.5, 3.0]], dtype=torch.bfloat16)
    assert stats.output_summary(out)[2] == pytest.approx(0.5)  # -0.0 is a zero too
    out = torch.tensor([[0.0, float("nan")], [1.0, 2.0]])
    mean, _, zero_fraction, _ = stats.output_summary(out)
    assert math.isnan(mean) and math.isnan(zero_fraction)  # unknown, not a guess


def test_output_nonzero_count_stays_exact_beyond_float32_integers():
    # 2^24 + 3 ones: float32 cannot hold that count (it rounds to 2^24 + 4)
    out = torch.ones(1, 2**24 + 3)
    out[0, 7] = 0.0
    assert stats.output_moments(out).tolist()[3] == 2**24 + 2
    assert stats.output_summary(out)[2] == pytest.approx(1 / (2**24 + 3), rel=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_small_counts_by_hand_in_every_float_dtype(dtype):
    """Zeros of either sign, subnormals of either sign, and the edges that are neither."""
    tiny = torch.finfo(dtype).tiny
    x = torch.tensor([0.0, -0.0, tiny / 4, -tiny / 2, tiny, -tiny, 1.0, math.nan, -math.inf], dtype=dtype)
    assert stats.small_counts(x).tolist() == [2.0, 2.0]
    big = torch.ones(3 << 19, dtype=dtype)  # three slices of the kept buffer
    big[::1000] = 0.0
    big[7::100_000] = tiny / 2
    assert stats.small_counts(big).tolist() == [float(len(range(0, 3 << 19, 1000))), float(len(range(7, 3 << 19, 100_000)))]
