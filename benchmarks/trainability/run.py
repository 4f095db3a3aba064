"""Score initaudit's verdicts against the stored training labels.

    python benchmarks/trainability/run.py [--split calibrate|report|all] [--json FILE]

Every labelled configuration is built again and audited with the API, on its task's first
batch with its task's loss. "Fails" is the positive class. For the split it prints:

- the AUC of a score built from the findings (2 per error, 1 per warning; infos count 0);
- precision and recall of "has a warning or an error" as a prediction of "fails";
- the AUC of a naive two-number proxy computed from the same audit, ``|log10|`` of the
  across-batch signal ratio (last layer call's per-feature std over the first's) plus
  ``|log10|`` of the gradient ratio (first layer weight's gradient RMS over the last's);
- per rule, how often it fires on failing and on training configurations;
- the same figures per family.

``--attribute`` trains the misses and the false alarms again (other init draws of their recipe,
and each miss at its architecture's textbook init) and says how many sit within the labels'
draw-to-draw noise or fail for their architecture, not their init.

The split is fixed by index: alternate blocks of six (one configuration of each family)
calibrate and report. Thresholds are tuned
on ``calibrate`` only; the README publishes ``report``. The last line reads
``trainability: AUC A, precision P, recall R, proxy AUC B, N configs (split S)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from configs import FAMILIES, build  # noqa: E402
from tasks import task_for  # noqa: E402

from initaudit import audit  # noqa: E402

LABELS = os.path.join(HERE, "labels.json")
SEVERITY_SCORE = {"error": 2.0, "warning": 1.0, "info": 0.0}


def in_split(index: int, split: str) -> bool:
    """Blocks of six indices alternate: 0-5 calibrate, 6-11 report, and so on. Below
    ``configs.STRESS_FROM`` a block holds one configuration of each family (the family is the
    index modulo 6, so a split by parity would split the families); above it the four
    stress families cycle through both halves alike, and from ``configs.EXTENDED_FROM`` a
    block holds one of each of its six kinds again."""
    return split == "all" or (index // len(FAMILIES) % 2 == 0) == (split == "calibrate")


def auc(scores: Sequence[float], positive: Sequence[bool]) -> Optional[float]:
    """The probability that a random positive scores above a random negative (ties: half):
    the Mann-Whitney U statistic over the product of the class sizes."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def proxy(report: Any) -> float:
    """``|log10(signal_last / signal_first)| + |log10(grad_first / grad_last)|`` over the
    layer calls of the audit (0 for a term it cannot form)."""
    rec = report.recording
    signals = []
    for index, name in enumerate(rec.call_order):
        module = rec.module(name)
        out = rec.call_outputs[index]
        if module is not None and module.kind == "layer" and module.leaf and out is not None:
            signals.append(out.feature_std)
    grads = [t.grad.norm / math.sqrt(t.numel) for t in rec.parameters
             if t.attr == "weight" and t.ndim >= 2 and t.grad is not None and t.numel]
    total = 0.0
    for first, last in ((signals[0], signals[-1]) if len(signals) >= 2 else (None, None),
                        (grads[0], grads[-1]) if len(grads) >= 2 else (None, None)):
        if first is None or last is None or not (math.isfinite(first) and math.isfinite(last)):
            continue
        if first <= 0 or last <= 0:
            total += 12.0  # a signal or gradient that is exactly gone: as far as float64 goes
        else:
            total += abs(math.log10(last / first))
    return total


def audit_config(row: Dict[str, Any]) -> Tuple[List[Tuple[str, str]], float, Optional[str]]:
    """``(findings as (code, severity), proxy, error)`` of one labelled configuration."""
    cfg = row["config"]
    task = task_for(cfg)
    model = build(cfg, task)
    x, y = task.batches(0)
    try:
        report = audit(model, x, loss=lambda out, _x: task.loss(out, y), seed=0, classes=task.classes or task.vocab or None)
    except Exception as exc:  # a configuration the audit cannot run is reported, not fatal
        return [], 0.0, f"{type(exc).__name__}: {exc}"
    return [(f.code, f.severity) for f in report.findings], proxy(report), None


def score(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    fails = [r["label"] == "fails" for r in rows]
    scores = [sum(SEVERITY_SCORE[s] for _, s in r["findings"]) for r in rows]
    flagged = [any(s in ("error", "warning") for _, s in r["findings"]) for r in rows]
    true_pos = sum(f and g for f, g in zip(flagged, fails))
    precision = true_pos / sum(flagged) if any(flagged) else None
    recall = true_pos / sum(fails) if any(fails) else None
    per_rule: Dict[str, Dict[str, int]] = {}
    for r, fail in zip(rows, fails):
        for code in sorted({c for c, s in r["findings"] if s in ("error", "warning")}):
            per_rule.setdefault(code, Counter())["fails" if fail else "trains"] += 1
    return {
        "configs": len(rows), "fails": sum(fails), "trains": len(rows) - sum(fails),
        "auc": auc(scores, fails), "precision": precision, "recall": recall,
        "proxy_auc": auc([r["proxy"] for r in rows], fails),
        "per_rule": {code: dict(c) for code, c in sorted(per_rule.items())},
    }


def _attribution(row: Dict[str, Any]) -> Dict[str, Any]:
    """Two other init draws of a configuration's recipe, trained as labelled, and for a failing one
    whether its architecture trains at its textbook init (``run_fix.textbook``)."""
    from run_fix import own_draws, trains_at_textbook_init
    from train import THRESHOLD

    torch.set_num_threads(1)
    draws = own_draws(row["config"])
    result = {"draws": draws, "draws_fail": sum(d is None or d >= THRESHOLD for d in draws)}
    if row["label"] == "fails":
        result["textbook_trains"] = trains_at_textbook_init(row["config"])
    return result


def attribute(rows: List[Dict[str, Any]], jobs: int) -> None:
    """Where do the misses and false alarms come from? A label is one training of one init draw,
    so a configuration near the 0.5 line can change sides with the draw; and a model that fails at
    any init fails for its architecture (or the budget), which no init check can see. Prints both
    for each miss and each false alarm, and a count of each."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    def warned(r: Dict[str, Any]) -> bool:
        return any(s in ("error", "warning") for _, s in r["findings"])

    misses = [r for r in rows if r["label"] == "fails" and not warned(r)]
    alarms = [r for r in rows if r["label"] == "trains" and warned(r)]
    with ProcessPoolExecutor(max_workers=max(jobs, 1), mp_context=get_context("spawn")) as pool:
        found = list(pool.map(_attribution, misses + alarms, chunksize=1))
    for title, group, results in (("missed failures", misses, found[:len(misses)]),
                                  ("false alarms", alarms, found[len(misses):])):
        print(f"{title} (index family: labelled best loss / baseline; two other draws of the recipe"
              + ("; the textbook init" if title == "missed failures" else "") + "):")
        for r, a in zip(group, results):
            draws = ", ".join("inf" if d is None else f"{d:.2f}" for d in a["draws"])
            ref = {True: "trains", False: "fails", None: "is this one"}.get(a.get("textbook_trains"), "")
            print(f"  {r['config']['index']} {r['config']['family']}: {r['best_ratio'] or math.inf:.2f}; {draws}"
                  + (f"; textbook init {ref}" if title == "missed failures" else ""))
    if misses:
        bound = sum(a.get("textbook_trains") is False for a in found[:len(misses)])
        drawn = sum(a["draws_fail"] < 2 for a in found[:len(misses)])
        print(f"of the {len(misses)} missed failures, {bound} fail at the textbook init of their architecture too; "
              f"{drawn} train on at least one other draw of their own recipe")
    if alarms:
        drawn = sum(a["draws_fail"] > 0 for a in found[len(misses):])
        print(f"of the {len(alarms)} false alarms, {drawn} fail on at least one other draw of their own recipe")


def _num(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("calibrate", "report", "all"), default="all")
    parser.add_argument("--json", help="write the per-configuration results and the scores to FILE")
    parser.add_argument("--labels", default=LABELS)
    parser.add_argument("--attribute", action="store_true",
                        help="train the misses and false alarms again: other init draws of their recipe, and each "
                        "miss at its architecture's textbook init (about 15 s each on one core)")
    parser.add_argument("--jobs", type=int, default=1, help="processes for --attribute (one thread each)")
    args = parser.parse_args()
    with open(args.labels) as f:
        document = json.load(f)
    rows = [r for r in document["labels"] if in_split(r["config"]["index"], args.split)]
    started = time.time()
    errors = []
    for r in rows:
        r["findings"], r["proxy"], error = audit_config(r)
        if error:
            errors.append((r["config"]["index"], error))
    overall = score(rows)
    families = {fam: score([r for r in rows if r["config"]["family"] == fam])
                for fam in sorted({r["config"]["family"] for r in rows})}
    print(f"labels: torch {document['torch']}; audited with torch {torch.__version__} in {time.time() - started:.0f} s")
    for index, error in errors:
        print(f"  config {index}: the audit failed: {error}")
    print(f"{'family':<12} {'configs':>7} {'fail':>5} {'AUC':>6} {'prec':>6} {'recall':>6} {'proxy':>6}")
    for name, s in [*families.items(), ("all", overall)]:
        print(f"{name:<12} {s['configs']:>7} {s['fails']:>5} {_num(s['auc']):>6} {_num(s['precision']):>6} "
              f"{_num(s['recall']):>6} {_num(s['proxy_auc']):>6}")
    trains = max(overall["trains"], 1)
    fails = max(overall["fails"], 1)
    print("rule   on failing   on training   (share of configurations it fires on)")
    for code, c in sorted(overall["per_rule"].items(), key=lambda kv: -kv[1].get("trains", 0)):
        print(f"{code}  {c.get('fails', 0) / fails:>10.0%}   {c.get('trains', 0) / trains:>10.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"split": args.split, "overall": overall, "families": families, "rows": rows}, f, indent=1)
    if args.attribute:
        attribute(rows, args.jobs)
    print(f"trainability: AUC {_num(overall['auc'])}, precision {_num(overall['precision'])}, "
          f"recall {_num(overall['recall'])}, proxy AUC {_num(overall['proxy_auc'])}, "
          f"{overall['configs']} configs (split {args.split})")


if __name__ == "__main__":
    main()
