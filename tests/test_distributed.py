"""Sharded models under torch.distributed: two gloo processes on CPU, statistics combined.

Each rank audits the same model twice: whole (before sharding) and sharded with FSDP2's
``fully_shard``, whose parameters are DTensors of which each rank holds half. The sharded
statistics must equal the whole ones, and both ranks must report the same findings.
"""

import json
import math
import os
import socket
from typing import List, Tuple

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from initaudit import audit

fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard") or not dist.is_available():
    pytest.skip("this torch has no FSDP2 (fully_shard)", allow_module_level=True)


def build() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(),
        nn.Linear(32, 32), nn.ReLU(),
        nn.LayerNorm(32),  # unit gain: the exact pass (its variance cancels); zero bias: counted
        nn.Linear(32, 32), nn.ReLU(),
        nn.Linear(32, 5),  # 5 rows do not split evenly over 2 ranks
    )
    with torch.no_grad():
        model[2].weight.zero_()  # a zero hidden weight: IA101
        model[5].weight.mul_(40.0)  # an exploding layer
    return model


def summary(report) -> dict:
    tensors = {}
    for t in report.recording.tensors:
        tensors[t.name] = {
            "mean": t.mean, "std": t.std, "min": t.min, "max": t.max, "zero_fraction": t.zero_fraction,
            "nonfinite": t.nonfinite, "kurtosis": t.kurtosis,
            "grad_norm": t.grad.norm if t.grad else None, "grad_std": t.grad.std if t.grad else None,
            "notes": t.notes,
        }
    return {"tensors": tensors, "findings": sorted((f.code, f.location, f.message) for f in report.findings)}


def steps(report) -> dict:
    """What --optimizer recorded: the losses around the step and each parameter's relative update."""
    return {"losses": report.recording.step_losses,
            "updates": {t.name: t.update_ratio for t in report.recording.parameters},
            "findings": sorted((f.code, f.severity) for f in report.findings if f.code.startswith("IA7"))}


def cross_entropy(out, _x):
    return nn.functional.cross_entropy(out, torch.arange(out.shape[0]) % out.shape[1])


def mlp(depth: int) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(16, 32), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Linear(32, 32), nn.ReLU(), nn.LayerNorm(32)]
    return nn.Sequential(*layers, nn.Linear(32, 4))


def shard(model: nn.Module, mesh) -> nn.Module:
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.LayerNorm)):
            fsdp.fully_shard(layer, mesh=mesh)
    fsdp.fully_shard(model, mesh=mesh)
    return model


def count_all_reduces(model: nn.Module, x: torch.Tensor) -> int:
    """``all_reduce`` calls the audit itself makes (FSDP's own collectives are not counted)."""
    calls = {"n": 0}
    original = dist.all_reduce

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    dist.all_reduce = counting
    try:
        audit(model, x)
    finally:
        dist.all_reduce = original
    return calls["n"]


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        model = build()
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
        whole = summary(audit(model, x))
        whole_params = summary(audit(model, params_only=True))
        whole_steps = steps(audit(model, x, loss=cross_entropy, optimizer="Adam(lr=1e-2)"))
        mesh = init_device_mesh("cpu", (world,))
        for layer in model:
            if isinstance(layer, nn.Linear):
                fsdp.fully_shard(layer, mesh=mesh)
        fsdp.fully_shard(model, mesh=mesh)
        assert type(model[0].weight).__name__ == "DTensor"
        before = {n: p.to_local().clone() for n, p in model.named_parameters()}
        sharded = summary(audit(model, x))
        sharded_params = summary(audit(model, params_only=True))
        # --optimizer on the pieces: each rank steps its own, the norms are added across ranks
        sharded_steps = steps(audit(model, x, loss=cross_entropy, optimizer="Adam(lr=1e-2)"))
        assert all(type(p).__name__ == "DTensor" for p in model.parameters())  # resharded, as it was
        assert all(torch.equal(p.to_local(), before[n]) for n, p in model.named_parameters())  # stepped, undone
        # nothing is lost: the pieces are untouched, and the .grad the audit went through is put back
        assert all(torch.equal(p.to_local(), before[n]) for n, p in model.named_parameters())
        assert all(p.grad is None for p in model.parameters())
        collectives = [count_all_reduces(shard(mlp(depth), mesh), x) for depth in (2, 20)]
        with open(os.path.join(out_dir, f"{rank}.json"), "w") as handle:
            json.dump({"whole": whole, "sharded": sharded, "whole_params": whole_params,
                       "sharded_params": sharded_params, "collectives": collectives,
                       "whole_steps": whole_steps, "sharded_steps": sharded_steps}, handle)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_like_torchrun(args: List[str], ranks: int = 2) -> Tuple[List[int], List[Tuple[str, str]]]:
    """``python -m initaudit ARGS`` on ``ranks`` processes with the environment that
    ``torchrun --nproc-per-node RANKS -m initaudit`` gives them: their exit codes and
    ``(stdout, stderr)``."""
    import subprocess
    import sys

    port = free_port()
    procs = []
    for rank in range(ranks):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(ranks),
                   LOCAL_WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-m", "initaudit", *args],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [p.communicate(timeout=240) for p in procs]
    return [p.returncode for p in procs], outputs


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return [json.loads((out / f"{r}.json").read_text()) for r in range(2)]


def close(a, b, scale):
    """Equal to 1e-6 relative; values near zero (a mean) are measured against the spread."""
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b), scale)


@pytest.mark.parametrize("which", ["", "_params"])
def test_sharded_statistics_equal_the_whole_ones(ranks, which):
    for result in ranks:
        whole, sharded = result["whole" + which]["tensors"], result["sharded" + which]["tensors"]
        assert whole.keys() == sharded.keys()
        for name, w in whole.items():
            s = sharded[name]
            scale = w["std"] or 0.0
            for key in ("mean", "std", "min", "max", "zero_fraction", "nonfinite"):
                assert close(w[key], s[key], scale), (name, key, w[key], s[key])
            for key in ("grad_norm", "grad_std"):
                assert close(w[key], s[key], w[key] or 0.0), (name, key, w[key], s[key])
            if w["kurtosis"] is not None:  # small tensors: every element is in the sample
                assert close(w["kurtosis"], s["kurtosis"], 0.0), (name, w["kurtosis"], s["kurtosis"])


def test_the_parameters_really_were_sharded(ranks):
    notes = ranks[0]["sharded"]["tensors"]["0.weight"]["notes"]
    assert any("sharded over 2 ranks" in n for n in notes), notes
    assert not any("sharded" in n for n in ranks[0]["whole"]["tensors"]["0.weight"]["notes"])


def test_collectives_do_not_grow_with_the_number_of_parameters(ranks):
    # 8 sharded parameters or 62: the same few all_reduce calls (one SUM and one MIN per
    # bucket, for the first pass and for the exact pass of the norm gains)
    for result in ranks:
        small, large = result["collectives"]
        assert 2 <= small == large <= 4, (small, large)


def test_findings_are_the_same_sharded_or_whole_and_on_every_rank(ranks):
    whole = ranks[0]["whole"]["findings"]
    assert any(f[0] == "IA101" and f[1] == "2.weight" for f in whole), whole
    for result in ranks:
        assert result["sharded"]["findings"] == whole
        assert result["sharded_params"]["findings"] == result["whole_params"]["findings"]


def test_cli_under_torchrun_environment_reports_once_and_every_rank_exits_alike():
    """Two ranks started the way ``torchrun --nproc-per-node 2 -m initaudit`` starts them."""
    import subprocess
    import sys

    example = os.path.join(os.path.dirname(__file__), "..", "examples", "sharded_mlp.py")
    codes, outputs = run_like_torchrun([f"{example}:build", "--format", "json"])
    single = subprocess.run([sys.executable, "-m", "initaudit", f"{example}:build", "--format", "json"],
                            capture_output=True, text=True, timeout=240)
    assert codes == [1, 1], [o[1] for o in outputs]
    assert outputs[1][0] == ""  # rank 1 prints nothing
    sharded = json.loads(outputs[0][0])
    whole = json.loads(single.stdout)
    assert any("sharded over 2 ranks" in n for t in sharded["parameters"] for n in t.get("notes", []))
    found = sorted((f["code"], f["location"]) for f in sharded["findings"])
    assert found == sorted((f["code"], f["location"]) for f in whole["findings"])
    assert ("IA101", "2.weight") in found


def test_cli_under_torchrun_a_rank_that_cannot_audit_fails_every_rank(tmp_path):
    """Rank 1's factory raises; the model is not sharded, so rank 0 audits alone without
    waiting on it. Rank 0's report must not make the run pass: both ranks exit 2."""
    target = tmp_path / "rank_model.py"
    target.write_text(
        "import os\n"
        "from torch import nn\n"
        "def build():\n"
        "    if os.environ['RANK'] == '1':\n"
        "        raise RuntimeError('rank 1 has no weights')\n"
        "    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))\n"
    )
    codes, outputs = run_like_torchrun([f"{target}:build", "--fail-on", "error"])
    assert codes == [2, 2], outputs
    assert "rank 1 has no weights" in outputs[1][1]
    assert "rank 1 could not audit" in outputs[0][1]
    assert "Traceback" not in outputs[0][1] + outputs[1][1]


def test_an_audit_imports_dtensor_only_for_a_model_that_uses_it():
    # importing torch.distributed.tensor costs most of a second: a model that holds no
    # DTensor (which its maker would have had to import) must not pay it
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from torch import nn\n"
            "from initaudit import audit\n"
            "audit(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(8, 4))\n"
            "assert 'torch.distributed.tensor' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr


def test_the_first_optimizer_steps_on_a_sharded_model_equal_the_whole_ones(ranks):
    for result in ranks:
        whole, sharded = result["whole_steps"], result["sharded_steps"]
        assert len(whole["losses"]) == 2 and whole["losses"][1] < whole["losses"][0]
        for a, b in zip(whole["losses"], sharded["losses"]):
            assert close(a, b, 1.0)
        assert whole["updates"].keys() == sharded["updates"].keys()
        for name, ratio in whole["updates"].items():
            other = sharded["updates"][name]
            assert (ratio == other) if not math.isfinite(ratio) else close(ratio, other, 1e-3), name
        assert whole["findings"] == sharded["findings"]
