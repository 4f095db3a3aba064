"""The zero-hidden-layer model of ``zero_hidden.py`` (IA101), sharded with FSDP2 across the
ranks of torchrun.

    torchrun --nproc-per-node 2 -m initaudit examples/sharded_mlp.py:build

Each rank holds half of every parameter; initaudit combines the statistics of the pieces
with all_reduce, never gathering a parameter, and only rank 0 prints the report. Run
without torchrun, the factory returns the same model unsharded.
"""

import torch
import torch.distributed as dist
from torch import nn
from zero_hidden import build as build_whole  # initaudit puts this folder on the import path


def build(width: int = 256) -> nn.Module:
    model = build_whole(width)
    if dist.is_available() and dist.is_initialized():
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        device = "cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu"
        mesh = init_device_mesh(device, (dist.get_world_size(),))
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    return model
