"""What "trains" can tell: linear models and harder targets, trained exactly as the labels are.

    python benchmarks/trainability/reference.py [--jobs N]

A configuration *trains* when its best run gets below half the trivial loss
(:data:`train.THRESHOLD`). This script measures how much that line asks of a model, with
:func:`train.train_all` (the labels' six runs, the same seed, one thread):

- **linear references**: a linear map of the input on each task, and, on the images task, a
  linear map of the per-channel means (average pooling, then one linear layer): a model with
  no hidden layer at all;
- **the same stacks on harder targets**: plain ReLU/GELU MLPs and CNNs at PyTorch's default
  init, the kind the benchmark's defaults range holds, on their own task and on a target of the
  same inputs that no linear read-out of them gives: for the MLPs the class of the regression
  teacher's largest output (8 classes, cross-entropy), for the CNNs the six standardized
  channel statistics themselves (offset and scale, squared error).

It prints one line per model: the best loss over the trivial one (below 0.5 is "trains").
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import tasks  # noqa: E402
from configs import ACTIVATIONS  # noqa: E402
from train import THRESHOLD, train_all  # noqa: E402


def teacher_classes() -> tasks.Task:
    """The regression task's inputs; the label is the teacher's largest output (of 8); baseline:
    the entropy of the class frequencies (predicting the prior)."""
    reg = tasks.regression()
    y = reg.targets.argmax(dim=1)
    p = torch.bincount(y, minlength=8).double() / len(y)
    prior = float(-(p[p > 0] * p[p > 0].log()).sum())
    return tasks.Task("teacher classes", reg.inputs, y, tasks._cross_entropy, prior, classes=8)


def channel_statistics() -> tasks.Task:
    """The images task's inputs; the target is the six numbers its class is computed from (each
    channel's offset and scale), standardized; baseline: predicting their mean, MSE 1."""
    img = tasks.images()
    gen = torch.Generator().manual_seed(2)  # the images task's own draws, in its order
    offset = torch.randn(tasks.EXAMPLES, 3, 1, 1, generator=gen)
    scale = 0.5 + torch.rand(tasks.EXAMPLES, 3, 1, 1, generator=gen)
    y = torch.cat([offset.flatten(1), scale.flatten(1)], dim=1)
    y = (y - y.mean(0)) / y.std(0)
    return tasks.Task("channel statistics", img.inputs, y, tasks._mse, 1.0)


def flattened(task: tasks.Task) -> tasks.Task:
    return tasks.Task(task.name + " (flattened)", task.inputs.flatten(1), task.targets, task.loss, task.baseline,
                      classes=task.classes)


def mlp(d_in: int, d_out: int, depth: int, activation: str) -> nn.Module:
    """``depth`` linear layers of width 128 at PyTorch's default init."""
    layers: List[nn.Module] = []
    for i in range(depth - 1):
        layers += [nn.Linear(d_in if i == 0 else 128, 128), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers, nn.Linear(128 if depth > 1 else d_in, d_out))


def cnn(d_out: int, depth: int, activation: str) -> nn.Module:
    """``depth`` 3x3 convolutions of 16 channels at PyTorch's default init, pooled, one linear head."""
    layers: List[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(3 if i == 0 else 16, 16, 3, padding=1), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, d_out))


def cases() -> List[Tuple[str, str, int, str]]:
    """``(model kind, task, depth, activation)``; depth 0 is a linear reference."""
    linear = [("linear", "regression", 0, ""), ("linear", "images (flattened)", 0, ""),
              ("pooled linear", "images", 0, ""), ("linear", "teacher classes", 0, ""),
              ("pooled linear", "channel statistics", 0, "")]
    stacks = [(kind, task, depth, act)
              for kind, tasks_of_kind in (("mlp", ("regression", "teacher classes")), ("cnn", ("images", "channel statistics")))
              for task in tasks_of_kind for depth in (8, 12) for act in ("relu", "gelu")]
    return linear + stacks


def run(case: Tuple[str, str, int, str]) -> str:
    kind, task_name, depth, act = case
    torch.set_num_threads(1)
    task = {"regression": tasks.regression, "images": tasks.images, "teacher classes": teacher_classes,
            "channel statistics": channel_statistics,
            "images (flattened)": lambda: flattened(tasks.images())}[task_name]()
    d_in = task.inputs[0].numel() if task.inputs.dim() == 2 else task.inputs.shape[1]
    d_out = task.classes or task.targets.shape[1]
    torch.manual_seed(0)
    if kind == "linear":
        model: nn.Module = nn.Linear(d_in, d_out)
    elif kind == "pooled linear":
        model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(d_in, d_out))
    elif kind == "mlp":
        model = mlp(d_in, d_out, depth, act)
    else:
        model = cnn(d_out, depth, act)
    best = min(train_all(model, task, seed=0)) / task.baseline
    what = kind if not depth else f"{depth}-layer {act} {kind.upper()}, PyTorch's default init"
    verdict = "trains" if math.isfinite(best) and best < THRESHOLD else "fails"
    return f"{what:<45} {task_name:<22} {best:6.2f}  {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1, help="processes (one thread each)")
    args = parser.parse_args()
    print(f"{'model':<45} {'task':<22} {'best / trivial loss'}")
    with ProcessPoolExecutor(max_workers=max(args.jobs, 1), mp_context=get_context("spawn")) as pool:
        for line in pool.map(run, cases()):
            print(line, flush=True)


if __name__ == "__main__":
    main()
