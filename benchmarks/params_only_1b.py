"""A parameters-only audit of a 1-billion-parameter transformer, in float32 on the CPU.

Builds a ~1.01B-parameter decoder-shaped transformer (d=2048, 16 pre-norm layers with a
4x feed-forward, a 50257-token embedding and an untied head: 4 GiB of float32) and audits
its parameters without running it, first through the CLI (a child process,
``initaudit benchmarks/params_only_1b.py:build --params-only``) and then through the API
(``audit(model, params_only=True)``, in this process). Prints, for each, the wall time of
building and of the audit, the peak RSS of the process and the number of findings.

    python benchmarks/params_only_1b.py [--layers 16] [--d 2048] [--skip-cli]

The layers are built straight into an ``nn.ModuleList``: ``nn.TransformerEncoder`` would
deep-copy one layer into each slot, holding an extra layer (and building twice) for nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict

import torch
from torch import nn

GIB = 1 << 30


class Transformer1B(nn.Module):
    """Token embedding, ``layers`` pre-norm encoder layers, a final norm and an untied head."""

    def __init__(self, layers: int = 16, d: int = 2048, heads: int = 16, vocab: int = 50257):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True,
                                       activation="gelu")
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def build(layers: int = 16, d: int = 2048) -> nn.Module:
    """The factory the CLI calls (``--factory-arg layers=...`` to change the size)."""
    return Transformer1B(layers=layers, d=d)


def peak_rss_gib() -> float:
    """This process's peak resident set size so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def run_cli(layers: int, d: int) -> Dict[str, Any]:
    """The CLI on this file's factory, in a child process started while this one is small.

    The child's peak RSS comes from ``wait4`` (Linux starts an exec'd process's ``ru_maxrss``
    at its parent's high-water mark, so the parent must not hold the model yet).
    """
    with tempfile.TemporaryDirectory() as tmp:
        report_path = os.path.join(tmp, "report.json")
        command = [sys.executable, "-m", "initaudit", f"{os.path.abspath(__file__)}:build", "--params-only", "-q",
                   "--factory-arg", f"layers={layers}", "--factory-arg", f"d={d}",
                   "--format", "json", "--output", report_path]
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate()
        wall = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode not in (0, 1):
            return {"error": f"exit {proc.returncode}: {err.strip()[-300:]}"}
        with open(report_path) as handle:
            report = json.load(handle)
    return {
        "exit_code": proc.returncode,
        "wall_s": wall,
        "audit_s": report["summary"]["seconds"],
        "peak_rss_gib": usage.ru_maxrss * 1024 / GIB,
        "findings": len(report["findings"]),
        "codes": sorted({f["code"] for f in report["findings"]}),
    }


def run_api(layers: int, d: int) -> Dict[str, Any]:
    """Build the model here (seeded as the CLI seeds it) and audit its parameters."""
    from initaudit import audit

    torch.manual_seed(0)
    start = time.perf_counter()
    model = build(layers, d)
    build_s = time.perf_counter() - start
    parameters = sum(p.numel() for p in model.parameters())
    rss_after_build = peak_rss_gib()
    start = time.perf_counter()
    report = audit(model, params_only=True)
    audit_s = time.perf_counter() - start
    return {
        "parameters": parameters,
        "parameter_gib": parameters * 4 / GIB,
        "build_s": build_s,
        "audit_s": audit_s,
        "peak_rss_after_build_gib": rss_after_build,
        "peak_rss_gib": peak_rss_gib(),
        "findings": len(report.findings),
        "codes": sorted({f.code for f in report.findings}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--skip-cli", action="store_true", help="only the API run")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    results: Dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if not args.skip_cli:
        results["cli"] = cli = run_cli(args.layers, args.d)
        if "error" in cli:
            print(f"CLI: {cli['error']}", flush=True)
        else:
            print(f"CLI: {cli['wall_s']:.1f} s in all (build, audit, report), audit {cli['audit_s']:.1f} s, "
                  f"peak RSS {cli['peak_rss_gib']:.2f} GiB, {cli['findings']} findings {cli['codes']}, "
                  f"exit {cli['exit_code']}", flush=True)
    results["api"] = api = run_api(args.layers, args.d)
    print(f"API: {api['parameters'] / 1e9:.3f}B parameters ({api['parameter_gib']:.2f} GiB float32); "
          f"build {api['build_s']:.1f} s, audit(params_only=True) {api['audit_s']:.1f} s; peak RSS "
          f"{api['peak_rss_after_build_gib']:.2f} GiB after building, {api['peak_rss_gib']:.2f} GiB after the audit; "
          f"{api['findings']} findings {api['codes']}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
