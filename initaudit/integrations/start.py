"""What a training-start callback does, whatever the framework.

1. Read the run's first batch (:func:`first_batch`) from its training dataloader, with every
   random generator put back afterwards, so that the run draws the same batches in the same
   order as it would have without the callback.
2. Audit the model on it with the run's own loss and optimizer (:func:`audit_start`): the
   audit changes nothing (parameters, buffers, ``.grad``, flags, RNG, optimizer state).
3. Decide (:func:`agree`): under ``torch.distributed`` every process audits its own batch,
   and all stop if any fails (one ``all_reduce``), so that no process waits forever in a
   collective the others never reach.
4. Report (:func:`write_report`, on the main process only), and stop the run by raising
   :class:`InitAuditStop`, whose message is the findings table.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from initaudit.api import audit
from initaudit.record.state import RNGState
from initaudit.report.report import Report, fails

REPORT_NAME = "initaudit.json"  # in the run's output directory
FAIL_LEVELS = ("error", "warning", "info", "never")


class StartGate:
    """The options every training-start callback takes, and its verdict.

    ``fail_on``: the least severity that stops the run (``"never"``: report and go on).
    ``select`` / ``ignore``: rule codes or prefixes. ``report_to``: where to write the JSON
    report (default: :data:`REPORT_NAME` in the run's output directory). ``steps``: how many
    of the optimizer's first steps to take and undo (1 to 3). Other keyword arguments go to
    :func:`initaudit.audit`. ``report``: the last report (``None`` before one is made)."""

    def __init__(self, fail_on: str = "warning", select: Optional[Iterable[str]] = None,
                 ignore: Optional[Iterable[str]] = None, report_to: Optional[str] = None, steps: int = 1,
                 **audit_options: Any) -> None:
        if fail_on not in FAIL_LEVELS:
            raise ValueError(f"InitAuditCallback(fail_on={fail_on!r}): expected one of {', '.join(FAIL_LEVELS)}")
        self.fail_on = fail_on
        self.select, self.ignore = select, ignore
        self.report_to = report_to
        self.steps = steps
        self.audit_options = audit_options
        self.report: Optional[Report] = None

    def options(self, target: str) -> dict:
        """:func:`initaudit.audit`'s keyword arguments for the model named ``target``."""
        return dict(select=self.select, ignore=self.ignore, target=target, **self.audit_options)

    def failed(self, report: Report) -> bool:
        """Whether ``report`` has a finding at or above ``fail_on``."""
        return self.fail_on != "never" and not report.ok(self.fail_on)

    def report_path(self, output_dir: Optional[str]) -> str:
        return self.report_to or os.path.join(output_dir or ".", REPORT_NAME)


class InitAuditStop(RuntimeError):
    """A training run stopped before its first step by initaudit; the message is the table."""

    def __init__(self, report: Optional[Report], fail_on: str, where: str) -> None:
        self.report = report
        if report is None:  # another process's audit failed
            message = f"initaudit stopped the run before its first step: another process's audit ({where}) " \
                      f"has findings at or above {fail_on!r}"
        else:
            failing = [f for f in report.findings if fails(f.severity, fail_on)]
            message = (f"initaudit stopped the run before its first step: {len(failing)} finding(s) at or above "
                       f"{fail_on!r} in {where} (set fail_on='never' to report without stopping)\n\n"
                       f"{report.table(width=110)}")
        super().__init__(message)


def first_batch(loader: Iterable[Any]) -> Any:
    """The first batch ``loader`` yields, every RNG (torch, CUDA, Python, NumPy) as it was
    before: a sampler that draws its order from the global generator draws the same order
    again when the run iterates. A wrapper that counts its iterations (accelerate's
    ``DataLoaderShard``) is read through the ``DataLoader`` it wraps (``base_dataloader``),
    so that its counters and its registration with the gradient state stay untouched."""
    base = getattr(loader, "base_dataloader", None)
    source = base if base is not None else loader
    rng = RNGState()
    try:
        iterator = iter(source)
        try:
            return next(iterator)
        finally:
            del iterator  # worker processes, if any, end here
    finally:
        rng.restore()


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor on ``device``; a mapping (a ``dict``, Hugging Face's
    ``BatchEncoding``) becomes a ``dict``, lists and tuples keep their type."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def torch_optimizer(optimizer: Any) -> Optional[torch.optim.Optimizer]:
    """The ``torch.optim.Optimizer`` under a framework's wrapper (accelerate's
    ``AcceleratedOptimizer`` holds it as ``.optimizer``; Lightning gives it as is)."""
    while optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = getattr(optimizer, "optimizer", None)
    return optimizer


def audit_start(model: nn.Module, batch: Any, loss: Optional[Callable[[Any, Any], torch.Tensor]],
                optimizer: Any = None, steps: int = 1, **options: Any) -> Report:
    """The audit of ``model`` on the run's first ``batch``, with its ``loss`` and, when given,
    its ``optimizer``'s first ``steps`` (taken and undone)."""
    return audit(model, batch, loss=loss, optimizer=torch_optimizer(optimizer), steps=steps, **options)


def agree(failed: bool, device: torch.device) -> bool:
    """Whether any process failed: ``failed`` itself outside ``torch.distributed``, else one
    ``all_reduce(MAX)`` over every process (on ``device``, where the backend communicates)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return failed
    flag = torch.tensor([1.0 if failed else 0.0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item() > 0)


def write_report(report: Report, path: str) -> str:
    """The JSON report at ``path`` (its directory made if needed); returns the path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as handle:
        handle.write(report.to_json())
    return path


def metrics(report: Report) -> dict:
    """The report's counts as logged metrics (``initaudit/errors``, ``/warnings``, ``/infos``)."""
    summary = report.summary()
    return {f"initaudit/{key}": summary[key] for key in ("errors", "warnings", "infos")}
