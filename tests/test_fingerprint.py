"""The init fingerprint names the torch.nn.init scheme that drew a tensor, 95% of the time."""

import math
import random
from collections import Counter, defaultdict

import pytest
import torch
from torch import nn

from initaudit.analysis.fingerprint import identify
from initaudit.core.records import TensorRecord
from initaudit.record import queue, transfer
from initaudit.stats.fans import fan_in_and_fan_out
from initaudit.stats.shape import shape_stats
from initaudit.stats.summaries import tensor_summary

SHAPES_2D = [(64, 64), (128, 64), (64, 256), (256, 256), (100, 300), (512, 128)]
SHAPES_CONV = [(32, 16, 3, 3), (64, 32, 3, 3), (32, 16, 5, 5), (128, 64, 1, 1)]
# gains as users pass them: from nn.init.calculate_gain
GAINS = [nn.init.calculate_gain(n) for n in ("linear", "relu", "tanh", "selu")]


def record_of(w):
    """A TensorRecord filled the way the inspector fills it, from the tensor alone."""
    mean, std, lo, hi, zeros, nonfinite, subnormal = tensor_summary(w).tolist()
    kurtosis, off, spread = shape_stats(w).tolist()
    fan_in, fan_out = fan_in_and_fan_out(w.shape)
    return TensorRecord(
        names=["w"], kind="parameter", module="", module_type="", attr="weight", shape=tuple(w.shape),
        dtype="float32", device="cpu", requires_grad=True, floating=True, numel=w.numel(),
        mean=mean, std=std, min=lo, max=hi, zero_fraction=zeros / w.numel(), nonfinite=int(nonfinite),
        fan_in=fan_in, fan_out=fan_out, kurtosis=kurtosis, ortho_offdiag=off, ortho_spread=spread,
    )


def draws(rng):
    """(initializer, family, std the scheme gives (None: only the family is checked), tensor)."""
    for _ in range(6):
        for shape in SHAPES_2D + SHAPES_CONV:
            w = torch.empty(shape)
            fan_in, fan_out = fan_in_and_fan_out(shape)
            gain = rng.choice(GAINS)
            mode = rng.choice(["fan_in", "fan_out"])
            fan = fan_in if mode == "fan_in" else fan_out
            nonlinearity = rng.choice(["relu", "linear", "tanh", "selu", "leaky_relu"])
            g = nn.init.calculate_gain(nonlinearity)
            yield "xavier_uniform_", "uniform", gain * math.sqrt(2 / (fan_in + fan_out)), nn.init.xavier_uniform_(w.clone(), gain=gain)
            yield "xavier_normal_", "normal", gain * math.sqrt(2 / (fan_in + fan_out)), nn.init.xavier_normal_(w.clone(), gain=gain)
            yield "kaiming_uniform_", "uniform", g / math.sqrt(fan), nn.init.kaiming_uniform_(w.clone(), mode=mode, nonlinearity=nonlinearity)
            yield "kaiming_normal_", "normal", g / math.sqrt(fan), nn.init.kaiming_normal_(w.clone(), mode=mode, nonlinearity=nonlinearity)
            yield "default (a=sqrt(5))", "uniform", 1 / math.sqrt(3 * fan_in), nn.init.kaiming_uniform_(w.clone(), a=math.sqrt(5))
            bound = rng.choice([0.05, 0.3, 1.0])
            yield "uniform_", "uniform", None, nn.init.uniform_(w.clone(), -bound, bound)
            yield "normal_", "normal", None, nn.init.normal_(w.clone(), 0, rng.choice([0.01, 0.02, 0.1, 1.0]))
            std = rng.choice([0.02, 0.1, 1.0])
            yield "trunc_normal_", "truncated_normal", None, nn.init.trunc_normal_(w.clone(), std=std, a=-2 * std, b=2 * std)
            yield "orthogonal_", "orthogonal", None, nn.init.orthogonal_(w.clone(), gain=gain)
            yield "constant_", "constant", None, nn.init.constant_(w.clone(), rng.choice([0.0, 1.0, 0.3]))
            if len(shape) == 2:
                yield "eye_", "identity", None, nn.init.eye_(w.clone())
                yield "sparse_", "sparse", None, nn.init.sparse_(w.clone(), sparsity=rng.choice([0.1, 0.5, 0.9]))
            else:
                yield "dirac_", "dirac", None, nn.init.dirac_(w.clone())


def test_fingerprint_names_the_right_init_at_least_95_percent():
    torch.manual_seed(0)
    rng = random.Random(0)
    confusion = defaultdict(Counter)
    right = total = 0
    for name, family, std, w in draws(rng):
        assert w.numel() >= 4096
        found = identify(record_of(w))
        ok = found is not None and found.family == family
        if ok and std is not None:
            # the named scheme must give this tensor's std (schemes that coincide for a
            # shape, such as Glorot and LeCun on a square matrix, are the same distribution)
            ok = found.matched and abs(math.log(found.std / std)) < math.log(1.15)
        confusion[name][found.family if found else "none"] += 1
        right += ok
        total += 1
    families = sorted({f for row in confusion.values() for f in row})
    print(f"\n{'drawn with':22}" + "".join(f"{f[:12]:>13}" for f in families))
    for name, row in sorted(confusion.items()):
        print(f"{name:22}" + "".join(f"{row.get(f, 0):>13}" for f in families))
    print(f"right: {right}/{total} = {right / total:.1%}")
    assert right / total >= 0.95


def test_fingerprint_of_pytorch_default_linear():
    found = identify(record_of(nn.Linear(256, 128).weight.detach()))
    assert "PyTorch's default" in found.torch_call


def test_keras_names():
    w = torch.empty(256, 256)
    # on a square matrix Glorot and LeCun coincide; a wide one tells them apart
    assert identify(record_of(nn.init.xavier_uniform_(torch.empty(128, 512)))).keras == "glorot_uniform"
    assert identify(record_of(nn.init.kaiming_uniform_(torch.empty(128, 512), nonlinearity="relu"))).keras == "he_uniform"
    assert identify(record_of(nn.init.orthogonal_(w.clone()))).keras == "Orthogonal"
    assert identify(record_of(nn.init.eye_(w.clone()))).keras == "Identity"


def test_batched_statistics_equal_each_weights_own(monkeypatch):
    """The inspector stacks weights of one shape (queue.queue_shape_stats); each row must
    be the weight's own, also across the chunks a small batch limit splits them into."""
    from initaudit.stats import shape

    torch.manual_seed(0)
    big = [nn.init.orthogonal_(torch.empty(256, 512)), torch.empty(256, 512).uniform_(-1, 1),
           torch.randn(256, 512), nn.init.trunc_normal_(torch.empty(256, 512))]  # sampled: 2^17 > 32768
    tall = [nn.init.orthogonal_(torch.empty(300, 20)), torch.randn(300, 20)]
    conv = [torch.randn(8, 4, 3, 3), torch.zeros(8, 4, 3, 3).uniform_()]
    monkeypatch.setattr(shape, "_BATCH_ELEMENTS", 3 * (32768 + 32 * 512))  # chunks of 3 and 1
    items = [(transfer.TensorValues(), w) for w in big + tall + conv]
    deferred = transfer.Deferred()
    queue.queue_shape_stats(items, deferred)
    deferred.resolve()
    for key, (values, w) in enumerate(items):
        own = []
        # by hand, the definitions: kurtosis over the sample, Gram of the first 32 rows (columns if tall)
        flat = w.reshape(-1)
        sample = flat.view(32, -1)[:, :1024].reshape(-1) if flat.numel() > 32768 else flat
        c = sample.double() - sample.double().mean()
        own.append(((c ** 4).mean() / (c ** 2).mean() ** 2).item())
        m = w.reshape(w.shape[0], -1).double()
        s = m[:32] if m.shape[0] <= m.shape[1] else m[:, :32].T
        g = s @ s.T
        d = g.diagonal()
        own.append((g - torch.diag(d)).abs().max().item() / d.mean().item())
        own.append((d.max() - d.min()).item() / d.mean().item())
        assert values.shape == pytest.approx(own, rel=1e-4, abs=1e-5), key
