"""``InitAuditCallback`` for Hugging Face's ``Trainer``: the audit where the run starts.

    from initaudit.integrations.transformers import InitAuditCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[InitAuditCallback()])
    trainer.train()   # raises InitAuditStop before the first step if the init has findings

At ``on_train_begin`` (the model on the run's device, the optimizer and its scheduler made,
no step taken) it audits the trainer's model on the run's first training batch, as the
trainer's collator built it, with the model's own loss (a Hugging Face model returns
``loss`` when the batch has ``labels``) and the trainer's optimizer for the first-step rules
(IA701, IA702: its steps are taken on a copy of the state and undone). A run resumed from a
checkpoint (``global_step > 0``) is not audited: its weights are no longer the init.

Nothing of the run changes: the batch is read through the ``DataLoader`` under accelerate's
wrapper with every random generator put back, and the audit restores parameters, buffers,
``.grad``, flags, RNG and optimizer state (tested: the first training losses with and
without the callback are bit-identical). Requires ``transformers`` (``pip install
'initaudit[transformers]'``).
"""

from __future__ import annotations

from typing import Any, Optional

from transformers import TrainerCallback
from transformers.utils import logging

from initaudit.integrations.start import (InitAuditStop, StartGate, agree, audit_start, first_batch, metrics,
                                          model_device, to_device, write_report)

logger = logging.get_logger("initaudit")

def own_loss(output: Any, _batch: Any) -> Any:
    """The loss a Hugging Face model returns for a batch with ``labels`` (its ``loss`` field,
    or the first element of a tuple output, as the ``Trainer`` reads it)."""
    value = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    if value is None and isinstance(output, (tuple, list)) and output:
        value = output[0]
    return value


class InitAuditCallback(StartGate, TrainerCallback):
    """Audit the model at the start of training and stop the run before its first step when
    a finding is at or above ``fail_on`` (``"error"``, ``"warning"``, ``"info"``, or
    ``"never"`` to report without stopping).

    ``select`` / ``ignore``: rule codes or prefixes, as on the command line. ``report_to``:
    where to write the JSON report (default: ``initaudit.json`` in the run's
    ``output_dir``). ``steps``: how many of the optimizer's first steps to take and undo
    (1 to 3). Other keyword arguments go to :func:`initaudit.audit` (``options``,
    ``per_parameter_ignores``, ``tied``, ``seed``).

    After it ran, ``callback.report`` is the report (``None`` where the run was not audited).
    """

    _pending_metrics: Optional[dict] = None  # the counts, until the run's first log takes them

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        if model is None or train_dataloader is None or state.global_step > 0:
            return
        device = model_device(model)
        batch = to_device(first_batch(train_dataloader), device)
        loss = own_loss if isinstance(batch, dict) and "labels" in batch else None
        report = audit_start(model, batch, loss, optimizer=optimizer, steps=self.steps,
                             **self.options(type(model).__name__))
        self.report = report
        failed = self.failed(report)
        stop = agree(failed, device)  # every process stops, or none
        if state.is_world_process_zero:
            path = self.report_path(args.output_dir)
            write_report(report, path)
            line = f"initaudit: {report.summary_line()}; report: {path}"
            (logger.warning if failed else logger.info)(line)
            entry = {**metrics(report), "step": state.global_step}
            state.log_history.append(entry)
            self._pending_metrics = metrics(report)
        if stop:
            raise InitAuditStop(report if failed else None, self.fail_on, type(model).__name__)

    def on_log(self, args: Any, state: Any, control: Any, logs: Optional[dict] = None, **kwargs: Any) -> None:
        # the counts join the run's first logged metrics, for the callbacks after this one
        if logs is not None and self._pending_metrics:
            logs.update(self._pending_metrics)
            self._pending_metrics = None
