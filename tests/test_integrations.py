"""The gate where training starts: InitAuditCallback in a real Hugging Face Trainer (and the
framework-free pieces under it), offline, on CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from torch import nn

from initaudit.integrations.start import InitAuditStop, agree, first_batch

transformers = pytest.importorskip("transformers")
from initaudit.integrations.transformers import InitAuditCallback  # noqa: E402

transformers.logging.set_verbosity_error()


class Tokens(torch.utils.data.Dataset):
    """64 random sequences of 12 tokens with one of 3 labels, as a tokenizer would give them."""

    def __init__(self, n=64):
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (n, 12), generator=gen)
        self.labels = torch.randint(0, 3, (n,), generator=gen)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.labels[i]}


class Features(torch.utils.data.Dataset):
    def __init__(self, n=64):
        gen = torch.Generator().manual_seed(0)
        self.x, self.labels = torch.randn(n, 16, generator=gen), torch.randint(0, 4, (n,), generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.labels[i]}


class Classifier(nn.Module):
    """A plain torch model as the Trainer takes it: a dict with the loss for a batch with labels."""

    def __init__(self, zero_hidden=False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
        if zero_hidden:  # weight and bias: the layers below it never get a gradient
            nn.init.zeros_(self.net[2].weight)
            nn.init.zeros_(self.net[2].bias)

    def forward(self, x, labels=None):
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def bert():
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, num_labels=3, max_position_embeddings=32)
    return transformers.BertForSequenceClassification(config)  # dropout 0.1: the run draws from the RNG


def train(model, dataset, output_dir, callbacks=(), **args):
    arguments = transformers.TrainingArguments(
        output_dir=str(output_dir), max_steps=3, per_device_train_batch_size=8, logging_steps=1, report_to="none",
        use_cpu=True, seed=0, save_strategy="no", disable_tqdm=True, learning_rate=1e-3, **args)
    trainer = transformers.Trainer(model=model, args=arguments, train_dataset=dataset, callbacks=list(callbacks))
    trainer.train()
    return trainer, [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_healthy_run_trains_bit_for_bit_as_without_the_callback(tmp_path, accumulation):
    torch.manual_seed(0)
    _, without = train(bert(), Tokens(), tmp_path / "plain", gradient_accumulation_steps=accumulation)
    torch.manual_seed(0)
    callback = InitAuditCallback()
    trainer, with_it = train(bert(), Tokens(), tmp_path / "gated", [callback], gradient_accumulation_steps=accumulation)
    assert len(without) == 3 and with_it == without  # shuffled order, dropout masks and updates alike
    report = callback.report
    assert report is not None and report.ok("warning")
    # the trainer's own optimizer took the audit's first step (and was put back)
    assert report.recording.step_optimizer and report.recording.step_own_loss
    assert report.recording.classes == 3 and report.recording.labelled_loss.rows == 8
    doc = json.loads((tmp_path / "gated" / "initaudit.json").read_text())
    import jsonschema

    jsonschema.validate(doc, json.loads((ROOT / "initaudit" / "schema.json").read_text()))
    assert trainer.state.log_history[0]["initaudit/warnings"] == 0


def test_a_zero_hidden_projection_stops_the_run_before_its_first_step(tmp_path):
    torch.manual_seed(0)
    model = Classifier(zero_hidden=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InitAuditStop) as stopped:
        train(model, Features(), tmp_path, [InitAuditCallback()])
    message = str(stopped.value)
    assert "before its first step" in message and "net.2.weight" in message and "IA101" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # not one step taken
    assert (tmp_path / "initaudit.json").exists()
    # fail_on="never": reported, and the run goes on
    torch.manual_seed(0)
    callback = InitAuditCallback(fail_on="never", report_to=str(tmp_path / "elsewhere" / "report.json"))
    trainer, losses = train(Classifier(zero_hidden=True), Features(), tmp_path / "on", [callback])
    assert trainer.state.global_step == 3 and len(losses) == 3
    assert not callback.report.ok("warning") and (tmp_path / "elsewhere" / "report.json").exists()


def test_a_peft_model_wrapped_by_the_trainer_trains_with_the_callback(tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    base = transformers.GPT2LMHeadModel(config)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))

    class Causal(Tokens):
        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i]}  # the model shifts them

    callback = InitAuditCallback()
    trainer, losses = train(model, Causal(), tmp_path, [callback])
    assert trainer.state.global_step == 3 and len(losses) == 3
    # LoRA's zero B and the frozen base are the recipe, not findings; the labels are not a leak
    assert callback.report.ok("warning"), callback.report.table()
    assert callback.report.recording.labelled_loss.rows == 8 * 11


def test_the_first_batch_is_read_without_moving_any_generator():
    loader = torch.utils.data.DataLoader(Features(), batch_size=8, shuffle=True)
    state = torch.get_rng_state()
    batch = first_batch(loader)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(next(iter(loader))["x"], batch["x"])  # the order the run draws next is the same


def test_every_process_stops_when_one_fails(tmp_path):
    # two gloo processes: only rank 1's audit failed; both must agree to stop
    code = (
        "import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp\n"
        "sys.path.insert(0, %r)\n"
        "from initaudit.integrations.start import agree\n"
        "def work(rank, port):\n"
        "    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))\n"
        "    dist.init_process_group('gloo', rank=rank, world_size=2)\n"
        "    assert agree(rank == 1, torch.device('cpu')) is True\n"
        "    assert agree(False, torch.device('cpu')) is False\n"
        "    dist.destroy_process_group()\n"
        "if __name__ == '__main__':\n"
        "    import socket\n"
        "    s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()\n"
        "    mp.spawn(work, args=(port,), nprocs=2, join=True)\n"
    ) % str(ROOT)
    script = tmp_path / "agree.py"  # spawned workers import their function from a file
    script.write_text(code)
    subprocess.run([sys.executable, str(script)], check=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert agree(True, torch.device("cpu")) is True  # outside torch.distributed: its own verdict


def test_importing_initaudit_imports_no_framework():
    code = ("import sys, initaudit, initaudit.integrations, initaudit.integrations.start; "
            "assert not {'transformers', 'lightning', 'pytorch_lightning'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_a_bad_fail_level_is_a_clear_error():
    with pytest.raises(ValueError, match="fail_on"):
        InitAuditCallback(fail_on="warnings")


def test_the_counts_reach_the_loggers_after_the_callback(tmp_path):
    # report_to integrations sit before the user's callbacks in the Trainer's list: put the
    # callback first and they see the counts in the run's first logged metrics
    class Integration(transformers.TrainerCallback):
        first = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if Integration.first is None:
                Integration.first = dict(logs)

    torch.manual_seed(0)
    arguments = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, logging_steps=1, report_to="none",
        use_cpu=True, seed=0, save_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(model=Classifier(), args=arguments, train_dataset=Features(),
                                   callbacks=[Integration()])
    trainer.callback_handler.callbacks.insert(0, InitAuditCallback())
    trainer.train()
    assert Integration.first["initaudit/errors"] == 0 and "loss" in Integration.first


DISTRIBUTED_RUN = '''
import os, sys, torch
sys.path.insert(0, {tests!r})
import transformers
transformers.logging.set_verbosity_warning()
from test_integrations import Classifier, Features
from initaudit.integrations.transformers import InitAuditCallback
from initaudit.integrations.start import InitAuditStop
torch.manual_seed(0)
args = transformers.TrainingArguments(output_dir=sys.argv[1], max_steps=2, per_device_train_batch_size=8,
                                      logging_steps=1, report_to="none", use_cpu=True, seed=0,
                                      save_strategy="no", disable_tqdm=True)
trainer = transformers.Trainer(model=Classifier(zero_hidden=sys.argv[2] == "zero"), args=args,
                               train_dataset=Features(), callbacks=[InitAuditCallback()])
try:
    trainer.train()
    print("trained", trainer.state.global_step, args.world_size)
except InitAuditStop:
    print("stopped", trainer.state.global_step, args.world_size)
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
# gloo's threads can abort the interpreter's teardown ("terminate called without an active
# exception") after everything above has run: leave without it, as the launched script is done
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
'''


def test_under_a_distributed_launch_every_process_stops_and_one_reports(tmp_path):
    # two processes started as torchrun / accelerate launch start them: DDP over gloo on CPU
    import socket

    script = tmp_path / "run.py"
    script.write_text(DISTRIBUTED_RUN.format(tests=str(ROOT / "tests")))
    for mode, verdict in (("zero", "stopped 0 2"), ("healthy", "trained 2 2")):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / mode), mode], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                           LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                                           OMP_NUM_THREADS="1"))
                 for r in range(2)]
        outputs = [p.communicate(timeout=240) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        assert [out.strip().splitlines()[-1] for out, _ in outputs] == [verdict, verdict], outputs
        # only the main process prints the summary and writes the report
        assert "initaudit" in outputs[0][0] + outputs[0][1] and "initaudit" not in outputs[1][0] + outputs[1][1]
        assert (tmp_path / mode / "initaudit.json").exists()
