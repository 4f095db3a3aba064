"""Init fingerprint: which init most likely produced a weight, from its own values.

The family comes from moments and structure:

- constant: ``min == max``;
- identity (``eye_``) and Dirac (``dirac_``): only 0 and 1, exactly ``min(out, in)`` ones;
- sparse (``sparse_``): a share of exact zeros, the rest normal;
- orthogonal (``orthogonal_``): sampled rows (or columns, for a tall matrix) are
  orthogonal with equal norms, ``W W^T = g^2 I``;
- uniform: kurtosis ``E[(x-m)^4] / s^4`` near 1.8 and ``max|x| / s`` near ``sqrt(3)``;
- truncated normal (at 2 std, as Keras and timm draw it): kurtosis near 2.4, ``max|x| / s``
  near 2.3; a truncation beyond about 3.5 std cannot be told from a normal draw;
- normal: kurtosis near 3.

The scale is then matched, in fan terms, against the schemes of ``torch.nn.init`` and
Keras: ``Var = 1 / (3 fan_in)`` is PyTorch's default ``kaiming_uniform_(a=sqrt(5))``,
``2 / fan_in`` He, ``1 / fan_in`` LeCun, ``2 / (fan_in + fan_out)`` Glorot, and so on.
Schemes that coincide for a shape (Glorot and LeCun on a square matrix) are the same
distribution there; the first listed is named.

The statistics it reads (kurtosis, orthogonality) are computed by
:func:`initaudit.stats.shape_stats`; this module only interprets them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

from initaudit.core.records import TensorRecord

SCALE_MATCH = 1.15  # a std within 15% of a scheme's is that scheme


# a normal truncated at +-2 std keeps this share of its nominal std
TRUNCATED_STD = 0.8796


# fan-scaled schemes: Var = gain^2 / fan for a mode (fan_avg = (fan_in + fan_out) / 2), with the
# gains torch.nn.init.calculate_gain gives; Keras's he/glorot/lecun_normal are truncated.
_GAINS = [
    ("linear", 1.0),
    ("relu", math.sqrt(2.0)),
    ("tanh", 5 / 3),
    ("selu", 3 / 4),
]  # leaky_relu's default slope 0.01 gives relu's gain to 1e-4: named relu


_KERAS_STEMS = {("relu", "fan_in"): "he", ("linear", "fan_avg"): "glorot", ("linear", "fan_in"): "lecun"}


def _fan_schemes() -> List[Tuple[str, str, Optional[str], float, str]]:
    """``(torch uniform call, torch normal call, Keras stem, scale = gain^2, mode)``."""
    schemes: List[Tuple[str, str, Optional[str], float, str]] = [
        ("kaiming_uniform_(a=math.sqrt(5)) (PyTorch's default for Linear and Conv)",
         "kaiming_normal_(a=math.sqrt(5))", None, 1 / 3, "fan_in"),
    ]
    for mode in ("fan_in", "fan_avg", "fan_out"):
        for nonlinearity, gain in _GAINS:
            if mode == "fan_avg":
                arg = "" if nonlinearity == "linear" else f"gain=nn.init.calculate_gain('{nonlinearity}')"
                uniform, normal = f"xavier_uniform_({arg})", f"xavier_normal_({arg})"
            else:
                arg = ("mode='fan_out', " if mode == "fan_out" else "") + f"nonlinearity='{nonlinearity}'"
                uniform, normal = f"kaiming_uniform_({arg})", f"kaiming_normal_({arg})"
            schemes.append((uniform, normal, _KERAS_STEMS.get((nonlinearity, mode)), gain ** 2, mode))
    return schemes


_FAN_SCHEMES = _fan_schemes()


def _keras(stem: Optional[str], scale: float, mode: str, distribution: str) -> str:
    if stem is not None and distribution != "untruncated_normal":
        return f"{stem}_{'uniform' if distribution == 'uniform' else 'normal'}"
    scale_text = {1 / 3: "1/3", 25 / 9: "25/9", 9 / 16: "9/16"}.get(scale, f"{scale:.4g}")
    return f"VarianceScaling(scale={scale_text}, mode='{mode}', distribution='{distribution}')"


# fixed-std normal draws that are common in practice
_FIXED = [
    (0.02, "normal_(std=0.02) (GPT-2 and BERT)", "RandomNormal(stddev=0.02)"),
    (1.0, "normal_() (nn.Embedding's default)", "RandomNormal(stddev=1.0)"),
    (0.01, "normal_(std=0.01)", "RandomNormal(stddev=0.01)"),
]


def candidates(family: str, fan_in: int, fan_out: int) -> List[Tuple[float, str, Optional[str]]]:
    """``(std, torch call, Keras name)`` of every named scheme of ``family`` at these fans."""
    found: List[Tuple[float, str, Optional[str]]] = []
    fans = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}
    for uniform, normal, stem, scale, mode in _FAN_SCHEMES:
        std = math.sqrt(scale / fans[mode])
        if family == "uniform":
            found.append((std, uniform, _keras(stem, scale, mode, "uniform")))
        elif family == "normal":
            found.append((std, normal, _keras(stem, scale, mode, "untruncated_normal")))
        else:
            # Keras widens its truncated draw so that the std after truncation is the nominal one;
            # torch's trunc_normal_(std=s) leaves 0.88 s
            wide = std / TRUNCATED_STD
            found.append((std, f"trunc_normal_(std={wide:.3g}, a={-2 * wide:.3g}, b={2 * wide:.3g})",
                          _keras(stem, scale, mode, "truncated_normal")))
            found.append((std * TRUNCATED_STD, f"trunc_normal_(std={std:.3g}, a={-2 * std:.3g}, b={2 * std:.3g})", None))
    if family == "normal":
        found += [(std, call, keras) for std, call, keras in _FIXED]
    if family == "truncated_normal":
        found.append((0.02 * TRUNCATED_STD, "trunc_normal_(std=0.02, a=-0.04, b=0.04)", "TruncatedNormal(stddev=0.02)"))
    return found


@dataclass
class Fingerprint:
    family: str
    torch_call: str
    keras: Optional[str]
    scale: str  # the std in fan terms, e.g. "std = 0.577/sqrt(fan_in)"
    matched: bool  # a named scheme fits within 15%
    std: Optional[float] = None  # the named scheme's std at this shape (measured when unnamed)

    def describe(self) -> str:
        keras = f" / Keras {self.keras}" if self.keras else ""
        return f"{self.torch_call}{keras}"

    def call(self, target: str) -> str:
        """The ``torch.nn.init`` call that draws ``target`` the same way, as a line of Python."""
        name, _, rest = self.torch_call.partition("(")
        depth, end = 1, len(rest)
        for i, char in enumerate(rest):  # the argument list ends at the matching parenthesis
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                end = i
                break
        args = rest[:end]
        if name == "eye_" or name == "dirac_":
            return f"nn.init.{name}({target})"
        return f"nn.init.{name}({target}{', ' + args if args else ''})"


def _family(t: TensorRecord) -> Optional[str]:
    kurtosis, bound = t.kurtosis, max(abs(t.min or 0), abs(t.max or 0)) / (t.std or 1)
    if kurtosis is None or not math.isfinite(kurtosis):
        return None
    if kurtosis < 2.1 and bound < 1.9:
        return "uniform"
    if kurtosis < 2.75 and bound < 2.6:
        return "truncated_normal"
    return "normal"


def identify(t: TensorRecord) -> Optional[Fingerprint]:
    """The most likely init of a floating weight of 2+ dimensions, or ``None``."""
    if not t.floating or t.ndim < 2 or t.std is None or t.min is None or t.nonfinite:
        return None
    fan_in, fan_out = t.fan_in or 1, t.fan_out or 1
    if t.min == t.max:
        call = "zeros_" if t.min == 0 else ("ones_" if t.min == 1 else f"constant_(val={t.min:g})")
        keras = "Zeros" if t.min == 0 else ("Ones" if t.min == 1 else f"Constant({t.min:g})")
        return Fingerprint("constant", call, keras, f"value {t.min:g}", True)
    nonzero = round(t.numel * (1 - (t.zero_fraction or 0)))
    if t.min == 0 and t.max == 1 and nonzero == min(t.shape[0], t.shape[1]):
        if t.ndim == 2:
            return Fingerprint("identity", "eye_", "Identity", "ones on the diagonal", True)
        return Fingerprint("dirac", "dirac_", None, "ones at the kernel centre", True)
    zf = t.zero_fraction or 0.0
    if 0.01 <= zf < 0.99:
        std = t.std / math.sqrt(1 - zf)
        return Fingerprint("sparse", f"sparse_(sparsity={zf:.2g}, std={std:.3g})", None, f"std {std:.3g} off the zeros", True)
    if t.ortho_offdiag is not None and t.ortho_offdiag < 1e-3 and (t.ortho_spread or 0) < 1e-3 and min(t.shape[0], math.prod(t.shape[1:])) > 1:
        gain = t.std * math.sqrt(max(t.shape[0], math.prod(t.shape[1:])))
        call = "orthogonal_()" if abs(gain - 1) < 0.05 else f"orthogonal_(gain={gain:.3g})"
        return Fingerprint("orthogonal", call, "Orthogonal" if abs(gain - 1) < 0.05 else f"Orthogonal(gain={gain:.3g})", f"gain {gain:.3g}", True)
    family = _family(t)
    if family is None or not t.std > 0 or not math.isfinite(t.std):
        return None
    scale = f"std = {t.std * math.sqrt(fan_in):.3g}/sqrt(fan_in)"
    named = [(abs(math.log(t.std / std)), call, keras, std) for std, call, keras in candidates(family, fan_in, fan_out)]
    off, call, keras, std = min(named, key=lambda n: n[0])  # ties: the first listed
    if off <= math.log(SCALE_MATCH):
        return Fingerprint(family, call, keras, scale, True, std)
    generic = {"uniform": f"uniform_(-{t.std * math.sqrt(3):.3g}, {t.std * math.sqrt(3):.3g})",
               "normal": f"normal_(std={t.std:.3g})",
               "truncated_normal": f"trunc_normal_(std={t.std / TRUNCATED_STD:.3g}, a={-2 * t.std / TRUNCATED_STD:.3g}, b={2 * t.std / TRUNCATED_STD:.3g})"}[family]
    return Fingerprint(family, generic, None, scale, False, t.std)
