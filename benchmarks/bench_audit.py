"""How much an audit costs next to one training step, measured in one process.

For each model: the plain step (forward + backward of the same random-projection loss
the audit uses), the whole audit, the parameter-statistics pass alone, and the floor of one
read of every parameter (`sum(p.sum())`). Prints the ratios; `--json FILE` writes them.
Medians of `--repeat` runs. Tools a user might reach for instead are timed beside it when
they are installed (torchinfo); a missing one is skipped, never an error.

    python benchmarks/bench_audit.py [--quick] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List

import torch
from torch import nn

from initaudit import audit
from initaudit.inspector import random_projection_loss
from initaudit.stats import Deferred, fast_summary, needs_exact, tensor_summary


def mlp(depth: int = 30, width: int = 1024) -> nn.Module:
    layers: List[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


class GPT2Shaped(nn.Module):
    """GPT-2-small's shape: 12 layers, d=768, 12 heads, vocab 50257 (tied head)."""

    def __init__(self, layers: int = 12, d: int = 768, vocab: int = 50257, context: int = 1024):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Embedding(context, d)
        block = nn.TransformerEncoderLayer(d, 12, 4 * d, dropout=0.0, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tokens.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        return self.head(self.norm(self.blocks(x)))


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int = 10000, d: int = 512):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.lstm = nn.LSTM(d, d, num_layers=2, batch_first=True)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embed(ids))[0])


def resnet_style(width: int = 64, blocks: int = 8) -> nn.Module:
    layers: List[nn.Module] = [nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    for _ in range(blocks):
        layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return nn.Sequential(*layers)


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_step(model: nn.Module, x: torch.Tensor) -> None:
    model.train()
    out = model(x)
    loss = random_projection_loss(out, 0)
    torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)


def parameter_pass(model: nn.Module) -> None:
    """The inspector's parameter pass: fast summaries, exact ones only where needed."""
    params = list({id(p): p for p in model.parameters()}.values())
    deferred = Deferred()
    for i, p in enumerate(params):
        deferred.add(i, fast_summary(p))
    values = deferred.resolve()
    redo = Deferred()
    for i, p in enumerate(params):
        if needs_exact(values[i]):
            redo.add(i, tensor_summary(p))
    redo.resolve()


def read_floor(model: nn.Module) -> None:
    float(sum(p.detach().sum() for p in model.parameters()))


def measure(name: str, model: nn.Module, x: torch.Tensor, repeat: int) -> Dict[str, float]:
    row = {
        "model": name,
        "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
        "step_s": median_seconds(lambda: plain_step(model, x), repeat),
        "audit_s": median_seconds(lambda: audit(model, x), repeat),
        "param_stats_s": median_seconds(lambda: parameter_pass(model), repeat),
        "read_floor_s": median_seconds(lambda: read_floor(model), repeat),
    }
    row["audit_vs_step"] = row["audit_s"] / row["step_s"]
    row["param_stats_vs_read"] = row["param_stats_s"] / row["read_floor_s"]
    try:
        import torchinfo  # noqa: F401

        row["torchinfo_s"] = median_seconds(lambda: torchinfo.summary(model, input_data=x, verbose=0), repeat)
    except ImportError:
        pass
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller models, one repeat: a smoke run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    repeat = 1 if args.quick else args.repeat
    scale = 4 if args.quick else 1
    cases = [
        ("mlp 30x1024 relu", mlp(30, 1024 // scale), torch.randn(64, 1024 // scale)),
        ("gpt2-small shape", GPT2Shaped(12 // scale, 768 // scale), torch.randint(0, 50257, (4, 64))),
        ("lstm lm", LSTMLanguageModel(10000, 512 // scale), torch.randint(0, 10000, (8, 32))),
        ("resnet-style cnn", resnet_style(64 // scale), torch.randn(16, 3, 32, 32)),
    ]
    rows = []
    for name, model, x in cases:
        rows.append(measure(name, model, x, repeat))
        r = rows[-1]
        print(f"{name:18} params {r['parameters']/1e6:7.1f}M  step {r['step_s']:.3f}s  audit {r['audit_s']:.3f}s  "
              f"audit/step {r['audit_vs_step']:.2f}x  param stats/read {r['param_stats_vs_read']:.1f}x", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
