"""Score the first-step rules (IA701, IA702) against the benchmark's per-run training losses.

    python benchmarks/trainability/run_steps.py --split calibrate   # choose the thresholds
    python benchmarks/trainability/run_steps.py --split report      # measure the shipped ones

Every labelled configuration was trained six times from the same weights (``train.RUNS``:
SGD with momentum 0.9 at three learning rates, Adam at three), and ``labels.json`` keeps each
run's final loss. A *run* fails when its loss is not below ``train.THRESHOLD`` of the task's
baseline (or not finite). Here each configuration is audited once per run, with that run's
optimizer (``--optimizer``-style spec, one step, the task's loss on its first batch: the batch
the run's first step was taken on), and two first-step facts are compared with the run's
fate:

- whether the loss after the step is finite (IA701's error when not);
- the loss after the step over the loss before (IA701 warns above ``loss-growth``);
- the largest relative update ``||dW|| / ||W||`` of a weight (IA702, info above
  ``rewrite-ratio``).

For ``--split calibrate`` it prints, for a range of thresholds, the precision and recall of
"above the threshold" as a prediction of "this run fails" among the runs whose loss stayed
finite (those that did not are IA701's errors already), and the AUC of each fact as a
score; a warning threshold is the smallest of 2, 3, 5, 10, 20 whose calibrate precision
is at least 0.9 (the benchmark's precision target for a warning), and a fact that reaches
0.9 at none of them stays info. For ``--split
report`` it scores the thresholds the rules ship with (their registered defaults), which
were never tuned on it. The last line reads
``first steps: IA701 error (non-finite): precision P (n); IA701 warning (loss > Tx): ...``.
Recall is over every failing run, most of which fail by a learning rate too small for 200
steps, which these rules do not claim to see: precision is their measure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from configs import build  # noqa: E402
from run import LABELS, _num, auc, in_split  # noqa: E402
from tasks import task_for  # noqa: E402
from train import RUNS, THRESHOLD  # noqa: E402

from initaudit import audit  # noqa: E402
from initaudit.rules.registry import load_rules  # noqa: E402


def optimizer_spec(name: str, lr: float) -> str:
    """The spec of one of ``train.RUNS`` as ``--optimizer`` reads it (the same optimizer the
    run was trained with: SGD with momentum 0.9, or Adam)."""
    return f"SGD(lr={lr!r}, momentum=0.9)" if name == "sgd" else f"Adam(lr={lr!r})"


def first_step_facts(row: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One record per run of ``row``: the run's fate and the audit's first-step facts."""
    cfg = row["config"]
    task = task_for(cfg)
    out = []
    for (name, lr), final in zip(RUNS, row["losses"]):
        model = build(cfg, task)
        x, y = task.batches(0)
        fails = final is None or not final < THRESHOLD * task.baseline
        try:
            report = audit(model, x, loss=lambda o, _x: task.loss(o, y), seed=0,
                           optimizer=optimizer_spec(name, lr), steps=1)
        except Exception as exc:  # reported, not fatal
            out.append({"run": f"{name} {lr:g}", "fails": fails, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rec = report.recording
        ratios = [t.update_ratio for t in rec.parameters if t.update_ratio is not None and t.attr == "weight"
                  and len(t.shape) >= 2 and t.zero_fraction != 1.0]
        before, after = rec.step_losses[0], rec.step_losses[-1]
        out.append({
            "run": f"{name} {lr:g}", "fails": fails,
            "max_update": max(ratios) if ratios else None,
            "loss_before": before, "loss_after": after,
            "findings": sorted({(f.code, f.severity) for f in report.findings if f.code in ("IA701", "IA702")}),
        })
    return out


def rise(r: Dict[str, Any]) -> float:
    """The loss after the step relative to before, minus one (inf when it became non-finite)."""
    before, after = r["loss_before"], r["loss_after"]
    if not math.isfinite(after):
        return math.inf
    return after / before - 1 if before > 0 else after - before


def prec_rec(flagged: List[bool], fails: List[bool]) -> Tuple[Optional[float], Optional[float], int]:
    tp = sum(f and g for f, g in zip(flagged, fails))
    n = sum(flagged)
    return (tp / n if n else None), (tp / sum(fails) if any(fails) else None), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("calibrate", "report", "all"), default="calibrate")
    parser.add_argument("--json", help="write the per-run facts to FILE")
    parser.add_argument("--labels", default=LABELS)
    parser.add_argument("--limit", type=int, help="only the first N configurations of the split (a quick look)")
    args = parser.parse_args()
    with open(args.labels) as f:
        rows = [r for r in json.load(f)["labels"] if in_split(r["config"]["index"], args.split)]
    rows = rows[:args.limit] if args.limit else rows
    started = time.time()
    runs = []
    for row in rows:
        for r in first_step_facts(row):
            r["index"], r["family"] = row["config"]["index"], row["config"]["family"]
            runs.append(r)
    errors = [r for r in runs if "error" in r]
    runs = [r for r in runs if "error" not in r and math.isfinite(r["loss_before"])]
    fails = [r["fails"] for r in runs]
    print(f"{len(runs)} runs of {len(rows)} configurations ({sum(fails)} fail), audited with one step each "
          f"in {time.time() - started:.0f} s; {len(errors)} audits failed")
    finite = [r for r in runs if math.isfinite(r["loss_after"])]
    finite_fails = [r["fails"] for r in finite]
    updates = [r["max_update"] if r["max_update"] is not None else 0.0 for r in finite]
    growth = [r["loss_after"] / r["loss_before"] if r["loss_before"] > 0 else math.inf for r in finite]
    print(f"runs whose loss stayed finite: {len(finite)} ({sum(finite_fails)} fail); AUC as a score of "
          f"'this run fails': largest update ratio {_num(auc(updates, finite_fails))}, loss after / before "
          f"{_num(auc(growth, finite_fails))}")
    if args.split != "report":
        print("threshold   update>T: prec  recall  runs   loss x>T: prec  recall  runs")
        for t in (1.0, 2.0, 3.0, 5.0, 10.0, 20.0):
            p1, r1, n1 = prec_rec([u > t for u in updates], finite_fails)
            p2, r2, n2 = prec_rec([g > t for g in growth], finite_fails)
            print(f"{t:>9g}   {_num(p1):>10} {_num(r1):>7} {n1:>5}   {_num(p2):>10} {_num(r2):>7} {n2:>5}")
        p0, r0, n0 = prec_rec([g > 1 for g in growth], finite_fails)
        print(f"any rise: precision {_num(p0)}, recall {_num(r0)}, {n0} runs")
    # the shipped rules' own findings, with their registered defaults
    def fired(code: str, severity: str) -> List[bool]:
        return [[code, severity] in [list(f) for f in r["findings"]] for r in runs]

    p_nf, r_nf, n_nf = prec_rec(fired("IA701", "error"), fails)
    severe = float(load_rules()["IA701"].options["loss-growth"])
    p_rise, r_rise, n_rise = prec_rec(fired("IA701", "warning"), fails)
    p_up, r_up, n_up = prec_rec(fired("IA702", "info"), fails)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"split": args.split, "runs": runs, "errors": errors}, f, indent=1)
    print(f"first steps: IA701 error (non-finite): precision {_num(p_nf)} ({n_nf} runs); IA701 warning (loss "
          f"> {severe:g}x): precision {_num(p_rise)} ({n_rise}); IA702 info: precision {_num(p_up)} ({n_up}); "
          f"{len(runs)} runs, {sum(fails)} fail (split {args.split}, torch {torch.__version__})")

if __name__ == "__main__":
    main()
