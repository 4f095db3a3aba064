"""Does ``--fix`` make failing models train, and leave the ones that train alone?

    python benchmarks/trainability/run_fix.py [--split calibrate|report|all] [--jobs N] [--json FILE]

For every labelled configuration of the split, the model is built and audited as
``run.py`` audits it (its task's first batch and loss, seed 0), then repaired with
``initaudit.fix`` (the default: findings at or above warning) and compared bit for bit
with what was built.

- A configuration labelled **fails** whose model the fix changed is trained again exactly as
  it was labelled (``train.train_all``: the six optimizer settings, the same seed, one
  thread); it is **rescued** when it now trains (some run below half the baseline).
- A configuration labelled **trains** whose model the fix changed is trained the same way;
  it is **harmed** when its best loss is more than 10% above the labelled best.
  Where it is, two other init draws of its own recipe are trained too: a fix re-draws what it
  re-initializes, so the summary says how many harms exceed the spread of the recipe's draws.
  One whose best loss falls below the labelled best divided by :data:`IMPROVED` is counted as
  **improved**: it trains by the label's line, but what its warning named cost it that much.
- The known-good models of ``tests/corpus.py`` (real architectures at their own init) are
  audited and repaired; **untouched** counts those that come out bit-identical.

- A failing configuration the fix changed and did not rescue is compared with the same
  architecture at its **textbook init** (:func:`textbook`: He, Glorot or LeCun for its
  nonlinearity, no planted fault), trained the same way: where that fails too, no init can
  rescue it within the labelling budget, and the summary says how many.

Configurations are spread over ``--jobs`` processes (one thread each, as labelled). The last
line reads ``fix: rescued R/F failing, harmed H/T training, untouched U/K known-good``, where
F counts the failing configurations the fix changed and T every configuration that trains.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

HARM = 1.10  # harmed: the best loss after the fix above this times the labelled best
# improved: a configuration that trains, warned (a false alarm by its label), whose best loss after the
# fix is below the labelled best divided by this: the warning named something that cost it
IMPROVED = 1.5
LABELS = os.path.join(HERE, "labels.json")


def _changed(model: Any, before: Dict[str, Any]) -> List[str]:
    import torch

    return sorted(k for k, v in model.state_dict().items() if not torch.equal(v, before[k]))


def textbook(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The same architecture with no planted fault and the init its nonlinearity asks for in
    the literature: He (kaiming_normal) for the ReLU family, Glorot (xavier_normal) for tanh
    and sigmoid, LeCun for SELU; GPT-2's scheme for the transformers, 1/sqrt(2L)-scaled
    branches for the residual MLPs, a library's own init for Hugging Face and PEFT. Where even
    that does not train, the architecture (or the training budget), not the init, is what fails."""
    ref = dict(cfg)
    family = cfg["family"]
    if family in ("mlp", "cnn"):
        act = cfg["activation"]
        ref["init"] = "xavier_normal" if act in ("tanh", "sigmoid") else "lecun_normal" if act == "selu" else "kaiming_normal"
    elif family == "resmlp":
        ref["init"] = "scaled_branch"
    elif family == "transformer":
        ref["init"] = "gpt2"
    elif family == "hf":
        ref["init"] = "own"
    elif family == "lora":
        ref["init"] = "peft"
    elif family == "rnn":
        ref.update(init="default", forget_bias="one")
    if "fault" in ref:
        ref["fault"] = "none"
    return ref


def trains_at_textbook_init(cfg: Dict[str, Any]) -> Optional[bool]:
    """Whether :func:`textbook`'s configuration trains, as the labels are made (``None``: it is
    the configuration itself)."""
    from configs import build
    from tasks import task_for
    from train import THRESHOLD, train_all

    ref = textbook(cfg)
    if ref == cfg:
        return None
    task = task_for(ref)
    losses = train_all(build(ref, task), task, seed=cfg["index"])
    return min(losses) < THRESHOLD * task.baseline


def own_draws(cfg: Dict[str, Any], draws: int = 2) -> List[Optional[float]]:
    """The best loss / baseline of ``draws`` other init draws of the configuration's own recipe
    (``configs.build(..., draw=k)``), each trained as the labels are made (``None``: diverged).
    A fix re-draws what it re-initializes, so a harm smaller than the spread of these is the
    draw's, not the init's."""
    from configs import build
    from tasks import task_for
    from train import train_all

    task = task_for(cfg)
    ratios: List[Optional[float]] = []
    for draw in range(1, draws + 1):
        best = min(train_all(build(cfg, task, draw=draw), task, seed=cfg["index"]))
        ratios.append(best / task.baseline if math.isfinite(best) else None)
    return ratios


def fix_and_train(row: Dict[str, Any]) -> Dict[str, Any]:
    """One configuration: audit, fix, and (where the fix changed it) train it as labelled."""
    import torch

    import initaudit
    from configs import build
    from tasks import task_for
    from train import THRESHOLD, train_all

    torch.set_num_threads(1)
    cfg = row["config"]
    task = task_for(cfg)
    model = build(cfg, task)
    x, y = task.batches(0)

    def loss(out: Any, _x: Any) -> Any:
        return task.loss(out, y)

    result: Dict[str, Any] = {"index": cfg["index"], "family": cfg["family"], "label": row["label"]}
    try:
        report = initaudit.audit(model, x, loss=loss, seed=0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        after = initaudit.fix(model, report, x, loss=loss, seed=0)
    except Exception as exc:  # reported, not fatal: one configuration the audit cannot run
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    result["warned"] = sorted({f.code for f in report.findings if f.severity != "info"})
    result["left"] = sorted({f.code for f in after.findings if f.severity != "info"})
    result["unfixed"] = sorted({f.code for f, _ in after.fix.unfixed})
    result["changed"] = _changed(model, before)
    if not result["changed"]:
        return result
    losses = train_all(model, task, seed=cfg["index"])
    best = min(losses)
    labelled = [v for v in row["losses"] if v is not None]
    labelled_best = min(labelled) if labelled else math.inf
    result["losses"] = [v if math.isfinite(v) else None for v in losses]
    result["best_ratio"] = best / task.baseline if math.isfinite(best) else None
    result["labelled_best_ratio"] = row["best_ratio"]
    result["trains_after"] = best < THRESHOLD * task.baseline
    result["harmed"] = row["label"] == "trains" and not best <= HARM * labelled_best
    if result["harmed"]:
        # one draw against another: how far do other draws of the recipe as built land?
        result["own_draws"] = own_draws(cfg)
        spread = max([row["best_ratio"], *(r for r in result["own_draws"] if r is not None)])
        result["beyond_draws"] = result["best_ratio"] is None or result["best_ratio"] > HARM * spread
    if row["label"] == "fails" and not result["trains_after"]:
        result["textbook_trains"] = trains_at_textbook_init(cfg)
    return result


def known_good() -> Dict[str, Any]:
    """``{"models": K, "untouched": U, "changed": {name: first changed names}, "harmed": {name:
    why}}`` over the corpus of real models in ``tests/corpus.py`` (needs the test extras:
    transformers, peft); K counts the known-good ones, not those measured to be harmed at their
    own init (``HARMED_AT_OWN_INIT``), which the fix is meant to change."""
    import torch

    from initaudit import audit
    from initaudit.fixing.fixer import repair

    sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))
    from corpus import CORPUS, HARMED_AT_OWN_INIT

    changed: Dict[str, List[str]] = {}
    fixed: Dict[str, List[str]] = {}
    for name in sorted(CORPUS):
        model, example = CORPUS[name]()
        report = audit(model, example)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        repair(model, report, example)
        names = sorted(k for k, v in model.state_dict().items() if not torch.equal(v, before[k]))
        if name in HARMED_AT_OWN_INIT:
            fixed[name] = names[:5]
        elif names:
            changed[name] = names[:5]
    good = len(CORPUS) - len(HARMED_AT_OWN_INIT)
    return {"models": good, "untouched": good - len(changed), "changed": changed,
            "harmed": {name: HARMED_AT_OWN_INIT[name] for name in fixed}, "fixed": fixed}


def main() -> None:
    from run import in_split

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("calibrate", "report", "all"), default="all")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (one thread each)")
    parser.add_argument("--json", help="write the per-configuration results to FILE")
    parser.add_argument("--no-corpus", action="store_true", help="skip the known-good corpus")
    args = parser.parse_args()
    with open(LABELS) as f:
        rows = [r for r in json.load(f)["labels"] if in_split(r["config"]["index"], args.split)]
    started = time.time()
    with ProcessPoolExecutor(max_workers=max(args.jobs, 1), mp_context=get_context("spawn")) as pool:
        results = list(pool.map(fix_and_train, rows, chunksize=1))
    seconds = time.time() - started
    corpus: Optional[Dict[str, Any]] = None if args.no_corpus else known_good()

    failing = [r for r in results if r["label"] == "fails"]
    training = [r for r in results if r["label"] == "trains"]
    fixable = [r for r in failing if r.get("changed")]
    rescued = [r for r in fixable if r["trains_after"]]
    touched = [r for r in training if r.get("changed")]
    harmed = [r for r in touched if r["harmed"]]
    print(f"fixed and trained {len(fixable) + len(touched)} of {len(results)} configurations in {seconds:.0f} s "
          f"(split {args.split})")
    print(f"{'family':<12} {'fail':>5} {'warned':>6} {'fixed':>6} {'rescued':>7} {'trains':>7} {'changed':>7} {'harmed':>6}")
    for family in sorted({r["family"] for r in results}):
        mine = [r for r in results if r["family"] == family]
        fail = [r for r in mine if r["label"] == "fails"]
        print(f"{family:<12} {len(fail):>5} {sum(bool(r.get('warned')) for r in fail):>6} "
              f"{sum(bool(r.get('changed')) for r in fail):>6} "
              f"{sum(bool(r.get('changed')) and r['trains_after'] for r in fail):>7} "
              f"{len(mine) - len(fail):>7} {sum(bool(r.get('changed')) for r in mine if r['label'] == 'trains'):>7} "
              f"{sum(bool(r.get('harmed')) for r in mine):>6}")
    for r in results:
        if "error" in r:
            print(f"  config {r['index']}: {r['error']}")
    not_rescued = [r for r in fixable if not r["trains_after"]]
    if not_rescued:
        print("fixed but still failing (index family: warned -> left after the fix; best loss / baseline; "
              "whether the same architecture trains at its textbook init):")
        for r in not_rescued:
            ratio = "inf" if r["best_ratio"] is None else f"{r['best_ratio']:.2f}"
            ref = {True: "trains", False: "fails", None: "is this one"}[r.get("textbook_trains")]
            print(f"  {r['index']} {r['family']}: {','.join(r['warned'])} -> {','.join(r['left']) or 'clean'}; "
                  f"{ratio}; textbook init {ref}")
        bound = [r for r in not_rescued if r.get("textbook_trains") is False]
        print(f"of the {len(not_rescued)} not rescued, {len(bound)} do not train at the textbook init of their "
              f"architecture either (no init fix can rescue them here): rescued {len(rescued)}/"
              f"{len(fixable) - len(bound)} of those an init can make train")
    warned_unfixed = [r for r in failing if r.get("warned") and not r.get("changed")]
    if warned_unfixed:
        print("failing, warned, and left as they were (no automatic fix): "
              + ", ".join(f"{r['index']} ({','.join(r['unfixed'] or r['warned'])})" for r in warned_unfixed))
    for r in harmed:
        draws = ", ".join("inf" if v is None else f"{v:.3f}" for v in r["own_draws"])
        print(f"  harmed: {r['index']} {r['family']}: best {r['labelled_best_ratio']:.3f} -> "
              f"{'inf' if r['best_ratio'] is None else format(r['best_ratio'], '.3f')} of the baseline; "
              f"other draws of its own recipe: {draws}")
    if harmed:
        beyond = [r for r in harmed if r["beyond_draws"]]
        print(f"of the {len(harmed)} harmed, {len(beyond)} end more than {HARM - 1:.0%} above every draw of their "
              "own recipe (the labelled one and two others); the rest are within the spread of the draws")
    if touched:
        improved = [r for r in touched if r["best_ratio"] is not None
                    and r["best_ratio"] * IMPROVED < r["labelled_best_ratio"]]
        ratios = sorted(r["labelled_best_ratio"] / r["best_ratio"] for r in touched if r["best_ratio"])
        print(f"of the {len(touched)} that train and that the fix changed (warned: false alarms by their label), "
              f"{len(improved)} train at least {IMPROVED:g}x better after it (best loss, labelled / fixed: "
              + ", ".join(f"{v:.2f}" for v in ratios) + ")")
    if corpus is not None:
        for name, names in corpus["changed"].items():
            print(f"  known-good {name}: the fix changed {', '.join(names)}")
        for name, why in corpus["harmed"].items():
            touched = corpus["fixed"][name]
            print(f"  not counted as known-good, {name}: {why} ({'changed ' + ', '.join(touched) if touched else 'NOT changed'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"split": args.split, "results": results, "corpus": corpus}, f, indent=1)
    untouched = f"untouched {corpus['untouched']}/{corpus['models']} known-good" if corpus else "known-good not run"
    print(f"fix: rescued {len(rescued)}/{len(fixable)} failing, harmed {len(harmed)}/{len(training)} training, "
          f"{untouched}")


if __name__ == "__main__":
    main()
