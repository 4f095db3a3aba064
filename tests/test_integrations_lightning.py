"""The gate where training starts: InitAuditCallback in a real Lightning Trainer, offline, on CPU."""

import json

import pytest
import torch
from torch import nn

from initaudit.integrations.start import InitAuditStop

L = pytest.importorskip("lightning")
from initaudit.integrations.lightning import InitAuditCallback  # noqa: E402


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n=64):
        gen = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 16, generator=gen), torch.randint(0, 4, (n,), generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class Module(L.LightningModule):
    def __init__(self, zero_hidden=False, manual=False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, 4))
        if zero_hidden:
            nn.init.zeros_(self.net[3].weight)
            nn.init.zeros_(self.net[3].bias)
        self.automatic_optimization = not manual
        self.step_calls = 0

    def training_step(self, batch, batch_idx):
        self.step_calls += 1
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        if not self.automatic_optimization:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class Losses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def fit(module, root, callbacks=()):
    L.seed_everything(0, verbose=False)
    losses = Losses()
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(str(root)),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(root), callbacks=[losses, *callbacks])
    trainer.fit(module, torch.utils.data.DataLoader(Pairs(), batch_size=8, shuffle=True))
    return trainer, losses.losses


def test_a_healthy_run_trains_bit_for_bit_as_without_the_callback(tmp_path):
    torch.manual_seed(0)
    _, without = fit(Module(), tmp_path / "plain")
    torch.manual_seed(0)
    callback = InitAuditCallback()
    module = Module()
    trainer, with_it = fit(module, tmp_path / "gated", [callback])
    assert len(without) == 3 and with_it == without  # shuffled order, dropout masks and Adam's steps alike
    assert module.step_calls > 3  # its training_step gave the audit its loss (and the steps theirs)
    report = callback.report
    assert report.ok("warning") and report.recording.step_optimizer == "Adam"
    assert report.recording.classes == 4 and "net.3.weight" in {t.name for t in report.parameters}
    assert json.loads((tmp_path / "gated" / "initaudit.json").read_text())["summary"]["errors"] == 0
    # the counts reached the run's logger; the audit's own training_step logged nothing
    logged = (tmp_path / "gated" / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "initaudit/warnings" in logged.splitlines()[0]


def test_a_zero_hidden_projection_stops_the_run_before_its_first_step(tmp_path):
    torch.manual_seed(0)
    module = Module(zero_hidden=True)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(InitAuditStop) as stopped:
        fit(module, tmp_path, [InitAuditCallback()])
    assert "before its first step" in str(stopped.value) and "IA101" in str(stopped.value)
    assert module.trainer.global_step == 0
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    # the module is itself again: its forward and log are the class's
    assert "forward" not in module.__dict__ and "log" not in module.__dict__
    torch.manual_seed(0)
    callback = InitAuditCallback(fail_on="never")
    trainer, losses = fit(Module(zero_hidden=True), tmp_path / "on", [callback])
    assert trainer.global_step == 3 and not callback.report.ok("warning")


def test_manual_optimization_is_audited_on_its_parameters_without_running_its_step(tmp_path):
    torch.manual_seed(0)
    callback = InitAuditCallback()
    module = Module(manual=True)
    trainer, _ = fit(module, tmp_path, [callback])
    assert module.step_calls == 3 and trainer.global_step == 3  # the audit did not call it
    assert any("manual optimization" in note for note in callback.report.notes)
