"""Check the width sweep's slope tolerance (``--sweep``, ±0.25) on the benchmark's architectures.

    python benchmarks/trainability/run_sweep.py --split calibrate|report|all

For every MLP, residual MLP and CNN configuration of the split, the same configuration is
built at four widths (MLPs: 32, 64, 128, 256 units; CNNs: 8, 16, 32, 64 channels; the same
seed), audited at init, and each layer's gain is fitted against the width exactly as
``initaudit --sweep`` fits it (:func:`initaudit.analysis.sweep.layer_trends`).

Whether a configuration's init depends on the width is known from its formula, not
measured: a weight drawn with a fixed std (``normal_0.01``, ``normal_0.1``, ``normal_1``,
``uniform_10``, ``trunc_normal_0.02``), or the planted ``constant_hidden`` fault (one hidden
weight set to 0.05 whatever its fan-in), gives a layer whose output grows as ``sqrt(fan_in)``
or faster, slope +1/2 or more, while every init scaled by ``1/sqrt(fan_in)`` (PyTorch's
default, He, Glorot, LeCun, orthogonal, and those times a gain) keeps it flat, slope 0. The sweep's verdict for a
configuration is "some hidden or output layer flagged" (the input layer's fan-in is the
data's, the same at every width). Printed: how many width-dependent configurations are
flagged, how many width-independent ones are (false alarms), and the median and extreme
slopes of each group's hidden layers. The last line reads
``sweep tolerance 0.25: flagged F/N width-dependent, false alarms A/M width-independent (split S)``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Dict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from configs import build  # noqa: E402
from run import LABELS, in_split  # noqa: E402
from tasks import task_for  # noqa: E402

from initaudit import audit  # noqa: E402
from initaudit.analysis.sweep import SLOPE_TOLERANCE, layer_trends  # noqa: E402

FIXED_STD = {"normal_0.01", "normal_0.1", "normal_1", "uniform_10", "trunc_normal_0.02"}
WIDTHS = {"mlp": ("width", (32, 64, 128, 256)), "resmlp": ("width", (32, 64, 128, 256)),
          "cnn": ("channels", (8, 16, 32, 64))}


def sweep_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The configuration's layer trends over its family's widths."""
    key, widths = WIDTHS[cfg["family"]]
    task = task_for(cfg)
    x, _ = task.batches(0)
    # with the backward, as --sweep audits: the dataflow (what each layer reads) comes from its graph
    reports = [audit(build({**cfg, key: w}, task), x, seed=0) for w in widths]
    trends = layer_trends(widths, [r.recording for r in reports], [r.analysis.output_layer for r in reports])
    return {
        "index": cfg["index"], "family": cfg["family"], "init": cfg["init"],
        "width_dependent": cfg["init"] in FIXED_STD or cfg.get("fault") == "constant_hidden",
        "flagged": any(t.flagged for t in trends if t.kind != "input"),
        "hidden_slopes": [t.slope for t in trends if t.kind == "hidden" and t.slope is not None],
        "output_slope": next((t.slope for t in trends if t.kind == "output"), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("calibrate", "report", "all"), default="calibrate")
    parser.add_argument("--json", help="write the per-configuration results to FILE")
    parser.add_argument("--labels", default=LABELS)
    args = parser.parse_args()
    with open(args.labels) as f:
        cfgs = [r["config"] for r in json.load(f)["labels"]
                if in_split(r["config"]["index"], args.split) and r["config"]["family"] in WIDTHS]
    started = time.time()
    rows = [sweep_config(cfg) for cfg in cfgs]
    print(f"{len(rows)} configurations swept over 4 widths in {time.time() - started:.0f} s "
          f"(torch {torch.__version__})")
    for dependent in (True, False):
        group = [r for r in rows if r["width_dependent"] == dependent]
        slopes = [s for r in group for s in r["hidden_slopes"]]
        outputs = [r["output_slope"] for r in group if r["output_slope"] is not None]
        what = "fixed std (width-dependent)" if dependent else "scaled by fan-in (width-independent)"
        if slopes:
            print(f"{what}: {sum(r['flagged'] for r in group)}/{len(group)} flagged; hidden-layer slopes "
                  f"median {statistics.median(slopes):+.2f}, range {min(slopes):+.2f} to {max(slopes):+.2f}; "
                  f"output slopes median {statistics.median(outputs):+.2f}")
        for r in group:
            if r["flagged"] != dependent:
                print(f"  {'missed' if dependent else 'false alarm'}: config {r['index']} {r['family']} "
                      f"{r['init']}: hidden slopes {[round(s, 2) for s in r['hidden_slopes']]}, "
                      f"output {r['output_slope'] if r['output_slope'] is None else round(r['output_slope'], 2)}")
    print("tolerance   flagged width-dependent   false alarms width-independent")
    for tol in (0.1, 0.15, 0.25, 0.35, 0.45):
        def flags(r: Dict[str, Any]) -> bool:
            out = r["output_slope"]
            return any(abs(s) > tol for s in r["hidden_slopes"]) or (out is not None and out > tol)
        print(f"{tol:>9g}   {sum(flags(r) for r in rows if r['width_dependent']):>12}/"
              f"{sum(r['width_dependent'] for r in rows):<12} {sum(flags(r) for r in rows if not r['width_dependent']):>12}/"
              f"{sum(not r['width_dependent'] for r in rows)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"split": args.split, "rows": rows}, f, indent=1)
    dep = [r for r in rows if r["width_dependent"]]
    ind = [r for r in rows if not r["width_dependent"]]
    print(f"sweep tolerance {SLOPE_TOLERANCE:g}: flagged {sum(r['flagged'] for r in dep)}/{len(dep)} "
          f"width-dependent, false alarms {sum(r['flagged'] for r in ind)}/{len(ind)} width-independent "
          f"(split {args.split})")


if __name__ == "__main__":
    main()
