"""One rank of a 2-process CPU (gloo) DistributedDataParallel run: the rank's half of a global batch through
DDP-wrapped towers, one SGD step with a stguide loss; rank 0 writes the updated parameters.

Usage: python ddp_worker.py RANK WORLD INIT_FILE OUT LOSS
"""
import os
import sys

import torch
import torch.nn.functional as F


class Towers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.img = torch.nn.Linear(6, 4)
        self.gene = torch.nn.Linear(5, 4)

    def forward(self, x, z):
        return F.normalize(self.img(x), dim=1), F.normalize(self.gene(z), dim=1)


def towers(seed: int = 0) -> Towers:
    torch.manual_seed(seed)
    return Towers()


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)


def step(model, x, z, lat, loss_name):
    """One SGD step; returns the parameters after it."""
    from stguide.contrastive.losses import get_loss

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    u, v = model(x, z)
    loss = get_loss(loss_name)(u, v, torch.tensor(5.0), {"gene_latent": lat})["contrastive_loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    m = model.module if hasattr(model, "module") else model
    return {k: p.detach().clone() for k, p in m.state_dict().items()}


def main(rank: int, world: int, init_file: str, out: str, loss_name: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = DistributedDataParallel(towers())
    x, z, lat = batch()
    n = len(x) // world
    sl = slice(rank * n, (rank + 1) * n)
    params = step(model, x[sl], z[sl], lat[sl], loss_name)
    if rank == 0:
        torch.save(params, out + ".tmp")
        os.replace(out + ".tmp", out)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown, where gloo threads can abort the process


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
