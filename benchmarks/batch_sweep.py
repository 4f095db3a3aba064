"""How the audit's cost next to a step changes with the batch: the 30-layer 1024-wide MLP.

    python benchmarks/batch_sweep.py [--batch 64 --batch 256 ...] [--repeat N] [--quick] [--json FILE]

An audit costs one step plus an overhead with two parts: one that depends only on the
parameters (their summaries, fingerprints and gradients: ``params-only`` below is the
audit without a forward, most of it) and one that grows with the activations (a forward
hook reduces every module's output). A step grows with the batch, so the ratio falls as the
batch grows. ``bench_audit.py`` states the issue's targets at the batch the CLI infers
(``inputs.DEFAULT_BATCH``, 64); this script shows where the rest of the curve lies.
Medians of ``--repeat`` runs after a warm-up, in one process, like ``bench_audit.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_audit import interleaved_medians, machine, median_seconds, mlp, params_only_audit, plain_step  # noqa: E402

from initaudit import audit  # noqa: E402
from initaudit.core.options import DEFAULT_BATCH  # noqa: E402


def measure(batch: int, width: int, repeat: int) -> Dict[str, Any]:
    """Step, audit and parameters-only audit of the MLP at ``batch``, each a median in seconds."""
    torch.manual_seed(0)
    model = mlp(30, width)
    x = torch.randn(batch, width)
    step_s, audit_s = interleaved_medians([lambda: plain_step(model, x), lambda: audit(model, x)], repeat)
    row: Dict[str, Any] = {
        "batch": batch,
        "step_s": step_s,
        "audit_s": audit_s,
        "params_only_audit_s": median_seconds(lambda: params_only_audit(model), repeat),
    }
    row["audit_vs_step"] = row["audit_s"] / row["step_s"]
    row["overhead_s"] = row["audit_s"] - row["step_s"]
    return row


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (repeatable; default 64 256 1024)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--quick", action="store_true", help="a 256-wide MLP, small batches, two repeats: a smoke run")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    width = 256 if args.quick else 1024
    batches = args.batch or ([8, 32] if args.quick else [DEFAULT_BATCH, 256, 1024])
    repeat = 2 if args.quick else args.repeat
    rows = [measure(batch, width, repeat) for batch in batches]
    print(f"30-layer {width}-wide ReLU MLP, medians of {repeat} runs")
    print(f"{'batch':>6} {'step s':>8} {'audit s':>8} {'audit/step':>10} {'overhead s':>10} {'params-only s':>13}")
    for row in rows:
        print(f"{row['batch']:>6} {row['step_s']:>8.3f} {row['audit_s']:>8.3f} {row['audit_vs_step']:>9.2f}x "
              f"{row['overhead_s']:>10.3f} {row['params_only_audit_s']:>13.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "width": width, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
