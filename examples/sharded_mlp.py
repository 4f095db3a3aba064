"""A model sharded with FSDP2 across the ranks of torchrun, with a zero hidden layer (IA101).

    torchrun --nproc-per-node 2 -m initaudit examples/sharded_mlp.py:build

Each rank holds half of every parameter; initaudit combines the statistics of the pieces
with all_reduce, never gathering a parameter, and only rank 0 prints the report. Run
without torchrun, the factory returns the same model unsharded.
"""

import torch
import torch.distributed as dist
from torch import nn


def build(width: int = 256) -> nn.Module:
    model = nn.Sequential(
        nn.Linear(64, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, 10),
    )
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    nn.init.zeros_(model[2].weight)  # the bug: meant to zero the bias
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
