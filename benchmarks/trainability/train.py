"""Label a configuration by training it: does the model, as built, learn its task?

Six runs: SGD with momentum 0.9 at learning rates 0.1, 0.01 and 0.001, and Adam at 1e-2,
1e-3 and 1e-4, each :data:`STEPS` steps from the same initial weights with a fixed seed.
A run's loss is the mean over its last :data:`TAIL` steps (non-finite: infinite). The
configuration *trains* when some run's loss falls below :data:`THRESHOLD` of the task's
trivial baseline (the loss of ignoring the input), and *fails* otherwise.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Tuple

import torch

from configs import build
from tasks import Task, task_for

STEPS = 200
TAIL = 20
THRESHOLD = 0.5
RUNS: List[Tuple[str, float]] = [("sgd", 0.1), ("sgd", 0.01), ("sgd", 0.001), ("adam", 1e-2), ("adam", 1e-3), ("adam", 1e-4)]


def train_run(model: torch.nn.Module, task: Task, optimizer: str, lr: float, seed: int) -> float:
    """One run from ``model``'s weights (a copy is trained); the mean loss of its last steps."""
    model = copy.deepcopy(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(params, lr=lr)
    torch.manual_seed(seed)
    tail: List[float] = []
    for step in range(STEPS):
        x, y = task.batches(step)
        loss = task.loss(model(x), y)
        if not torch.isfinite(loss):
            return math.inf
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= STEPS - TAIL:
            tail.append(loss.item())
    return sum(tail) / len(tail)


def train_all(model: torch.nn.Module, task: Task, seed: int) -> List[float]:
    """The losses of the :data:`RUNS` from ``model``'s weights, on one thread: the same sums in
    the same order, so that losses reproduce (and a fixed model is trained exactly as its
    configuration was labelled)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [train_run(model, task, opt, lr, seed=seed) for opt, lr in RUNS]
    finally:
        torch.set_num_threads(threads)


def label(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``cfg`` with its losses (one per run, in :data:`RUNS` order), the task's baseline and
    its label, ``"trains"`` or ``"fails"``."""
    task = task_for(cfg)
    model = build(cfg, task)
    losses = train_all(model, task, seed=cfg["index"])
    best = min(losses)
    return {
        "config": cfg,
        "task": task.name,
        "baseline": task.baseline,
        "losses": [loss if math.isfinite(loss) else None for loss in losses],
        "best_ratio": best / task.baseline if math.isfinite(best) else None,
        "label": "trains" if best < THRESHOLD * task.baseline else "fails",
    }
