"""Label the benchmark's configurations by training them (see :mod:`train`).

    python benchmarks/trainability/label.py --count 400 --parts N --part K   # one slice
    python benchmarks/trainability/label.py --merge                          # slices -> labels.json

A slice labels the indices ``i`` with ``i % N == K`` and appends one JSON line per
configuration to ``parts/part-K-of-N.jsonl`` (not kept in the repository), skipping those
already there or already in ``labels.json``, so that an interrupted slice resumes and a
later run only adds what is missing; run the N slices in parallel, one per core.
``--merge`` gathers ``labels.json`` and every slice into ``labels.json`` (sorted by index,
with the torch version), which the scoring run reads: nobody has to train to score.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from configs import config  # noqa: E402
from train import RUNS, STEPS, TAIL, THRESHOLD, label  # noqa: E402

PARTS_DIR = os.path.join(HERE, "parts")
LABELS = os.path.join(HERE, "labels.json")


def part_path(part: int, parts: int) -> str:
    return os.path.join(PARTS_DIR, f"part-{part}-of-{parts}.jsonl")


def stored_labels() -> List[Dict[str, Any]]:
    if not os.path.exists(LABELS):
        return []
    with open(LABELS) as f:
        return json.load(f)["labels"]


def done_indices(path: str) -> set:
    done = {row["config"]["index"] for row in stored_labels()}
    if os.path.exists(path):
        with open(path) as f:
            done |= {json.loads(line)["config"]["index"] for line in f if line.strip()}
    return done


def label_slice(count: int, parts: int, part: int, limit_s: float, reverse: bool = False) -> None:
    os.makedirs(PARTS_DIR, exist_ok=True)
    path = part_path(part, parts) + (".reverse" if reverse else "")
    done = done_indices(path) | done_indices(part_path(part, parts))
    started = time.time()
    indices = list(range(part, count, parts))
    with open(path, "a") as f:
        for index in reversed(indices) if reverse else indices:
            if index in done:
                continue
            if time.time() - started > limit_s:
                print(f"part {part}: stopped at the time limit before index {index}", file=sys.stderr)
                return
            t0 = time.time()
            row = label(config(index))
            row["seconds"] = round(time.time() - t0, 2)
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(f"{index} {row['config']['family']} {row['label']} {row['seconds']}s", flush=True)


def merge() -> List[Dict[str, Any]]:
    rows: Dict[int, Dict[str, Any]] = {row["config"]["index"]: row for row in stored_labels()}
    for name in sorted(os.listdir(PARTS_DIR)) if os.path.isdir(PARTS_DIR) else ():  # forward and reverse
        with open(os.path.join(PARTS_DIR, name)) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows[row["config"]["index"]] = row
    labels = [rows[i] for i in sorted(rows)]
    document = {
        "torch": torch.__version__,
        "transformers": _transformers_version(),
        "procedure": {"runs": RUNS, "steps": STEPS, "tail": TAIL, "threshold": THRESHOLD},
        "labels": labels,
    }
    with open(LABELS, "w") as f:
        json.dump(document, f, indent=1)
    trains = sum(r["label"] == "trains" for r in labels)
    print(f"{len(labels)} labels ({trains} train, {len(labels) - trains} fail) -> {LABELS}; "
          f"{sum(r['seconds'] for r in labels):.0f} s of training")
    return labels


def _transformers_version() -> str:
    """The version of ``transformers`` that built the Hugging Face configurations (their
    init draws depend on it); ``"absent"`` when it is not installed."""
    try:
        import transformers
    except ImportError:
        return "absent"
    return transformers.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--parts", type=int, default=1)
    parser.add_argument("--part", type=int, default=0)
    parser.add_argument("--limit-s", type=float, default=float("inf"), help="stop a slice after this long")
    parser.add_argument("--reverse", action="store_true",
                        help="label the slice from its end (a second process helping a slow slice)")
    parser.add_argument("--merge", action="store_true")
    args = parser.parse_args()
    if args.merge:
        merge()
    else:
        label_slice(args.count, args.parts, args.part, args.limit_s, args.reverse)


if __name__ == "__main__":
    main()
