"""How sharp are the labels? Train a second draw of the configurations near the line.

    python benchmarks/trainability/label_stability.py --split calibrate [--band 0.35 0.70] [--jobs 2]

A label is one training (six optimizer settings, :mod:`train`) of one init draw: the model
``configs.build`` makes under the configuration's index. For every configuration of the
split whose stored best loss ends within ``--band`` of its baseline (around the 0.5 line that
separates "trains" from "fails"), this builds the same recipe again under another seed
(``configs.build(..., draw=1)``: ``torch.manual_seed(1_000_003 + index)``, so the weights are a
second draw; the architecture, the task and the training are the configuration's), trains it
exactly as labelled, and prints how many keep their label. Nothing is written to
``labels.json``: this measures the labels, it does not change them. The last line reads
``label stability: K/N keep their label within the band (split S)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import configs  # noqa: E402
from run import LABELS, in_split  # noqa: E402
from tasks import task_for  # noqa: E402
from train import THRESHOLD, train_all  # noqa: E402

def second_draw(row: Dict[str, Any]) -> Tuple[int, str, float, str]:
    """``(index, stored label, best ratio of the second draw, its label)``."""
    cfg = row["config"]
    task = task_for(cfg)
    model = configs.build(cfg, task, draw=1)
    losses = train_all(model, task, seed=cfg["index"])
    best = min(losses)
    ratio = best / task.baseline if math.isfinite(best) else math.inf
    return cfg["index"], row["label"], ratio, "trains" if best < THRESHOLD * task.baseline else "fails"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("calibrate", "report", "all"), default="calibrate")
    parser.add_argument("--band", type=float, nargs=2, default=(0.35, 0.70))
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    low, high = args.band
    with open(LABELS) as f:
        rows = [r for r in json.load(f)["labels"] if in_split(r["config"]["index"], args.split)
                and r["best_ratio"] is not None and low <= r["best_ratio"] <= high]
    started = time.time()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(second_draw, rows))
    kept = 0
    for (index, label, ratio, again), row in zip(results, rows):
        kept += label == again
        print(f"config {index:>3} {row['config']['family']:<11} {label:<6} {row['best_ratio']:.2f} -> "
              f"{again:<6} {ratio:.2f}")
    print(f"{len(rows)} configurations in {time.time() - started:.0f} s (torch {torch.__version__})")
    print(f"label stability: {kept}/{len(rows)} keep their label within the band {low:g}-{high:g} "
          f"(split {args.split})")


if __name__ == "__main__":
    main()
