"""``InitAuditCallback`` for Lightning's ``Trainer``: the audit where the run starts.

    from initaudit.integrations.lightning import InitAuditCallback
    trainer = lightning.Trainer(max_epochs=10, callbacks=[InitAuditCallback()])
    trainer.fit(module, datamodule)   # raises InitAuditStop before the first step on findings

At ``on_train_start`` (the model on its device, the optimizers configured, no step taken) it
audits the ``LightningModule`` on the run's first training batch, moved to the device by the
module's own batch-transfer hooks, with the loss of its own ``training_step`` (called with
batch index 0, its ``self.log`` silenced meanwhile) and the trainer's first optimizer for
the first-step rules (IA701, IA702: steps taken on the state and undone). A module with
manual optimization (its ``training_step`` steps the optimizers itself) is audited on its
parameters alone. A run resumed from a checkpoint (``global_step > 0``) is not audited.

Nothing of the run changes: the batch is read from the train ``DataLoader`` with every
random generator put back, and the audit restores parameters, buffers, ``.grad``, flags,
RNG and optimizer state (tested: the first training losses with and without the callback
are bit-identical). Requires ``lightning`` (``pip install 'initaudit[lightning]'``), or the
standalone ``pytorch_lightning``.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package
    from pytorch_lightning import Callback

from initaudit.integrations.start import InitAuditStop, StartGate, audit_start, first_batch, metrics, write_report

class _TrainingStepAsForward:
    """While in use, the module's ``forward`` is its ``training_step`` on a batch (index 0),
    returning the loss, and its ``self.log`` / ``self.log_dict`` do nothing: the audit runs
    the step the trainer will run, and no metric of it reaches the run's logs. The instance
    attributes are removed afterwards, so the class's methods are the module's again."""

    SHADOWED = ("forward", "log", "log_dict")

    def __init__(self, module: Any) -> None:
        self.module = module

    def __enter__(self) -> None:
        module = self.module
        step = type(module).training_step

        def forward(batch: Any) -> Any:
            out = step(module, batch, 0)
            return out.get("loss") if isinstance(out, Mapping) else out

        self.saved = {name: module.__dict__[name] for name in self.SHADOWED if name in module.__dict__}
        object.__setattr__(module, "forward", forward)
        object.__setattr__(module, "log", lambda *args, **kwargs: None)
        object.__setattr__(module, "log_dict", lambda *args, **kwargs: None)

    def __exit__(self, *exc: Any) -> None:
        for name in self.SHADOWED:
            self.module.__dict__.pop(name, None)
        self.module.__dict__.update(self.saved)


class InitAuditCallback(StartGate, Callback):
    """Audit the ``LightningModule`` at the start of training and stop the run before its
    first step when a finding is at or above ``fail_on`` (``"error"``, ``"warning"``,
    ``"info"``, or ``"never"`` to report without stopping).

    ``select`` / ``ignore``: rule codes or prefixes. ``report_to``: where to write the JSON
    report (default: ``initaudit.json`` in the trainer's ``default_root_dir``). ``steps``:
    how many of the optimizer's first steps to take and undo (1 to 3). Other keyword
    arguments go to :func:`initaudit.audit`. After it ran, ``callback.report`` is the report.
    """

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_step > 0:
            return
        options = self.options(type(pl_module).__name__)
        if not pl_module.automatic_optimization:
            # its training_step steps the optimizers itself: running it would train
            report = audit_start(pl_module, None, None, params_only=True, **options)
            report.notes.append("manual optimization: the training_step steps the optimizers itself, so the "
                                "parameters alone were audited")
        else:
            batch = trainer.strategy.batch_to_device(first_batch(trainer.train_dataloader))
            optimizer = trainer.optimizers[0] if trainer.optimizers else None
            with _TrainingStepAsForward(pl_module), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the module's own warnings belong to its run
                report = audit_start(pl_module, (batch,), lambda loss, _x: loss, optimizer=optimizer,
                                     steps=self.steps, **options)
        self.report = report
        failed = self.failed(report)
        stop = trainer.strategy.reduce_boolean_decision(failed, all=False)  # every process stops, or none
        if trainer.is_global_zero:
            path = self.report_path(trainer.default_root_dir)
            write_report(report, path)
            for logger in trainer.loggers:
                logger.log_metrics(metrics(report), step=trainer.global_step)
            print(f"initaudit: {report.summary_line()}; report: {path}")
        if stop:
            raise InitAuditStop(report if failed else None, self.fail_on, type(pl_module).__name__)
