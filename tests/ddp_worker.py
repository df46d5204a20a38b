"""One rank of a 2-process CPU (gloo) run: the local half of a global batch through DDP-wrapped towers, one SGD
step with a stguide loss; writes the updated parameters. Run with RANK, WORLD, INIT_FILE, OUT, LOSS args."""
import os
import sys

import torch
import torch.nn.functional as F


def towers(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.ModuleDict({"img": torch.nn.Linear(6, 4), "gene": torch.nn.Linear(5, 4)})


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)


def step(model, x, z, lat, loss_name):
    from stguide.contrastive.losses import get_loss

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    m = model.module if hasattr(model, "module") else model
    u = F.normalize(m["img"](x), dim=1)
    v = F.normalize(m["gene"](z), dim=1)
    loss = get_loss(loss_name)(u, v, torch.tensor(5.0), {"gene_latent": lat})["contrastive_loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {k: p.detach().clone() for k, p in m.state_dict().items()}


def main(rank: int, world: int, init_file: str, out: str, loss_name: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = towers()
    for p in model.parameters():  # average gradients across ranks, as DDP does
        p.register_hook(lambda g: _allreduce_mean(g, world))
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


def _allreduce_mean(g, world):
    import torch.distributed as dist

    g = g.clone()
    dist.all_reduce(g)
    return g / world


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
