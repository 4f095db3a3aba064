"""The trainability benchmark's model configurations, each deterministic in its index.

``config(i)`` is a plain dict (JSON-able): the family, the architecture and the init recipe,
drawn from ``random.Random(i)``. ``build(cfg)`` makes the model under ``torch.manual_seed``
of the index, so one index always gives one model. The families cover what users train:
plain MLPs, CNNs (plain and residual, with and without BatchNorm), residual MLPs with
LayerNorm, small transformers (pre-LN and post-LN), LSTM/GRU sequence models and a frozen
base with LoRA adapters; the inits span every ``torch.nn.init`` scheme, PyTorch's defaults,
the recipes real architectures use on purpose (GPT-2's scaled residual init, zero-init
residual branches, LoRA's zero B, forget bias 1) and planted faults (zero or constant
hidden layers, N(0, 1) and uniform(-10, 10), zero norm gains, cloned and shared layers).
"""

from __future__ import annotations

import copy
import math
import random
from typing import Any, Callable, Dict, List

import torch
from torch import nn

FAMILIES = ("mlp", "cnn", "resmlp", "transformer", "rnn", "lora")

ACTIVATIONS = {
    "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.1), "gelu": nn.GELU, "silu": nn.SiLU,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "selu": nn.SELU,
}
# the gain torch.nn.init.calculate_gain gives each (GELU and SiLU: ReLU's, as users pass it)
GAIN_NAME = {"relu": "relu", "leaky_relu": "leaky_relu", "gelu": "relu", "silu": "relu", "tanh": "tanh",
             "sigmoid": "sigmoid", "selu": "selu"}

# weight inits of a layer: name -> how often it is drawn
WEIGHT_INITS = {
    "default": 5, "kaiming_normal": 3, "kaiming_uniform": 2, "xavier_normal": 2, "xavier_uniform": 2,
    "orthogonal": 2, "normal_0.01": 2, "normal_0.1": 2, "normal_1": 3, "uniform_10": 3, "trunc_normal_0.02": 1,
    "lecun_normal": 1, "gain_0.5": 2, "gain_2": 2,
}
# a fault planted in one hidden layer (or none)
FAULTS = {"none": 8, "zero_hidden": 2, "constant_hidden": 2, "clone_layers": 1, "shared_layer": 1}


def _pick(rng: random.Random, weights: Dict[str, int]) -> str:
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


# indices from here on draw the scales that more often fail (too large, too small, and deep
# stacks without normalization), in the families where scale decides: the first 400 give
# 20% failing labels, which is too few to measure a false-alarm rate against
STRESS_FROM = 400
STRESS_FAMILIES = ("mlp", "cnn", "resmlp", "lora")
STRESS_INITS = {"normal_1": 3, "uniform_10": 2, "gain_2": 2, "gain_0.5": 2, "normal_0.01": 2, "default": 2,
                "kaiming_normal": 1}


# indices from here on are the *extended range*: Hugging Face models built from small configs
# (GPT-2, Llama, BERT, ViT) at their own init and with planted faults, and transformers and
# CNNs at the larger sizes users train (up to 12 blocks, width up to 256); a block of six
# holds one of each kind, so both splits hold every kind
EXTENDED_FROM = 520
EXTENDED_KINDS = ("gpt2", "llama", "bert", "vit", "transformer", "cnn")
HF_ARCHS = ("gpt2", "llama", "bert", "vit")
# what is done to a Hugging Face model after its own ``_init_weights``: nothing (its own
# init), its config's ``initializer_range`` set larger, PyTorch's module defaults instead
# (``reset_parameters``, which is what a model without ``post_init`` gets), or a planted fault
HF_INITS = {"own": 6, "range_0.2": 1, "range_1": 2, "torch_default": 2, "normal_3": 1, "uniform_10": 1,
            "zero_norm_gain": 1, "zero_mlp_in": 1, "zero_embeddings": 1}
# (blocks, width) of the larger transformers: the corners of 2-12 blocks and width 64-256 that
# train in about a minute on one core
TRANSFORMER_SIZES = ((2, 64), (4, 64), (6, 64), (8, 64), (12, 64), (2, 128), (4, 128), (6, 128), (2, 256))


# indices from here on are the *defaults range*: plain MLPs and CNNs (no normalization, no
# residual) at PyTorch's own default init (``kaiming_uniform_(a=sqrt(5))``, std 1/sqrt(3 fan_in)),
# the model most users write first, at the depths they write it (3 to 16 layers): where the
# default init's shrinking signal (1/sqrt(6) of He's std per ReLU layer) stops training
DEFAULTS_FROM = 592
DEFAULTS_KINDS = ("mlp", "mlp", "cnn", "mlp", "mlp", "cnn")

# indices from here on are the *gains range*: the same plain MLPs and CNNs drawn at their
# nonlinearity's textbook std (He, Glorot, ...: ``calculate_gain`` times 1/sqrt(fan_in)) times
# 1.5 to 4, shallow to deep (2-12 layers): the scales too *large* by a known factor, whose
# growth compounds over the layers, as the defaults range holds those too small by one
GAINS_FROM = 664
GAINS = {"gain_1.5": 2, "gain_2": 3, "gain_3": 2, "gain_4": 2}


def config(index: int) -> Dict[str, Any]:
    """The configuration of benchmark model ``index``."""
    rng = random.Random(index)
    if index >= GAINS_FROM:
        return _gains_config(index, rng)
    if index >= DEFAULTS_FROM:
        return _defaults_config(index, rng)
    if index >= EXTENDED_FROM:
        return _extended_config(index, rng)
    if index >= STRESS_FROM:
        return _stress_config(index, rng)
    family = FAMILIES[index % len(FAMILIES)]
    cfg: Dict[str, Any] = {"index": index, "family": family}
    if family == "mlp":
        cfg.update(depth=rng.choice([2, 4, 8, 16, 30]), width=rng.choice([64, 128, 256]),
                   activation=rng.choice(list(ACTIVATIONS)), norm=rng.choice(["none", "none", "layer", "batch"]),
                   init=_pick(rng, WEIGHT_INITS), fault=_pick(rng, FAULTS))
    elif family == "cnn":
        cfg.update(depth=rng.choice([2, 4, 8]), channels=rng.choice([8, 16]), residual=rng.random() < 0.5,
                   batchnorm=rng.random() < 0.5, activation=rng.choice(["relu", "relu", "gelu", "tanh", "sigmoid"]),
                   init=_pick(rng, WEIGHT_INITS), zero_init_residual=rng.random() < 0.3,
                   fault=_pick(rng, {**FAULTS, "zero_norm_gain": 1}))
    elif family == "resmlp":
        cfg.update(blocks=rng.choice([2, 4, 8, 16]), width=rng.choice([64, 128, 256]),
                   activation=rng.choice(["relu", "gelu", "tanh"]), layernorm=rng.random() < 0.6,
                   init=_pick(rng, {**WEIGHT_INITS, "zero_branch": 3, "scaled_branch": 2}),
                   fault=_pick(rng, {**FAULTS, "zero_norm_gain": 1}))
    elif family == "transformer":
        cfg.update(blocks=rng.choice([2, 2, 3, 4]), width=rng.choice([64, 64, 96]), heads=4,
                   pre_ln=rng.random() < 0.6,
                   init=_pick(rng, {"default": 3, "gpt2": 4, "gpt2_no_scale": 2, "zero_branch": 2, "tfixup": 1,
                                    "normal_0.2": 2, "normal_1": 3, "normal_3": 2, "xavier_uniform": 1,
                                    "zero_attention_qk": 1}),
                   fault=_pick(rng, {"none": 8, "zero_hidden": 2, "zero_norm_gain": 1, "clone_layers": 1}))
    elif family == "rnn":
        cfg.update(cell=rng.choice(["lstm", "gru"]), layers=rng.choice([1, 2]), hidden=rng.choice([32, 64, 128]),
                   forget_bias=rng.choice(["default", "one", "forget_in_name", "zero"]),
                   orthogonal=rng.random() < 0.4,
                   init=_pick(rng, {"default": 4, "normal_0.01": 1, "normal_1": 2, "normal_3": 1, "uniform_10": 2,
                                    "xavier_uniform": 2, "zero_hh": 1}))
    else:  # lora
        cfg.update(depth=rng.choice([2, 4]), width=rng.choice([64, 128]), rank=rng.choice([4, 8]),
                   alpha=rng.choice([8, 16]),
                   init=_pick(rng, {"peft": 6, "both_zero": 2, "b_normal_1": 1, "a_zero": 1, "large_a": 1}))
    return cfg


def _stress_config(index: int, rng: random.Random) -> Dict[str, Any]:
    """A configuration of the stress range: the same families and keys, scales that more
    often fail (see :data:`STRESS_FROM`)."""
    family = STRESS_FAMILIES[index % len(STRESS_FAMILIES)]
    cfg: Dict[str, Any] = {"index": index, "family": family}
    if family == "mlp":
        cfg.update(depth=rng.choice([8, 16, 30]), width=rng.choice([64, 128]), activation=rng.choice(list(ACTIVATIONS)),
                   norm=rng.choice(["none", "none", "layer"]), init=_pick(rng, STRESS_INITS), fault="none")
    elif family == "cnn":
        cfg.update(depth=rng.choice([4, 8]), channels=8, residual=rng.random() < 0.3, batchnorm=rng.random() < 0.3,
                   activation=rng.choice(["relu", "tanh", "sigmoid"]), init=_pick(rng, STRESS_INITS),
                   zero_init_residual=False, fault="none")
    elif family == "resmlp":
        cfg.update(blocks=rng.choice([8, 16]), width=rng.choice([64, 128]), activation=rng.choice(["relu", "gelu", "tanh"]),
                   layernorm=rng.random() < 0.3, init=_pick(rng, STRESS_INITS), fault="none")
    else:
        cfg.update(depth=rng.choice([2, 4]), width=rng.choice([64, 128]), rank=rng.choice([4, 8]), alpha=rng.choice([8, 16]),
                   init=_pick(rng, {"peft": 2, "both_zero": 2, "b_normal_1": 2, "a_zero": 1, "large_a": 2}))
    return cfg


def _extended_config(index: int, rng: random.Random) -> Dict[str, Any]:
    """A configuration of the extended range (see :data:`EXTENDED_FROM`)."""
    kind = EXTENDED_KINDS[index % len(EXTENDED_KINDS)]
    if kind in HF_ARCHS:
        return {"index": index, "family": "hf", "arch": kind, "layers": rng.choice([2, 4]),
                "width": rng.choice([64, 128]), "init": _pick(rng, HF_INITS)}
    cfg: Dict[str, Any] = {"index": index, "family": kind}
    if kind == "transformer":
        blocks, width = rng.choice(TRANSFORMER_SIZES)
        cfg.update(blocks=blocks, width=width, heads=4, pre_ln=rng.random() < 0.6,
                   init=_pick(rng, {"default": 2, "gpt2": 3, "gpt2_no_scale": 2, "zero_branch": 1, "tfixup": 1,
                                    "normal_0.2": 1, "normal_1": 2, "normal_3": 1, "xavier_uniform": 1}),
                   fault=_pick(rng, {"none": 8, "zero_hidden": 1, "zero_norm_gain": 1, "clone_layers": 1}))
    else:
        cfg.update(depth=rng.choice([8, 12, 16]), channels=rng.choice([16, 32]), residual=rng.random() < 0.6,
                   batchnorm=rng.random() < 0.5, activation=rng.choice(["relu", "relu", "gelu", "tanh"]),
                   init=_pick(rng, WEIGHT_INITS), zero_init_residual=rng.random() < 0.3,
                   fault=_pick(rng, {**FAULTS, "zero_norm_gain": 1}))
    return cfg


def _plain_config(index: int, rng: random.Random, mlp_depths: List[int], cnn_depths: List[int],
                  init: Callable[[random.Random], str]) -> Dict[str, Any]:
    """A plain MLP or CNN (no normalization, no residual, no fault), one of each kind of
    :data:`DEFAULTS_KINDS` in turn; ``init`` draws its init scheme (after the activation)."""
    kind = DEFAULTS_KINDS[index % len(DEFAULTS_KINDS)]
    cfg: Dict[str, Any] = {"index": index, "family": kind}
    if kind == "mlp":
        cfg.update(depth=rng.choice(mlp_depths), width=rng.choice([64, 128, 256]),
                   activation=rng.choice(["relu", "relu", "leaky_relu", "gelu", "silu", "tanh"]), norm="none",
                   init=init(rng), fault="none")
    else:
        cfg.update(depth=rng.choice(cnn_depths), channels=rng.choice([8, 16]), residual=False,
                   batchnorm=False, activation=rng.choice(["relu", "relu", "gelu", "tanh"]), init=init(rng),
                   zero_init_residual=False, fault="none")
    return cfg


def _defaults_config(index: int, rng: random.Random) -> Dict[str, Any]:
    """A configuration of the defaults range (see :data:`DEFAULTS_FROM`)."""
    return _plain_config(index, rng, [3, 4, 6, 8, 12, 16], [2, 4, 8, 12, 16], lambda _: "default")


def _gains_config(index: int, rng: random.Random) -> Dict[str, Any]:
    """A configuration of the gains range (see :data:`GAINS_FROM`)."""
    return _plain_config(index, rng, [2, 3, 4, 6, 8, 12], [2, 4, 8, 12], lambda r: _pick(r, GAINS))


def configs(count: int) -> List[Dict[str, Any]]:
    return [config(i) for i in range(count)]


# inits -------------------------------------------------------------------------------------

def init_weight(w: torch.Tensor, scheme: str, activation: str = "relu") -> None:
    """Draw ``w`` in place by ``scheme`` (``default`` leaves PyTorch's own init)."""
    gain = nn.init.calculate_gain(GAIN_NAME.get(activation, "linear"), 0.1 if activation == "leaky_relu" else None)
    with torch.no_grad():
        if scheme == "default":
            return
        if scheme == "kaiming_normal":
            nn.init.kaiming_normal_(w, nonlinearity="relu")
        elif scheme == "kaiming_uniform":
            nn.init.kaiming_uniform_(w, nonlinearity="relu")
        elif scheme == "xavier_normal":
            nn.init.xavier_normal_(w, gain=gain)
        elif scheme == "xavier_uniform":
            nn.init.xavier_uniform_(w, gain=gain)
        elif scheme == "orthogonal":
            nn.init.orthogonal_(w, gain=gain)
        elif scheme == "lecun_normal":
            nn.init.kaiming_normal_(w, nonlinearity="linear")
        elif scheme.startswith("normal_"):
            nn.init.normal_(w, std=float(scheme.split("_")[1]))
        elif scheme == "uniform_10":
            nn.init.uniform_(w, -10, 10)
        elif scheme == "trunc_normal_0.02":
            nn.init.trunc_normal_(w, std=0.02, a=-0.04, b=0.04)
        elif scheme.startswith("gain_"):
            nn.init.kaiming_normal_(w, nonlinearity="linear")
            w.mul_(float(scheme.split("_")[1]) * gain)
        else:
            raise ValueError(f"unknown init {scheme!r}")


def _hidden_layers(layers: List[nn.Module]) -> List[nn.Module]:
    return layers[1:-1] if len(layers) > 2 else layers[:1]


def plant(fault: str, layers: List[nn.Module], rng: random.Random, norms: List[nn.Module] = ()) -> None:
    """Plant ``fault`` in one of ``layers`` (hidden ones first); shared layers are made by
    the builder, which knows the structure."""
    hidden = _hidden_layers(layers)
    with torch.no_grad():
        if fault == "zero_hidden":
            nn.init.zeros_(rng.choice(hidden).weight)
        elif fault == "constant_hidden":
            nn.init.constant_(rng.choice(hidden).weight, 0.05)
        elif fault == "clone_layers" and len(hidden) >= 2:
            src, dst = hidden[0], hidden[1]
            if src.weight.shape == dst.weight.shape:
                dst.weight.copy_(src.weight)
                if getattr(dst, "bias", None) is not None:
                    dst.bias.copy_(src.bias)
        elif fault == "zero_norm_gain" and norms:
            for norm in norms:
                if getattr(norm, "weight", None) is not None:
                    nn.init.zeros_(norm.weight)


# builders ----------------------------------------------------------------------------------

def _mlp(cfg: Dict[str, Any], rng: random.Random, d_in: int, d_out: int) -> nn.Module:
    act = ACTIVATIONS[cfg["activation"]]
    dims = [d_in] + [cfg["width"]] * (cfg["depth"] - 1) + [d_out]
    modules: List[nn.Module] = []
    layers: List[nn.Module] = []
    norms: List[nn.Module] = []
    shared = None
    for i in range(len(dims) - 1):
        if cfg["fault"] == "shared_layer" and i >= 1 and i < len(dims) - 2 and dims[i] == dims[i + 1]:
            shared = shared or nn.Linear(dims[i], dims[i + 1])
            layer = shared
        else:
            layer = nn.Linear(dims[i], dims[i + 1])
        init_weight(layer.weight, cfg["init"], cfg["activation"])
        modules.append(layer)
        layers.append(layer)
        if i < len(dims) - 2:
            if cfg["norm"] == "layer":
                norms.append(nn.LayerNorm(dims[i + 1]))
                modules.append(norms[-1])
            elif cfg["norm"] == "batch":
                norms.append(nn.BatchNorm1d(dims[i + 1]))
                modules.append(norms[-1])
            modules.append(act())
    plant(cfg["fault"], layers, rng, norms)
    return nn.Sequential(*modules)


class ConvBlock(nn.Module):
    def __init__(self, channels: int, activation: str, batchnorm: bool, residual: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=not batchnorm)
        self.bn1 = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()
        self.act = ACTIVATIONS[activation]()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=not batchnorm)
        self.bn2 = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return self.act(x + y if self.residual else y)


class CNN(nn.Module):
    def __init__(self, cfg: Dict[str, Any], classes: int) -> None:
        super().__init__()
        c = cfg["channels"]
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.Sequential(*[ConvBlock(c, cfg["activation"], cfg["batchnorm"], cfg["residual"])
                                      for _ in range(max(1, cfg["depth"] // 2))])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


def _cnn(cfg: Dict[str, Any], rng: random.Random, classes: int) -> nn.Module:
    model = CNN(cfg, classes)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        init_weight(conv.weight, cfg["init"], cfg["activation"])
    if cfg["zero_init_residual"] and cfg["residual"]:
        for block in model.blocks:
            target = block.bn2 if isinstance(block.bn2, nn.BatchNorm2d) else block.conv2
            nn.init.zeros_(target.weight)
    layers = [model.stem] + [c for b in model.blocks for c in (b.conv1, b.conv2)] + [model.head]
    if cfg["fault"] == "shared_layer" and len(model.blocks) >= 2:
        model.blocks[1].conv1 = model.blocks[0].conv1
    plant(cfg["fault"] if cfg["fault"] != "shared_layer" else "none", layers, rng,
          [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    return model


class ResidualMLP(nn.Module):
    def __init__(self, cfg: Dict[str, Any], d_in: int, d_out: int) -> None:
        super().__init__()
        w = cfg["width"]
        self.embed = nn.Linear(d_in, w)
        self.norms = nn.ModuleList([nn.LayerNorm(w) if cfg["layernorm"] else nn.Identity() for _ in range(cfg["blocks"])])
        self.fc1 = nn.ModuleList([nn.Linear(w, w) for _ in range(cfg["blocks"])])
        self.fc2 = nn.ModuleList([nn.Linear(w, w) for _ in range(cfg["blocks"])])
        self.act = ACTIVATIONS[cfg["activation"]]()
        self.head = nn.Linear(w, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for norm, fc1, fc2 in zip(self.norms, self.fc1, self.fc2):
            h = h + fc2(self.act(fc1(norm(h))))
        return self.head(h)


def _resmlp(cfg: Dict[str, Any], rng: random.Random, d_in: int, d_out: int) -> nn.Module:
    model = ResidualMLP(cfg, d_in, d_out)
    scheme = cfg["init"]
    for layer in [model.embed, *model.fc1, *model.fc2, model.head]:
        init_weight(layer.weight, "kaiming_normal" if scheme in ("zero_branch", "scaled_branch") else scheme, cfg["activation"])
    with torch.no_grad():
        for fc2 in model.fc2:
            if scheme == "zero_branch":
                nn.init.zeros_(fc2.weight)
                nn.init.zeros_(fc2.bias)
            elif scheme == "scaled_branch":
                fc2.weight.mul_(1 / math.sqrt(2 * cfg["blocks"]))
    if cfg["fault"] == "shared_layer" and cfg["blocks"] >= 2:
        model.fc1[1] = model.fc1[0]
    layers = [model.embed, *model.fc1, model.head]
    plant(cfg["fault"] if cfg["fault"] != "shared_layer" else "none", layers, rng,
          [n for n in model.norms if isinstance(n, nn.LayerNorm)])
    return model


class Block(nn.Module):
    def __init__(self, width: int, heads: int, pre_ln: bool) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.act = nn.GELU()
        self.pre_ln = pre_ln

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pre_ln:
            h = self.ln1(x)
            x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
            return x + self.fc2(self.act(self.fc1(self.ln2(x))))
        x = self.ln1(x + self.attn(x, x, x, attn_mask=mask, need_weights=False)[0])
        return self.ln2(x + self.fc2(self.act(self.fc1(x))))


class Transformer(nn.Module):
    def __init__(self, cfg: Dict[str, Any], vocab: int, length: int) -> None:
        super().__init__()
        w = cfg["width"]
        self.tokens = nn.Embedding(vocab, w)
        self.positions = nn.Parameter(torch.zeros(1, length, w))
        self.blocks = nn.ModuleList([Block(w, cfg["heads"], cfg["pre_ln"]) for _ in range(cfg["blocks"])])
        self.ln_f = nn.LayerNorm(w) if cfg["pre_ln"] else nn.Identity()
        self.head = nn.Linear(w, vocab)
        self.register_buffer("mask", torch.triu(torch.full((length, length), float("-inf")), diagonal=1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions[:, : ids.shape[1]]
        mask = self.mask[: ids.shape[1], : ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln_f(x))


def _transformer(cfg: Dict[str, Any], rng: random.Random, vocab: int, length: int) -> nn.Module:
    model = Transformer(cfg, vocab, length)
    scheme, n = cfg["init"], cfg["blocks"]
    with torch.no_grad():
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        projections = [b.attn.in_proj_weight for b in model.blocks]
        outputs = [b.attn.out_proj.weight for b in model.blocks] + [b.fc2.weight for b in model.blocks]
        if scheme in ("gpt2", "gpt2_no_scale", "zero_branch", "tfixup"):
            for w in [*(m.weight for m in linears), *projections, model.tokens.weight]:
                nn.init.normal_(w, std=0.02)
            nn.init.normal_(model.positions, std=0.01)
            for m in linears:
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            for w in outputs:
                if scheme == "gpt2":
                    nn.init.normal_(w, std=0.02 / math.sqrt(2 * n))
                elif scheme == "zero_branch":
                    nn.init.zeros_(w)
                elif scheme == "tfixup":
                    nn.init.xavier_uniform_(w)
                    w.mul_(0.67 * n ** -0.25)
        elif scheme.startswith("normal_"):
            for w in [*(m.weight for m in linears), *projections]:
                nn.init.normal_(w, std=float(scheme.split("_")[1]))
        elif scheme == "xavier_uniform":
            for w in [*(m.weight for m in linears), *projections]:
                nn.init.xavier_uniform_(w)
        elif scheme == "zero_attention_qk":
            for b in model.blocks:
                w = cfg["width"]
                nn.init.zeros_(b.attn.in_proj_weight[: 2 * w])
    layers = [m for b in model.blocks for m in (b.fc1, b.fc2)]
    plant(cfg["fault"], [model.head, *layers, model.head], rng,
          [m for m in model.modules() if isinstance(m, nn.LayerNorm)])
    return model


class Sequence(nn.Module):
    def __init__(self, cfg: Dict[str, Any], vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        rnn = nn.LSTM if cfg["cell"] == "lstm" else nn.GRU
        self.rnn = rnn(32, cfg["hidden"], num_layers=cfg["layers"], batch_first=True)
        self.head = nn.Linear(cfg["hidden"], vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(ids))[0])


def _rnn(cfg: Dict[str, Any], vocab: int) -> nn.Module:
    model = Sequence(cfg, vocab)
    hidden = cfg["hidden"]
    with torch.no_grad():
        for name, p in model.rnn.named_parameters():
            if name.startswith("weight"):
                if cfg["init"] == "zero_hh" and name.startswith("weight_hh"):
                    nn.init.zeros_(p)
                elif cfg["init"] not in ("default", "zero_hh"):
                    init_weight(p, cfg["init"], "tanh")
                if cfg["orthogonal"] and name.startswith("weight_hh"):
                    for k in range(p.shape[0] // hidden):
                        nn.init.orthogonal_(p[k * hidden:(k + 1) * hidden])
            elif cfg["cell"] == "lstm":
                if cfg["forget_bias"] == "zero":
                    nn.init.zeros_(p)
                elif cfg["forget_bias"] == "one":
                    nn.init.zeros_(p)
                    if name.startswith("bias_ih"):
                        p[hidden:2 * hidden] = 1.0
                elif cfg["forget_bias"] == "forget_in_name" and "forget" in name:
                    p.fill_(1.0)  # the popular recipe: no PyTorch name contains 'forget', so nothing is set
    return model


class LoRALinear(nn.Module):
    """A frozen base layer plus a trainable low-rank update ``(alpha / r) B A``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale


def _lora(cfg: Dict[str, Any], base: nn.Module) -> nn.Module:
    model = copy.deepcopy(base)
    for i, m in enumerate(model):
        if isinstance(m, nn.Linear):
            model[i] = LoRALinear(m, cfg["rank"], cfg["alpha"])
    with torch.no_grad():
        for m in model:
            if isinstance(m, LoRALinear):
                if cfg["init"] == "both_zero":
                    nn.init.zeros_(m.lora_A)
                elif cfg["init"] == "b_normal_1":
                    nn.init.normal_(m.lora_B, std=1.0)
                elif cfg["init"] == "a_zero":
                    nn.init.zeros_(m.lora_A)
                    nn.init.normal_(m.lora_B, std=0.02)
                elif cfg["init"] == "large_a":
                    nn.init.normal_(m.lora_A, std=10.0)
    return model


def lora_base(cfg: Dict[str, Any], d_in: int, d_out: int) -> nn.Module:
    """The frozen base of a LoRA configuration: a healthy ReLU MLP (He init)."""
    dims = [d_in] + [cfg["width"]] * (cfg["depth"] - 1) + [d_out]
    modules: List[nn.Module] = []
    for i in range(len(dims) - 1):
        layer = nn.Linear(dims[i], dims[i + 1])
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        modules += [layer, nn.ReLU()] if i < len(dims) - 2 else [layer]
    return nn.Sequential(*modules)


def _hf(cfg: Dict[str, Any], task: Any) -> nn.Module:
    """A Hugging Face model from a small config (built offline, its own ``_init_weights``),
    then ``cfg["init"]`` applied. Dropout is off so that the labels measure the init alone."""
    import transformers

    arch, layers, width, init = cfg["arch"], cfg["layers"], cfg["width"], cfg["init"]
    initializer_range = float(init.split("_")[1]) if init.startswith("range_") else 0.02
    common = dict(num_hidden_layers=layers, hidden_size=width, num_attention_heads=4, intermediate_size=4 * width,
                  initializer_range=initializer_range)
    if arch == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=task.vocab, n_positions=task.length, n_embd=width, n_layer=layers, n_head=4,
            initializer_range=initializer_range, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=0, eos_token_id=0))
    elif arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=task.vocab, max_position_embeddings=task.length, num_key_value_heads=2,
            bos_token_id=0, eos_token_id=0, pad_token_id=None, **common))
    elif arch == "bert":
        # a bidirectional encoder on next-token prediction learns to copy its right neighbour
        model = transformers.BertForMaskedLM(transformers.BertConfig(
            vocab_size=task.vocab, max_position_embeddings=task.length, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, pad_token_id=0, **common))
    else:
        model = transformers.ViTForImageClassification(transformers.ViTConfig(
            image_size=12, patch_size=4, num_channels=3, num_labels=task.classes, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, **common))
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")]
    matrices = [m.weight for m in model.modules()
                if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)) or type(m).__name__ == "Conv1D"]
    with torch.no_grad():
        if init == "torch_default":
            for m in model.modules():
                if m is not model and hasattr(m, "reset_parameters") and not type(m).__name__.endswith("RMSNorm"):
                    m.reset_parameters()
        elif init in ("normal_3", "uniform_10"):
            for w in matrices:
                nn.init.normal_(w, std=3.0) if init == "normal_3" else nn.init.uniform_(w, -10, 10)
        elif init == "zero_norm_gain":
            for norm in norms:
                nn.init.zeros_(norm.weight)
        elif init == "zero_mlp_in":
            for name, m in model.named_modules():
                if name.endswith(("mlp.c_fc", "mlp.up_proj", "mlp.gate_proj", "intermediate.dense")):
                    nn.init.zeros_(m.weight)
        elif init == "zero_embeddings":
            for m in model.modules():
                if isinstance(m, nn.Embedding):
                    nn.init.zeros_(m.weight)
            if arch == "vit":
                nn.init.zeros_(model.vit.embeddings.patch_embeddings.projection.weight)
    return model


DRAW_STRIDE = 1_000_003


def init_seed(index: int, draw: int = 0) -> int:
    """The torch seed of a configuration's weights: ``index`` for the labelled draw (``draw`` 0),
    ``draw * DRAW_STRIDE + index`` for another draw of the same recipe."""
    return draw * DRAW_STRIDE + index


def build(cfg: Dict[str, Any], task: Any, draw: int = 0) -> nn.Module:
    """The model of ``cfg`` for ``task`` (see :mod:`tasks`), the same for the same index; ``draw``
    > 0 draws the same recipe's weights again under another seed (the architecture, the planted
    fault's place and the task stay the configuration's)."""
    torch.manual_seed(init_seed(cfg["index"], draw))
    rng = random.Random(10_000 + cfg["index"])
    family = cfg["family"]
    if family == "mlp":
        return _mlp(cfg, rng, task.d_in, task.d_out)
    if family == "cnn":
        return _cnn(cfg, rng, task.classes)
    if family == "resmlp":
        return _resmlp(cfg, rng, task.d_in, task.d_out)
    if family == "transformer":
        return _transformer(cfg, rng, task.vocab, task.length)
    if family == "rnn":
        return _rnn(cfg, task.vocab)
    if family == "hf":
        return _hf(cfg, task)
    return _lora(cfg, task.base)
